"""Redeploying over an existing broker VM, offline (pycep): with brokerVmExists the VM is not in the deployment (Azure
refuses any change of an existing VM's customData, PropertyChangeNotAllowed), it is referenced as `existing`, and the
network, the key vault's grant to the VM's identity, the CPU alert and every output still resolve; the function app
is deployed the same either way."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

INFRA = Path(__file__).resolve().parents[2] / "infra"
MAIN = INFRA / "main.bicep"
MODULES = INFRA / "modules"


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)  # type: ignore[no-any-return]


def broker_vm() -> dict[str, Any]:
    return parse(MODULES / "brokerVm.bicep")


def accessor(*parts: str) -> Any:
    """pycep's form of a.b.c."""
    if len(parts) == 1:
        return parts[0]
    return {
        "operator": {
            "type": "property_accessor",
            "operands": {"operand_1": parts[0], "operand_2": accessor(*parts[1:])},
        }
    }


def holds(condition: Any, params: dict[str, bool]) -> bool:
    """The two conditions the broker module uses: `brokerVmExists` and `!brokerVmExists`."""
    if isinstance(condition, str):
        return params[condition]
    operator = condition["operator"]
    assert operator["type"] == "not", condition
    return not params[operator["operands"]["bool_value"]]


def deployed(declarations: dict[str, Any], params: dict[str, bool]) -> dict[str, Any]:
    """Name -> declaration of what a deployment with these parameter values creates or updates."""
    chosen = {}
    for name, declaration in declarations.items():
        if declaration.get("existing"):
            continue
        config = declaration["config"]
        if "condition" not in config or holds(config["condition"], params):
            chosen[name] = declaration
    return chosen


def test_main_declares_broker_vm_exists_off_by_default_and_passes_it_on() -> None:
    parameter = parse(MAIN)["parameters"]["brokerVmExists"]
    assert parameter["type"] == "bool" and parameter["default"] is False
    description = parameter["decorators"][0]["argument"]
    assert description.startswith("Optional.") and "PropertyChangeNotAllowed" in description
    assert parse(MAIN)["modules"]["brokerVm"]["config"]["params"]["brokerVmExists"] == "brokerVmExists"
    assert broker_vm()["parameters"]["brokerVmExists"]["default"] is False
    # a module main.bicep always deploys: its network interface and outputs are there either way
    assert "condition" not in parse(MAIN)["modules"]["brokerVm"]["config"]


@pytest.mark.parametrize("exists", [False, True])
def test_the_vm_is_in_the_deployment_only_while_it_does_not_exist(exists: bool) -> None:
    # GIVEN brokerVmExists WHEN the broker module deploys
    params = {"brokerVmExists": exists}
    modules = deployed(broker_vm().get("modules", {}), params)
    resources = deployed(broker_vm()["resources"], params)
    # THEN the VM (a module of its own) is deployed only without it, the network interface always
    assert ("virtualMachine" in modules) is (not exists)
    assert (
        modules.get("virtualMachine", {}).get("detail", {}).get("path", "brokerVmInstance.bicep")
        == "brokerVmInstance.bicep"
    )
    assert "networkInterface" in resources
    assert not any(r["type"] == "Microsoft.Compute/virtualMachines" for r in resources.values()), (
        "a VM declared in brokerVm.bicep itself would be redeployed (and its customData with it)"
    )
    # AND with it, the VM is referenced as existing, under the name a new one gets
    existing = broker_vm()["resources"]["existingVirtualMachine"]
    assert existing["existing"] is True and existing["type"] == "Microsoft.Compute/virtualMachines"
    assert holds(existing["config"]["condition"], params) is exists
    assert existing["config"]["config"]["name"] == "vmName"
    assert broker_vm()["modules"]["virtualMachine"]["config"]["config"]["params"]["vmName"] == "vmName"
    assert broker_vm()["variables"]["vmName"]["value"] == "vm-${name}-${resourceToken}"


def test_the_vm_instance_module_declares_the_vm_unconditionally() -> None:
    # checkov 3.3.30 evaluates no `= if (...)` resource body: the VM stays plain in its own module
    instance = parse(MODULES / "brokerVmInstance.bicep")["resources"]
    assert list(instance) == ["virtualMachine"]
    assert "condition" not in instance["virtualMachine"]["config"]


def test_outputs_resolve_from_the_existing_vm_or_the_new_one() -> None:
    outputs = broker_vm()["outputs"]
    for output, existing, created in (
        ("vmId", ("existingVirtualMachine", "id"), ("virtualMachine", "outputs", "vmId")),
        (
            "principalId",
            ("existingVirtualMachine", "identity", "principalId"),
            ("virtualMachine", "outputs", "principalId"),
        ),
    ):
        assert outputs[output]["value"]["operator"] == {
            "type": "conditional",
            "operands": {
                "condition": "brokerVmExists",
                "true_value": accessor(*existing),
                "false_value": accessor(*created),
            },
        }
    assert outputs["vmName"]["value"] == "vmName"
    assert outputs["cloudInitHash"]["value"] == "cloudInitHash"
    assert broker_vm()["variables"]["cloudInitHash"]["value"] == {
        "function": {"type": "unique_string", "parameters": {"base_string": "cloudInit"}}
    }


def test_everything_that_needs_the_vm_still_gets_it_and_the_app_does_not_depend_on_it() -> None:
    main = parse(MAIN)
    modules = main["modules"]
    assert modules["keyVault"]["config"]["params"]["brokerPrincipalId"] == accessor(
        "brokerVm", "outputs", "principalId"
    )
    assert modules["monitoring"]["config"]["params"]["brokerVmId"] == accessor("brokerVm", "outputs", "vmId")
    # the function app's settings come from the network (the broker's name) and the parameters, never the VM
    assert "brokerVm" not in str(modules["functionApp"]["config"]["params"])
    assert "brokerVmExists" not in str(modules["functionApp"]["config"]["params"])
    outputs = main["outputs"]
    for name in (
        "brokerHost",
        "brokerAzureHost",
        "brokerIpAddress",
        "brokerCertificate",
        "brokerCaCertificateCommand",
        "brokerAdminPasswordLocation",
        "functionAppUrl",
        "functionAppName",
        "keyVaultName",
    ):
        assert name in outputs, name
        assert "brokerVmExists" not in str(outputs[name]["value"]), name
    assert outputs["brokerVmName"]["value"] == accessor("brokerVm", "outputs", "vmName")
    assert outputs["brokerCloudInitHash"]["value"] == accessor("brokerVm", "outputs", "cloudInitHash")
    assert outputs["brokerVmReused"]["value"] == "brokerVmExists"


def test_a_new_vm_is_tagged_with_what_it_was_created_with() -> None:
    # scripts/deploy reads these tags later: the VM is never redeployed, so they stay true of its first boot
    tags = broker_vm()["modules"]["virtualMachine"]["config"]["config"]["params"]["tags"]["function"]
    assert tags["type"] == "union" and tags["parameters"]["arg_1"] == "tags"
    added = tags["parameters"]["arg_2"]
    assert added["'mqtt-saas-cloud-init'"] == "cloudInitHash"
    mode = added["'mqtt-saas-broker-certificate'"]["operator"]["operands"]
    assert (mode["true_value"], mode["false_value"]) == ("generated-ca", "letsencrypt")
    assert mode["condition"] == {"function": {"type": "empty", "parameters": {"item_to_test": "letsEncryptEmail"}}}


def test_deploy_uses_the_tag_names_the_template_writes() -> None:
    text = (Path(__file__).resolve().parents[2] / "scripts" / "deploy").read_text()
    assert 'CLOUD_INIT_TAG = "mqtt-saas-cloud-init"' in text
    assert 'CERTIFICATE_TAG = "mqtt-saas-broker-certificate"' in text


# -- rolling the repository's cloud-init onto an existing VM --------------------------------------------------------

LE = {
    "broker_host": "mqtt.acme.test",
    "key_vault_uri": "https://kv-mqtt-saas.vault.azure.net/",
    "lets_encrypt_email": "certs@acme.test",
}


@pytest.mark.parametrize("lets_encrypt", [False, True])
def test_render_gives_what_the_template_gives_a_new_vm(lets_encrypt: bool) -> None:
    # GIVEN the cloud-init as tests/infra/test_letsencrypt.py evaluates brokerVm.bicep for each mode
    from infra.render_cloud_init import render
    from tests.infra.test_letsencrypt import BASE_PARAMS, LE_PARAMS, rendered_cloud_init

    params = LE_PARAMS if lets_encrypt else BASE_PARAMS
    # WHEN the operators' renderer renders it THEN it is the same text
    assert render(
        params["brokerFqdn"],
        params["keyVaultUri"],
        params["enableWebsockets"],
        params["adminUsername"],
        params["letsEncryptEmail"],
        params["letsEncryptKeyType"],
    ) == rendered_cloud_init(**params)


def test_reapply_script_writes_every_file_cloud_init_writes_and_runs_the_setup(tmp_path: Path) -> None:
    # GIVEN the reapply script of a Let's Encrypt broker, and stand-ins for what only root on the VM may run
    from infra.render_cloud_init import reapply_script, render
    from tests.infra.test_letsencrypt import file_content, write_files

    cloud_init = render(LE["broker_host"], LE["key_vault_uri"], lets_encrypt_email=LE["lets_encrypt_email"])
    script = tmp_path / "reapply.sh"
    script.write_text(reapply_script(cloud_init))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("apt-get", "chown", "systemctl", "bash"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>"{tmp_path}/calls.log"\n')
        (stubs / tool).chmod(0o755)
    root = tmp_path / "vm"
    # WHEN it runs twice into a scratch root (a second run, as after a failed first one, changes nothing)
    for _ in range(2):
        done = subprocess.run(
            ["/bin/bash", str(script)],
            env={"PATH": f"{stubs}:/usr/bin:/bin", "ROOT": str(root)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    # THEN every write_files entry is there, byte for byte, with its mode, and nothing else
    entries = write_files(cloud_init)
    written = {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert written == set(entries)
    for path, entry in entries.items():
        assert (root / path.lstrip("/")).read_bytes() == file_content(cloud_init, path), path
        mode = int(entry.get("permissions", "0644").strip('"'), 8)
        assert (root / path.lstrip("/")).stat().st_mode & 0o777 == mode, path
    # AND the packages, the owners, systemd and cloud-init's runcmd (setup-broker.sh: safe to re-run) ran, in order
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0] == "apt-get update -q"
    assert calls[1].startswith("apt-get install -y -q mosquitto mosquitto-clients openssl ufw")
    assert f"chown root:root {root}/opt/mqtt-saas/setup-broker.sh.new" in calls
    assert calls[-2:] == ["systemctl daemon-reload", "bash /opt/mqtt-saas/setup-broker.sh"]


def test_render_reads_the_deploys_parameters_file(tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(
        json.dumps(
            {
                "parameters": {
                    "letsEncryptEmail": {"value": "certs@acme.test"},
                    "letsEncryptKeyType": {"value": "rsa"},
                    "adminUsername": {"value": "ops"},
                }
            }
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            str(INFRA / "render_cloud_init.py"),
            "--broker-host",
            "mqtt.acme.test",
            "--key-vault-name",
            "kv-mqtt-saas-abc",
            "--parameters",
            str(params),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "LE_EMAIL='certs@acme.test'" in done.stdout and "LE_KEY_TYPE='rsa'" in done.stdout
    assert 'admin_user="ops"' in done.stdout
    assert 'key_vault_uri="https://kv-mqtt-saas-abc.vault.azure.net/"' in done.stdout
