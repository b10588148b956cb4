"""scripts/deploy refuses to start with a tool, a parameter or a secret missing, names each, and exits 2; its dry run
prints every step without calling a tool. Runs the script as an operator would, never reaching Azure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "scripts" / "deploy"
SECRET_VALUES = {
    "DATABASE_URL": "postgresql://mqtt_saas_app:app-secret-1234@db.example.net:5432/mqtt_saas?sslmode=require",
    "INGEST_DATABASE_URL": "postgresql://mqtt_saas_ingest:ingest-secret-5678@db.example.net:5432/mqtt_saas",
    "MAINTENANCE_DATABASE_URL": "postgresql://mqtt_saas_maintenance:maint-secret-4444@db.example.net:5432/mqtt_saas",
    "MQTT_INGEST_PASSWORD": "broker-ingest-secret-9999",
    "MQTT_PROVISIONER_PASSWORD": "broker-provisioner-secret-8888",
    "MQTT_COMMANDER_PASSWORD": "broker-commander-secret-5555",
    "AUTH_JWT_SECRET": "f" * 64,
    "ADMIN_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyForTestsOnly ops@test",
    "ADMIN_DATABASE_URL": "postgresql://owner:owner-secret-7777@db.example.net:5432/mqtt_saas",
    "SMOKE_TENANT": "acme",
    "SMOKE_EMAIL": "owner@acme.test",
    "SMOKE_PASSWORD": "smoke-secret-6666",
}


def parameters(tmp_path: Path, **changes: object) -> Path:
    document = json.loads((REPO / "infra" / "main.parameters.json").read_text())
    values = document["parameters"]
    values["adminSourceCidr"] = {"value": "198.51.100.23/32"}
    values["alertEmail"] = {"value": "oncall@acme.test"}
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = {"value": value}
    path = tmp_path / "params.json"
    path.write_text(json.dumps(document))
    return path


def tool_dir(tmp_path: Path, tools: tuple[str, ...]) -> Path:
    """Stand-ins that record any call: a dry run or a refusal must call none of them."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for tool in tools:
        stub = folder / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >>"{tmp_path}/calls.log"\nexit 1\n')
        stub.chmod(0o755)
    return folder


def run_deploy(
    tmp_path: Path, params: Path, tools: tuple[str, ...], env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": str(tool_dir(tmp_path, tools)), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, str(DEPLOY), "--resource-group", "rg-test", "--parameters", str(params), *extra],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def calls(tmp_path: Path) -> str:
    log = tmp_path / "calls.log"
    return log.read_text() if log.exists() else ""


def test_deploy_refuses_without_az_and_func_and_names_them(tmp_path: Path) -> None:
    # GIVEN a PATH with ssh and scp but neither the Azure CLI nor Core Tools
    # WHEN deploy runs with every parameter and secret present
    done = run_deploy(tmp_path, parameters(tmp_path), ("ssh", "scp"), SECRET_VALUES)
    # THEN it refuses before any step, naming both tools
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to deploy" in done.stderr
    assert "missing tools on PATH: az, func " in done.stderr
    assert "[2/9]" not in done.stdout
    assert calls(tmp_path) == ""


def test_deploy_refuses_a_parameters_file_missing_values_and_names_each(tmp_path: Path) -> None:
    # GIVEN a parameters file without adminSourceCidr and with an empty alertEmail, and no DATABASE_URL exported
    params = parameters(tmp_path, adminSourceCidr=None, alertEmail="")
    env = {k: v for k, v in SECRET_VALUES.items() if k != "DATABASE_URL"}
    # WHEN deploy runs with every tool present
    done = run_deploy(tmp_path, params, ("az", "func", "ssh", "scp"), env)
    # THEN it refuses, naming each missing value and where to put it, and calls nothing
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"missing parameter adminSourceCidr: set it in {params}" in done.stderr
    assert f"missing parameter alertEmail: set it in {params}" in done.stderr
    assert "missing parameter databaseUrl: export DATABASE_URL" in done.stderr
    assert calls(tmp_path) == ""


def test_deploy_refuses_the_examples_placeholder_values(tmp_path: Path) -> None:
    # GIVEN the repository's parameters file as it is (documentation addresses: 203.0.113.7/32, ops@example.com)
    done = run_deploy(tmp_path, REPO / "infra" / "main.parameters.json", ("az", "func", "ssh", "scp"), SECRET_VALUES)
    # THEN deploy will not open SSH to a documentation address or mail alerts to example.com
    assert done.returncode == 2
    assert "parameter adminSourceCidr still holds the example value '203.0.113.7/32'" in done.stderr
    assert "parameter alertEmail still holds the example value 'ops@example.com'" in done.stderr


@pytest.mark.parametrize("missing", ["ADMIN_DATABASE_URL", "SMOKE_PASSWORD", "ADMIN_SSH_PUBLIC_KEY"])
def test_deploy_refuses_without_what_the_later_steps_need(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in SECRET_VALUES.items() if k != missing}
    done = run_deploy(tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"), env)
    assert done.returncode == 2
    assert missing in done.stderr


def test_deploy_refuses_a_short_jwt_secret(tmp_path: Path) -> None:
    done = run_deploy(
        tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"), {**SECRET_VALUES, "AUTH_JWT_SECRET": "too-short"}
    )
    assert done.returncode == 2
    assert "AUTH_JWT_SECRET is shorter than 32 bytes" in done.stderr


def test_deploy_refuses_an_external_provider_with_a_short_secret_and_a_jwks_address(tmp_path: Path) -> None:
    # GIVEN an external provider configured with both a (short) shared secret and a JWKS address
    params = parameters(tmp_path, authExternalJwksUri="https://idp.acme.test/.well-known/jwks.json")
    done = run_deploy(
        tmp_path, params, ("az", "func", "ssh", "scp"), {**SECRET_VALUES, "AUTH_EXTERNAL_SECRET": "short"}
    )
    # THEN deploy names both problems (the app would refuse every external token) and calls nothing
    assert done.returncode == 2
    assert "AUTH_EXTERNAL_SECRET is shorter than 32 bytes" in done.stderr
    assert "AUTH_EXTERNAL_SECRET and authExternalJwksUri are both set" in done.stderr
    assert calls(tmp_path) == ""


def test_deploy_passes_the_maintenance_url_and_an_external_secret_only_when_exported(tmp_path: Path) -> None:
    # GIVEN every secret, first without and then with the external provider's shared secret
    without = run_deploy(tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"), SECRET_VALUES, "--dry-run")
    with_external = run_deploy(
        tmp_path,
        parameters(tmp_path),
        ("az", "func", "ssh", "scp"),
        {**SECRET_VALUES, "AUTH_EXTERNAL_SECRET": "e" * 64},
        "--dry-run",
    )
    # THEN the secure parameters file names maintenanceDatabaseUrl always and authExternalSecret only when exported
    assert without.returncode == 0 and with_external.returncode == 0, without.stderr + with_external.stderr
    line = next(x for x in without.stdout.splitlines() if "secure parameters" in x)
    assert "maintenanceDatabaseUrl" in line and "authExternalSecret" not in line
    line = next(x for x in with_external.stdout.splitlines() if "secure parameters" in x)
    assert "authExternalSecret" in line
    assert "e" * 64 not in with_external.stdout + with_external.stderr


def test_deploy_refuses_without_the_maintenance_url(tmp_path: Path) -> None:
    # The maintenance timers (rollups, archive, retention) have no other way to reach the database.
    env = {k: v for k, v in SECRET_VALUES.items() if k != "MAINTENANCE_DATABASE_URL"}
    done = run_deploy(tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"), env)
    assert done.returncode == 2
    assert "missing parameter maintenanceDatabaseUrl: export MAINTENANCE_DATABASE_URL" in done.stderr


def test_deploy_dry_run_prints_every_step_calls_nothing_and_shows_no_secret(tmp_path: Path) -> None:
    # GIVEN every tool, parameter and secret
    # WHEN deploy runs with --dry-run
    done = run_deploy(tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"), SECRET_VALUES, "--dry-run")
    # THEN it prints the nine steps and the commands, calls no tool but the read-only look-up of the broker VM, and
    # no secret appears
    assert done.returncode == 0, done.stdout + done.stderr
    for number in range(1, 10):
        assert f"[{number}/9]" in done.stdout
    assert "az deployment group create --resource-group rg-test" in done.stdout
    assert "func azure functionapp publish '<functionAppName>' --python" in done.stdout
    assert "cloud-init status --wait" in done.stdout
    assert "prepare_session(" in done.stdout
    assert "/api/devices" in done.stdout
    assert calls(tmp_path).splitlines() == [
        "az vm list --resource-group rg-test --query [].{name: name, vmSize: hardwareProfile.vmSize, tags: tags} "
        "--output json"
    ]
    # (the stand-in az fails, as it would without a login: the dry run says it could not look)
    assert "could not list the group's VMs" in done.stdout
    for name, value in SECRET_VALUES.items():
        if name not in ("SMOKE_TENANT", "SMOKE_EMAIL", "ADMIN_SSH_PUBLIC_KEY"):
            assert value not in done.stdout + done.stderr, name


def load_deploy_module():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("deploy_script", str(DEPLOY))
    spec = importlib.util.spec_from_loader("deploy_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_script"] = module  # dataclasses look their module up there
    try:
        loader.exec_module(module)
    finally:
        del sys.modules["deploy_script"]
    return module


def test_deploy_knows_every_required_parameter_of_the_template() -> None:
    # A new Required parameter in main.bicep must be either in the parameters file or a secret deploy exports.
    module = load_deploy_module()
    required = module.required_parameters()
    assert {"adminSourceCidr", "adminSshPublicKey", "alertEmail", "databaseUrl", "authJwtSecret"} <= set(required)
    in_file = set(json.loads((REPO / "infra" / "main.parameters.json").read_text())["parameters"])
    assert set(required) - in_file <= set(module.SECURE_FROM_ENV)


def test_the_published_package_holds_the_app_and_nothing_else(tmp_path: Path) -> None:
    # GIVEN the package deploy publishes, staged with a CA file
    module = load_deploy_module()
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    package = tmp_path / "package"
    module.stage_package(package, ca)
    # THEN it holds the app, its SQL and the CA where MQTT_CA_FILE points, and none of the local state
    assert sorted(p.name for p in package.iterdir()) == sorted(
        ["blueprints", "certs", "dashboard", "function_app.py", "host.json", "requirements.txt", "shared", "sql"]
    )
    assert (package / "certs" / "broker-ca.crt").read_text() == ca.read_text()
    # the page the app serves at /api/dashboard/, without the tool that copies its vendored libraries
    assert (package / "dashboard" / "index.html").read_bytes() == (REPO / "dashboard" / "index.html").read_bytes()
    assert not (package / "dashboard" / "vendor_assets.py").exists()
    assert (package / "sql" / "migrations" / "0001_roles_and_tenancy.sql").exists()
    assert not list(package.rglob("__pycache__"))
    # AND the app imports from it alone (nothing it needs lives in scripts/ or tests/), with its functions registered
    done = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "import function_app; from shared.http import static as dashboard; "
            "assert dashboard.ROOT.is_relative_to(__import__('pathlib').Path.cwd()); "
            "assert dashboard.find_asset('index.html') is not None; "
            "print(len(function_app.app.get_functions()))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(package)},
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) >= 4


# -- an existing broker VM -------------------------------------------------------------------------------------------

BROKER_VM = "vm-mqtt-saas-abcdefgh23456"


def az_listing(tmp_path: Path, vms: list[dict[str, object]]) -> None:
    """An az stand-in that answers `az vm list` with these VMs (as az prints them) and fails anything else."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    listing = json.dumps(vms)
    assert "'" not in listing
    stub = folder / "az"
    # printf is the shell's own: PATH holds the stand-ins only
    stub.write_text(
        f'#!/bin/sh\necho "az $*" >>"{tmp_path}/calls.log"\n'
        f'case "$*" in "vm list "*) printf %s \'{listing}\'; exit 0;; "group create "*) exit 0;; esac\n'
        "exit 1\n"
    )
    stub.chmod(0o755)


def run_with_vms(
    tmp_path: Path,
    vms: list[dict[str, object]],
    params: Path,
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    tool_dir(tmp_path, ("func", "ssh", "scp"))
    az_listing(tmp_path, vms)
    environment = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path), **SECRET_VALUES}
    return subprocess.run(
        [sys.executable, str(DEPLOY), "--resource-group", "rg-test", "--parameters", str(params), *extra],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dry_run_names_the_decision_when_the_broker_vm_exists(tmp_path: Path) -> None:
    # GIVEN a group holding the deployment's broker VM (created with the generated CA) and an unrelated VM
    vms = [
        {
            "name": BROKER_VM,
            "vmSize": "Standard_B1s",
            "tags": {"mqtt-saas-cloud-init": "oldhash", "mqtt-saas-broker-certificate": "generated-ca"},
        },
        {"name": "vm-mqtt-saas-other-abcdefgh23456", "vmSize": "Standard_B2s", "tags": None},
    ]
    # WHEN deploy runs with --dry-run
    done = run_with_vms(tmp_path, vms, parameters(tmp_path), "--dry-run")
    # THEN it names the VM and the decision, the template gets brokerVmExists=true, and it says how broker changes
    # are rolled instead; it looked the VMs up and deployed nothing
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"broker VM: {BROKER_VM} exists (brokerVmExists=true)" in done.stdout
    assert "PropertyChangeNotAllowed" in done.stdout
    assert "--parameters brokerVmExists=true" in done.stdout
    assert (
        "broker VM exists: its cloud-init is not reapplied; to roll broker changes use docs/runbook.md 6.8"
        in done.stdout
    )
    assert [line.split(" --")[0] for line in calls(tmp_path).splitlines()] == ["az vm list"]


def test_dry_run_names_the_decision_when_there_is_no_broker_vm(tmp_path: Path) -> None:
    # GIVEN a group with no VM of this deployment (another deployment's name does not count)
    vms = [{"name": "vm-other-abcdefgh23456", "vmSize": "Standard_B1s", "tags": {}}]
    done = run_with_vms(tmp_path, vms, parameters(tmp_path), "--dry-run")
    # THEN the template creates the VM
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broker VM: none yet; the template creates it" in done.stdout
    assert "--parameters brokerVmExists=false" in done.stdout
    assert "cloud-init is not reapplied" not in done.stdout


def test_deploy_refuses_to_switch_an_existing_brokers_certificate_mode(tmp_path: Path) -> None:
    # GIVEN a broker VM created with the generated CA, and parameters that now ask for Let's Encrypt
    vms = [{"name": BROKER_VM, "vmSize": "Standard_B1s", "tags": {"mqtt-saas-broker-certificate": "generated-ca"}}]
    params = parameters(tmp_path, letsEncryptEmail="certs@acme.test")
    # WHEN deploy runs (for real: no --dry-run)
    done = run_with_vms(tmp_path, vms, params)
    # THEN it refuses before the template (the app would get an empty MQTT_CA_FILE while the VM keeps its CA), says
    # how to switch the broker and record it
    assert done.returncode == 2, done.stdout + done.stderr
    assert "created with certificate mode generated-ca and the parameters ask for letsencrypt" in done.stderr
    assert f"az vm update -g rg-test -n {BROKER_VM} --set tags.mqtt-saas-broker-certificate=letsencrypt" in done.stderr
    assert "deployment group create" not in calls(tmp_path)


def test_deploy_points_at_a_size_it_does_not_change_and_refuses_two_broker_vms(tmp_path: Path) -> None:
    # GIVEN an existing broker VM of another size than the parameters say
    vms = [{"name": BROKER_VM, "vmSize": "Standard_B2s", "tags": {}}]
    done = run_with_vms(tmp_path, vms, parameters(tmp_path), "--dry-run")
    # THEN deploy says it does not resize it, and how
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"az vm resize -g rg-test -n {BROKER_VM} --size Standard_B1s" in done.stdout
    # AND two VMs of the same deployment's shape: it cannot tell which one the template manages, and refuses
    vms.append({"name": "vm-mqtt-saas-zyxwvuts98765", "vmSize": "Standard_B1s", "tags": {}})
    done = run_with_vms(tmp_path, vms, parameters(tmp_path), "--dry-run")
    assert done.returncode == 2
    assert "2 broker VMs in rg-test" in done.stderr


def test_broker_vm_name_follows_the_name_parameter() -> None:
    module = load_deploy_module()
    assert module.broker_vm_pattern({}).fullmatch(BROKER_VM)
    assert module.broker_vm_pattern({"name": "plant-2"}).fullmatch("vm-plant-2-0123456789abc")
    assert not module.broker_vm_pattern({"name": "plant-2"}).fullmatch(BROKER_VM)
    assert not module.broker_vm_pattern({}).fullmatch("vm-mqtt-saas-other-abcdefgh23456")
