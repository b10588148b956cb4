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


def run_deploy(tmp_path: Path, params: Path, tools: tuple[str, ...], env: dict[str, str],
               *extra: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": str(tool_dir(tmp_path, tools)), "HOME": str(tmp_path), **env}
    return subprocess.run([sys.executable, str(DEPLOY), "--resource-group", "rg-test", "--parameters", str(params),
                           *extra], env=environment, capture_output=True, text=True, timeout=60)


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
    done = run_deploy(tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"),
                      {**SECRET_VALUES, "AUTH_JWT_SECRET": "too-short"})
    assert done.returncode == 2
    assert "AUTH_JWT_SECRET is shorter than 32 bytes" in done.stderr


def test_deploy_refuses_an_external_provider_with_a_short_secret_and_a_jwks_address(tmp_path: Path) -> None:
    # GIVEN an external provider configured with both a (short) shared secret and a JWKS address
    params = parameters(tmp_path, authExternalJwksUri="https://idp.acme.test/.well-known/jwks.json")
    done = run_deploy(tmp_path, params, ("az", "func", "ssh", "scp"), {**SECRET_VALUES, "AUTH_EXTERNAL_SECRET": "short"})
    # THEN deploy names both problems (the app would refuse every external token) and calls nothing
    assert done.returncode == 2
    assert "AUTH_EXTERNAL_SECRET is shorter than 32 bytes" in done.stderr
    assert "AUTH_EXTERNAL_SECRET and authExternalJwksUri are both set" in done.stderr
    assert calls(tmp_path) == ""


def test_deploy_passes_the_maintenance_url_and_an_external_secret_only_when_exported(tmp_path: Path) -> None:
    # GIVEN every secret, first without and then with the external provider's shared secret
    without = run_deploy(tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"), SECRET_VALUES, "--dry-run")
    with_external = run_deploy(tmp_path, parameters(tmp_path), ("az", "func", "ssh", "scp"),
                               {**SECRET_VALUES, "AUTH_EXTERNAL_SECRET": "e" * 64}, "--dry-run")
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
    # THEN it prints the nine steps and the commands, calls no tool, and no secret appears
    assert done.returncode == 0, done.stdout + done.stderr
    for number in range(1, 10):
        assert f"[{number}/9]" in done.stdout
    assert "az deployment group create --resource-group rg-test" in done.stdout
    assert "func azure functionapp publish '<functionAppName>' --python" in done.stdout
    assert "cloud-init status --wait" in done.stdout
    assert "prepare_session(" in done.stdout
    assert "/api/devices" in done.stdout
    assert calls(tmp_path) == ""
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
        ["blueprints", "certs", "dashboard", "function_app.py", "host.json", "requirements.txt", "shared", "sql"])
    assert (package / "certs" / "broker-ca.crt").read_text() == ca.read_text()
    # the page the app serves at /api/dashboard/, without the tool that copies its vendored libraries
    assert (package / "dashboard" / "index.html").read_bytes() == (REPO / "dashboard" / "index.html").read_bytes()
    assert not (package / "dashboard" / "vendor_assets.py").exists()
    assert (package / "sql" / "migrations" / "0001_roles_and_tenancy.sql").exists()
    assert not list(package.rglob("__pycache__"))
    # AND the app imports from it alone (nothing it needs lives in scripts/ or tests/), with its functions registered
    done = subprocess.run([sys.executable, "-P", "-c",
                           "import function_app; from shared import dashboard; "
                           "assert dashboard.ROOT.is_relative_to(__import__('pathlib').Path.cwd()); "
                           "assert dashboard.find_asset('index.html') is not None; "
                           "print(len(function_app.app.get_functions()))"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(package)})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) >= 4
