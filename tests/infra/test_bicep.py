"""The Bicep templates in infra/: they parse, checkov finds nothing, and they agree with the code.

No Bicep CLI here (it downloads a binary), so pycep-parser (checkov's own parser) is the syntax gate and the
structural tests read its output. checkov runs when it is installed (see infra/README.md: its pins conflict with
pytest's, so it lives in its own virtualenv); otherwise those tests are skipped with the reason.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser
from pydantic import SecretStr

from infra.render_broker_conf import GENERATED_CONF, GENERATED_DYNSEC, render_dynsec_bootstrap, render_vm_conf
from shared.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"
BICEP_FILES = [MAIN, *sorted(MODULES.glob("*.bicep"))]

# Settings the platform reads, not shared/core/settings.py: the host's identity-based storage, telemetry.
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# Settings the app reads only off Azure, which Bicep must not set. Keep this small: each one is a way to run
# without the managed identity.
LOCAL_ONLY_SETTINGS = {
    # Azurite's connection string (an account key). In Azure the archive account refuses shared keys and the
    # app reaches it by STORAGE_ACCOUNT_URL with its identity; set, this would win over that.
    "STORAGE_CONNECTION_STRING",
}
# Secrets stored only when given (keyVault.bicep never stores an empty one): app setting -> main.bicep parameter.
OPTIONAL_SECRETS = {"AUTH_EXTERNAL_SECRET": "authExternalSecret"}
INTERNET_SOURCES = {"*", "internet", "any", "0.0.0.0", "0.0.0.0/0", "::/0"}
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)  # type: ignore[no-any-return]


def module(name: str) -> dict[str, Any]:
    return parse(MODULES / f"{name}.bicep")


def resource_config(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's body; a conditional resource (`= if (...) {...}`) nests it one level down."""
    config: dict[str, Any] = resource["config"]
    return config["config"] if "condition" in config else config


def resources_of_type(resource_type: str) -> list[tuple[Path, str, dict[str, Any]]]:
    found = []
    for path in BICEP_FILES:
        for name, resource in parse(path).get("resources", {}).items():  # main.bicep has modules only
            if resource["type"].lower() == resource_type.lower():
                found.append((path, name, resource))
    return found


def param_description(param: dict[str, Any]) -> str:
    return next((d["argument"] for d in param["decorators"] if d["type"] == "description"), "")


def is_secure(param: dict[str, Any]) -> bool:
    return any(d["type"] == "secure" for d in param["decorators"])


# -- syntax ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses(path: Path) -> None:
    # GIVEN a template WHEN pycep parses it THEN it is valid Bicep syntax (checkov skips what pycep cannot parse
    # and still exits 0, so this is the syntax gate).
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path} declares nothing"


def test_main_composes_every_local_module() -> None:
    # main.bicep's modules, and the one module brokerVm.bicep nests (the VM, deployed only while it does not exist)
    used = {m["detail"]["path"] for m in parse(MAIN)["modules"].values()}
    used |= {f"modules/{m['detail']['path']}" for m in module("brokerVm").get("modules", {}).values()}
    on_disk = {f"modules/{p.name}" for p in MODULES.glob("*.bicep")}
    assert used == on_disk
    every = [*parse(MAIN)["modules"].values(), *module("brokerVm")["modules"].values()]
    assert all(m["type"] == "local" for m in every), "registry modules hide resources"


# -- parameters ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_parameters_are_described_and_secrets_are_secure(path: Path) -> None:
    for name, param in parse(path)["parameters"].items():
        assert re.match(r"^(Required|Optional)\. ", param_description(param)), f"{path.name}: {name}"
        # A Required parameter has no default; an Optional one has one.
        required = param_description(param).startswith("Required.")
        assert (param["default"] is None) == required, f"{path.name}: {name} default vs description"
        if re.search(r"(Password|Url|Secret)$", name, re.IGNORECASE):
            assert is_secure(param), f"{path.name}: {name} must be @secure()"


def test_parameters_file_names_only_parameters_of_main() -> None:
    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    main_params = parse(MAIN)["parameters"]
    assert set(values) <= set(main_params)
    assert not {name for name in values if is_secure(main_params[name])}, "secrets do not belong in a committed file"


# -- network ---------------------------------------------------------------------------------------------------------


def nsg_rules() -> list[tuple[str, dict[str, Any], str | None]]:
    """Every NSG rule in the templates: (name, properties, condition of the resource or None)."""
    rules = []
    for _, _name, resource in resources_of_type("Microsoft.Network/networkSecurityGroups"):
        for rule in resource_config(resource)["properties"].get("securityRules", []):
            rules.append((rule["name"], rule["properties"], resource["config"].get("condition")))
    for _, _name, resource in resources_of_type("Microsoft.Network/networkSecurityGroups/securityRules"):
        config = resource_config(resource)
        rules.append((config["name"], config["properties"], resource["config"].get("condition")))
    return rules


def opens_port(properties: dict[str, Any], port: int) -> bool:
    ranges = [properties.get("destinationPortRange"), *properties.get("destinationPortRanges", [])]
    for value in filter(None, ranges):
        text = str(value)
        if text in ("*", str(port)):
            return True
        if (m := re.fullmatch(r"(\d+)-(\d+)", text)) and int(m[1]) <= port <= int(m[2]):
            return True
    return False


def sources(properties: dict[str, Any]) -> list[str]:
    return [str(s) for s in [properties.get("sourceAddressPrefix"), *properties.get("sourceAddressPrefixes", [])] if s]


def allows_inbound(properties: dict[str, Any]) -> bool:
    return (properties["access"].lower(), properties["direction"].lower()) == ("allow", "inbound")


def test_nsg_rules_are_declared_where_scanners_see_them() -> None:
    # A rules list built in a variable or with concat() would hide every rule from checkov and from this file.
    for _, _, resource in resources_of_type("Microsoft.Network/networkSecurityGroups"):
        assert isinstance(resource_config(resource)["properties"]["securityRules"], list)
    assert len(nsg_rules()) >= 2


def test_no_nsg_rule_opens_ssh_or_plain_mqtt_to_the_internet() -> None:
    for name, properties, _ in nsg_rules():
        if not allows_inbound(properties):
            continue
        for port in (22, 1883):
            if opens_port(properties, port):
                assert not {s.lower() for s in sources(properties)} & INTERNET_SOURCES, f"{name} opens {port}"


def test_nothing_opens_1883_at_all() -> None:
    assert [name for name, props, _ in nsg_rules() if allows_inbound(props) and opens_port(props, 1883)] == []


def test_ssh_only_from_the_admin_cidr_parameter() -> None:
    ssh = [(name, props) for name, props, _ in nsg_rules() if allows_inbound(props) and opens_port(props, 22)]
    assert len(ssh) == 1
    assert sources(ssh[0][1]) == ["adminSourceCidr"]
    assert "/32" in param_description(parse(MAIN)["parameters"]["adminSourceCidr"])


def test_mqtts_open_and_websockets_only_behind_the_parameter() -> None:
    open_ports = {
        (next(p for p in (8883, 8884) if opens_port(props, p)), condition)
        for _, props, condition in nsg_rules()
        if allows_inbound(props) and any(opens_port(props, p) for p in (8883, 8884))
    }
    assert open_ports == {(8883, None), (8884, "enableWebsockets")}
    assert parse(MAIN)["parameters"]["enableWebsockets"]["default"] is False


# -- broker VM -------------------------------------------------------------------------------------------------------


def test_vm_size_defaults_to_b1s_and_main_passes_it_on() -> None:
    assert parse(MAIN)["parameters"]["vmSize"]["default"] == "Standard_B1s"
    assert module("brokerVm")["parameters"]["vmSize"]["default"] == "Standard_B1s"
    assert parse(MAIN)["modules"]["brokerVm"]["config"]["params"]["vmSize"] == "vmSize"
    assert module("brokerVm")["modules"]["virtualMachine"]["config"]["config"]["params"]["vmSize"] == "vmSize"
    vm = resource_config(module("brokerVmInstance")["resources"]["virtualMachine"])
    assert vm["properties"]["hardwareProfile"]["vmSize"] == "vmSize"


def test_vm_is_ubuntu_2404_with_ssh_keys_only() -> None:
    vm = resource_config(module("brokerVmInstance")["resources"]["virtualMachine"])["properties"]
    assert vm["storageProfile"]["imageReference"]["offer"] == "ubuntu-24_04-lts"
    linux = vm["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert "adminPassword" not in vm["osProfile"]
    assert vm["osProfile"]["customData"] == "customData"
    passed = module("brokerVm")["modules"]["virtualMachine"]["config"]["config"]["params"]
    assert passed["customData"] == {"function": {"type": "base64", "parameters": {"input_string": "cloudInit"}}}


def cloud_init_as_deployed() -> str:
    """cloud-init.yaml with the mosquitto.conf placeholder filled the way modules/brokerVm.bicep fills it."""
    variables = module("brokerVm")["variables"]
    assert variables["cloudInitTemplate"]["value"]["function"] == {
        "type": "load_text_content",
        "parameters": {"file_path": "../cloud-init.yaml", "encoding": None},
    }
    assert variables["mosquittoConfBase64"]["value"]["function"] == {
        "type": "load_file_as_base64",
        "parameters": {"file_path": "../generated/mosquitto.conf"},
    }
    assert variables["cloudInitWithConf"]["value"]["function"]["parameters"] == {
        "original_string": "cloudInitTemplate",
        "old_string": "__MOSQUITTO_CONF_B64__",
        "new_string": "mosquittoConfBase64",
    }
    assert variables["dynsecBootstrapBase64"]["value"]["function"] == {
        "type": "load_file_as_base64",
        "parameters": {"file_path": "../generated/dynsec-bootstrap.sh"},
    }
    assert variables["cloudInitWithDynsec"]["value"]["function"]["parameters"] == {
        "original_string": "cloudInitWithAdmin",
        "old_string": "__DYNSEC_BOOTSTRAP_B64__",
        "new_string": "dynsecBootstrapBase64",
    }
    template = (MODULES / "../cloud-init.yaml").resolve().read_text()
    conf_b64 = base64.b64encode((MODULES / "../generated/mosquitto.conf").resolve().read_bytes()).decode()
    dynsec_b64 = base64.b64encode((MODULES / "../generated/dynsec-bootstrap.sh").resolve().read_bytes()).decode()
    return template.replace("__MOSQUITTO_CONF_B64__", conf_b64).replace("__DYNSEC_BOOTSTRAP_B64__", dynsec_b64)


def write_files_entry(cloud_init: str, path: str) -> dict[str, str]:
    """The scalar fields of one write_files entry (enough for ours; no YAML library in the dev requirements)."""
    entries = re.split(r"\n  - path: ", cloud_init.split("\nwrite_files:\n", 1)[1].split("\nruncmd:", 1)[0])
    for entry in entries:
        lines = entry.strip("\n").splitlines()
        if lines and lines[0].strip().removeprefix("- path: ") == path:
            fields = {}
            for line in lines[1:]:
                if line.startswith("    ") and not line.startswith("      "):
                    key, _, value = line.strip().partition(":")
                    fields[key] = value.strip()
            return fields
    raise AssertionError(f"{path} not in write_files")


def test_generated_mosquitto_conf_is_what_the_broker_contract_renders() -> None:
    # GIVEN the committed infra/generated/mosquitto.conf WHEN the contract renders the VM's conf now
    # THEN they are the same bytes (fix: .venv/bin/python infra/render_broker_conf.py, then commit).
    assert GENERATED_CONF.read_bytes() == render_vm_conf().encode("utf-8")


def test_cloud_init_installs_exactly_the_contract_conf() -> None:
    cloud_init = cloud_init_as_deployed()
    entry = write_files_entry(cloud_init, "/opt/mqtt-saas/mosquitto.conf")
    assert entry["encoding"] == "b64"
    assert base64.b64decode(entry["content"]).decode("utf-8") == render_vm_conf()
    assert "install -m 0644 /opt/mqtt-saas/mosquitto.conf /etc/mosquitto/mosquitto.conf" in cloud_init
    # No other mosquitto listener config, except the WebSockets one behind its parameter.
    assert "1883" not in cloud_init
    assert re.findall(r'"listener \d+[^"]*"', cloud_init) == ['"listener 8884 0.0.0.0"']


def test_generated_dynsec_bootstrap_is_what_the_broker_contract_renders() -> None:
    assert GENERATED_DYNSEC.read_bytes() == render_dynsec_bootstrap().encode("utf-8")


def test_cloud_init_runs_the_contract_dynsec_bootstrap() -> None:
    entry = write_files_entry(cloud_init_as_deployed(), "/opt/mqtt-saas/dynsec-bootstrap.sh")
    assert entry["encoding"] == "b64"
    assert base64.b64decode(entry["content"]).decode("utf-8") == render_dynsec_bootstrap()
    assert "bash /opt/mqtt-saas/dynsec-bootstrap.sh" in cloud_init_as_deployed()


def setup_script() -> str:
    text = (INFRA / "cloud-init.yaml").read_text()
    body = text.split("  - path: /opt/mqtt-saas/setup-broker.sh\n", 1)[1].split("    content: |\n", 1)[1]
    body = body.split("\nruncmd:", 1)[0]
    return "\n".join(line.removeprefix("      ") for line in body.splitlines()) + "\n"


@pytest.mark.parametrize("script", ["setup-broker.sh", "dynsec-bootstrap.sh"])
def test_vm_shell_scripts_are_valid_bash(script: str, tmp_path: Path) -> None:
    text = setup_script() if script == "setup-broker.sh" else GENERATED_DYNSEC.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    (tmp_path / script).write_text(text)
    result = subprocess.run(["bash", "-n", str(tmp_path / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_broker_vm_reads_only_the_three_broker_passwords() -> None:
    # cloud-init creates the drain's, the provisioner's and the commander's clients; no other secret is its business.
    kv = module("keyVault")
    scopes = sorted(
        resource_config(r)["scope"]
        for r in kv["resources"].values()
        if r["type"] == "Microsoft.Authorization/roleAssignments"
        and resource_config(r)["properties"]["principalId"] == "brokerPrincipalId"
    )
    assert scopes == ["mqttCommanderPasswordSecret", "mqttIngestPasswordSecret", "mqttProvisionerPasswordSecret"]
    assert parse(MAIN)["modules"]["keyVault"]["config"]["params"]["brokerPrincipalId"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "brokerVm",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "principalId"},
                    }
                },
            },
        }
    }


def test_cloud_init_hardens_the_vm_and_holds_no_secret() -> None:
    cloud_init = (INFRA / "cloud-init.yaml").read_text()
    for package in ("mosquitto", "ufw", "fail2ban", "unattended-upgrades"):
        assert f"  - {package}\n" in cloud_init
    assert "ufw default deny incoming" in cloud_init and "ufw allow 8883/tcp" in cloud_init
    assert set(re.findall(r"__[A-Z0-9_]+__", cloud_init)) == {
        "__MOSQUITTO_CONF_B64__",
        "__BROKER_FQDN__",
        "__ENABLE_WEBSOCKETS__",
        "__ADMIN_USERNAME__",
        "__DYNSEC_BOOTSTRAP_B64__",
        "__KEY_VAULT_URI__",
        "__ROTATE_BROKER_CERT_B64__",
        "__LETSENCRYPT_SH_B64__",
        "__LETSENCRYPT_EMAIL__",
        "__LETSENCRYPT_KEY_TYPE__",
    }
    replaced = {
        p["old_string"]
        for v in module("brokerVm")["variables"].values()
        if isinstance(v["value"], dict)
        and (p := v["value"].get("function", {}).get("parameters"))
        and "old_string" in p
    }
    assert replaced == set(re.findall(r"__[A-Z0-9_]+__", cloud_init))


# -- function app ----------------------------------------------------------------------------------------------------


def app_settings() -> dict[str, Any]:
    site = resource_config(module("functionApp")["resources"]["functionApp"])
    assert site["properties"]["siteConfig"]["appSettings"] == "appSettings"
    entries = module("functionApp")["variables"]["appSettings"]["value"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "an app setting is set twice"
    return {e["name"]: e["value"] for e in entries}


def test_function_app_sets_every_setting_the_app_reads_and_nothing_unused() -> None:
    read_by_app = {field.alias for field in Settings.model_fields.values()}
    assert read_by_app >= LOCAL_ONLY_SETTINGS, "a local-only exception the app no longer reads"
    set_by_template = set(app_settings())
    assert read_by_app - LOCAL_ONLY_SETTINGS - set_by_template == set(), "settings the app reads but Bicep does not set"
    assert set_by_template - read_by_app - PLATFORM_SETTINGS == set(), "settings Bicep sets that nothing reads"
    assert set_by_template & LOCAL_ONLY_SETTINGS == set(), "a local-only setting set in Azure"


def key_vault_reference(name: str) -> str:
    return f"@Microsoft.KeyVault(SecretUri=${{secretUris.{name}}})"


def test_every_secret_setting_is_a_key_vault_reference() -> None:
    secrets = {
        f.alias
        for f in Settings.model_fields.values()
        if SecretStr in (f.annotation, *getattr(f.annotation, "__args__", ()))
    } - LOCAL_ONLY_SETTINGS
    assert secrets, "Settings has SecretStr fields"
    settings = app_settings()
    for name in secrets - set(OPTIONAL_SECRETS):
        assert settings[name] == key_vault_reference(name), name
    for name in OPTIONAL_SECRETS:
        # The reference when the vault holds the secret, else empty (the app's default): never a literal value.
        operands = settings[name]["operator"]["operands"]
        assert settings[name]["operator"]["type"] == "conditional", name
        assert operands["condition"]["function"] == {
            "type": "empty",
            "parameters": {
                "item_to_test": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "secretUris", "operand_2": name},
                    }
                }
            },
        }, name
        assert (operands["true_value"], operands["false_value"]) == ("", key_vault_reference(name)), name
    uris = module("keyVault")["outputs"]["secretUris"]["value"]
    assert set(uris) == secrets


def test_optional_secrets_are_stored_only_when_given() -> None:
    # An empty Key Vault secret makes the app's references fail to resolve, all of them: never store one.
    kv = module("keyVault")
    main_params = parse(MAIN)["parameters"]
    for name, param in OPTIONAL_SECRETS.items():
        assert is_secure(main_params[param]) and main_params[param]["default"] == ""
        assert parse(MAIN)["modules"]["keyVault"]["config"]["params"][param] == param
        uri = kv["outputs"]["secretUris"]["value"][name]["operator"]
        secret = uri["operands"]["false_value"]["operator"]["operands"]["operand_1"]
        assert kv["resources"][secret]["config"]["condition"] == {
            "operator": {
                "type": "not",
                "operands": {"bool_value": {"function": {"type": "empty", "parameters": {"item_to_test": param}}}},
            }
        }


def test_timer_schedules_default_to_the_apps_and_main_passes_them_on() -> None:
    # Without ROLLUP_SCHEDULE / ARCHIVE_SCHEDULE / ALERT_SCHEDULE the host cannot index those timers (%NAME%).
    fn = module("functionApp")
    for setting, param in (
        ("INGEST_SCHEDULE", "ingestSchedule"),
        ("ROLLUP_SCHEDULE", "rollupSchedule"),
        ("ARCHIVE_SCHEDULE", "archiveSchedule"),
        ("ALERT_SCHEDULE", "alertSchedule"),
    ):
        default = next(f.default for f in Settings.model_fields.values() if f.alias == setting)
        assert app_settings()[setting] == param
        assert fn["parameters"][param]["default"] == default
        assert parse(MAIN)["parameters"][param]["default"] == default
        assert parse(MAIN)["modules"]["functionApp"]["config"]["params"][param] == param


def storage_output(output: str) -> dict[str, Any]:
    return {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "storage",
                "operand_2": {
                    "operator": {"type": "property_accessor", "operands": {"operand_1": "outputs", "operand_2": output}}
                },
            },
        }
    }


def test_archive_is_reached_with_the_identity_and_refuses_shared_keys() -> None:
    settings = app_settings()
    assert settings["STORAGE_ACCOUNT_URL"] == "archiveBlobEndpoint"
    assert settings["ARCHIVE_CONTAINER"] == "archiveContainerName"
    assert settings["EXPORT_CONTAINER"] == "exportContainerName"
    params = parse(MAIN)["modules"]["functionApp"]["config"]["params"]
    for param, output in (
        ("archiveBlobEndpoint", "blobEndpoint"),
        ("archiveContainerName", "archiveContainerName"),
        ("exportContainerName", "exportContainerName"),
    ):
        assert params[param] == storage_output(output), param
    account = resource_config(module("storage")["resources"]["storageAccount"])
    assert account["properties"]["allowSharedKeyAccess"] is False
    for path in BICEP_FILES:
        assert "listKeys" not in path.read_text(), f"{path.name} reads an account key"


def test_function_app_is_flex_consumption_python_512_mb_every_minute() -> None:
    fn = module("functionApp")
    plan = resource_config(fn["resources"]["plan"])
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = resource_config(fn["resources"]["functionApp"])
    assert site["identity"] == {"type": "SystemAssigned"}
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "pythonVersion"}
    assert config["scaleAndConcurrency"]["instanceMemoryMB"] == "instanceMemoryMB"
    assert fn["parameters"]["instanceMemoryMB"]["default"] == 512
    assert parse(MAIN)["parameters"]["instanceMemoryMB"]["default"] == 512
    assert app_settings()["INGEST_SCHEDULE"] == "ingestSchedule"
    default_schedule = Settings.model_fields["ingest_schedule"].default
    assert default_schedule == "0 */1 * * * *"
    assert fn["parameters"]["ingestSchedule"]["default"] == default_schedule
    assert parse(MAIN)["parameters"]["ingestSchedule"]["default"] == default_schedule


def test_function_identity_is_storage_blob_data_contributor_on_the_archive() -> None:
    fn = module("functionApp")
    assert fn["variables"]["storageBlobDataContributorRoleId"]["value"] == STORAGE_BLOB_DATA_CONTRIBUTOR
    role = resource_config(fn["resources"]["archiveStorageRole"])
    assert role["scope"] == "archiveStorage"
    assert fn["resources"]["archiveStorage"]["existing"] is True
    assert (
        role["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        == "storageBlobDataContributorRoleId"
    )
    assert role["properties"]["principalType"] == "ServicePrincipal"


def test_role_assignment_names_are_deterministic_guids() -> None:
    for path, name, resource in resources_of_type("Microsoft.Authorization/roleAssignments"):
        assert resource_config(resource)["name"]["function"]["type"] == "guid", f"{path.name}: {name}"


def test_archive_lifecycle_moves_blobs_to_cool_then_archive() -> None:
    policy = resource_config(module("storage")["resources"]["lifecyclePolicy"])
    actions = policy["properties"]["policy"]["rules"][0]["definition"]["actions"]["baseBlob"]
    assert set(actions) == {"tierToCool", "tierToArchive"}
    params = module("storage")["parameters"]
    assert params["coolAfterDays"]["default"] < params["archiveAfterDays"]["default"]


def test_export_files_outlive_their_longest_link_and_no_more() -> None:
    rules = resource_config(module("storage")["resources"]["lifecyclePolicy"])["properties"]["policy"]["rules"]
    exports = [r["definition"] for r in rules if "delete" in r["definition"]["actions"]["baseBlob"]]
    assert len(exports) == 1 and exports[0]["filters"]["prefixMatch"] == ["${exportContainerName}/"]
    assert exports[0]["actions"]["baseBlob"]["delete"] == {"daysAfterModificationGreaterThan": "exportRetentionDays"}
    longest_link_days = max(m.le for m in Settings.model_fields["export_link_ttl_s"].metadata if hasattr(m, "le"))
    assert module("storage")["parameters"]["exportRetentionDays"]["default"] > longest_link_days / 86400


def test_alerts_watch_failures_drain_summaries_and_vm_cpu() -> None:
    resources = module("monitoring")["resources"]
    queries = [
        resource_config(r)["properties"]["criteria"]["allOf"][0]["query"]
        for r in resources.values()
        if r["type"] == "Microsoft.Insights/scheduledQueryRules"
    ]
    assert any("success == false" in q for q in queries)
    summary = [q for q in queries if 'startswith "ingest.summary "' in q]
    assert len(summary) == 2, "one alert for failed runs, one for absent runs"
    metric = resource_config(resources["vmCpuAlert"])["properties"]["criteria"]["allOf"][0]
    assert metric["metricName"] == "Percentage CPU"
    assert "alertEmail" in module("monitoring")["parameters"]


def test_drain_summary_line_is_what_the_alerts_look_for() -> None:
    source = (ROOT / "shared" / "ingest" / "drain.py").read_text()
    assert 'log.info("ingest.summary %s"' in source


# -- checkov ---------------------------------------------------------------------------------------------------------


def test_every_checkov_skip_states_its_reason() -> None:
    for path in BICEP_FILES:
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.fullmatch(r"\s*#checkov:skip=CKV2?_[A-Z]+_\d+:\s*\S.{15,}", line), f"{path.name}: {line}"


def checkov_command() -> list[str]:
    candidates = [
        os.environ.get("CHECKOV", ""),
        str(Path(sys.executable).parent / "checkov"),
        shutil.which("checkov") or "",
        str(ROOT / ".venv" / "checkov" / "bin" / "checkov"),
    ]
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found is None:
        pytest.skip(
            "checkov not installed: python3.11 -m venv .venv/checkov && "
            ".venv/checkov/bin/pip install -r infra/requirements-checkov.txt (see infra/README.md)"
        )
    return [found]


def run_checkov(directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            *checkov_command(),
            "-d",
            str(directory),
            "--framework",
            "bicep",
            "--skip-download",
            "--output",
            "json",
            "--external-checks-dir",
            str(INFRA / "checkov"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    return report  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    return run_checkov(INFRA)


def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in checkov_report["results"]["failed_checks"]]
    assert failed == []
    assert summary["parsing_errors"] == 0, "checkov could not parse a file (and would still have exited 0)"
    assert summary["resource_count"] > 30


def test_every_checkov_skip_is_used(checkov_report: dict[str, Any]) -> None:
    # GIVEN the inline skips WHEN checkov runs THEN each one suppressed a check that applies (no stale skip).
    skipped = {(c["check_id"], Path(c["file_path"]).name) for c in checkov_report["results"]["skipped_checks"]}
    inline = {
        (m[1], path.name) for path in BICEP_FILES for m in re.finditer(r"#checkov:skip=([A-Z0-9_]+):", path.read_text())
    }
    assert inline == skipped


def nsg_template(source: str, ports: str) -> str:
    return (
        "resource nsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {\n  name: 'bad'\n"
        "  location: 'westeurope'\n  properties: {\n    securityRules: [\n      {\n        name: 'rule'\n"
        "        properties: {\n          priority: 100\n          direction: 'Inbound'\n          access: 'Allow'\n"
        f"          protocol: 'Tcp'\n          sourceAddressPrefix: '{source}'\n          sourcePortRange: '*'\n"
        f"          destinationAddressPrefix: '*'\n          destinationPortRange: '{ports}'\n        }}\n"
        "      }\n    ]\n  }\n}\n"
    )


BAD_RULES = [  # (source, destination ports, the checks that must fail)
    ("10.0.0.0/8", "1880-1890", ["CKV_MQTTSAAS_1"]),  # plain MQTT, even from a private range
    ("Internet", "22", ["CKV_MQTTSAAS_2"]),  # checkov's CKV_AZURE_10 passes this one
    ("0.0.0.0/0", "22", ["CKV_MQTTSAAS_2"]),  # and this one
    ("*", "22", ["CKV_AZURE_10", "CKV_MQTTSAAS_2"]),
    ("203.0.113.7/32", "22", []),
]


@pytest.fixture(scope="module")
def bad_rules_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One checkov run over one template per BAD_RULES row (nsg0.bicep, nsg1.bicep, ...): a run takes seconds."""
    directory = tmp_path_factory.mktemp("nsg")
    for index, (source, ports, _) in enumerate(BAD_RULES):
        (directory / f"nsg{index}.bicep").write_text(nsg_template(source, ports))
    return run_checkov(directory)


@pytest.mark.parametrize("index", range(len(BAD_RULES)), ids=[f"{s}:{p}" for s, p, _ in BAD_RULES])
def test_custom_checks_fail_plain_mqtt_and_ssh_from_the_internet(index: int, bad_rules_report: dict[str, Any]) -> None:
    # GIVEN an NSG with one rule WHEN checkov scans it with infra/checkov THEN exactly these checks fail
    failed = [
        c["check_id"]
        for c in bad_rules_report["results"]["failed_checks"]
        if Path(c["file_path"]).name == f"nsg{index}.bicep"
    ]
    assert sorted(failed) == BAD_RULES[index][2]


@pytest.mark.parametrize("check_id", ["CKV_MQTTSAAS_1", "CKV_MQTTSAAS_2"])
def test_custom_checks_pass_the_real_templates(checkov_report: dict[str, Any], check_id: str) -> None:
    passed = [c for c in checkov_report["results"]["passed_checks"] if c["check_id"] == check_id]
    assert len(passed) == 3, "the NSG, the WebSockets rule and the Let's Encrypt HTTP-01 rule"
