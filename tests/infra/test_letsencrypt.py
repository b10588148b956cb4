"""The broker's Let's Encrypt path (letsEncryptEmail) beside the generated CA, offline: no Azure, no Let's Encrypt.

- The templates, read with pycep: port 80 opens in the NSG only with Let's Encrypt; the app gets the broker's name and
  no CA file then; without the parameters everything is as before.
- The VM's cloud-init as the template renders it for each mode (brokerVm.bicep's replace() chain evaluated here):
  certbot's script, its hooks and the deploy hook are on the VM, Mosquitto's paths are the ones the hook writes, no
  rule keeps 80 open, and the generated-CA mode runs none of it.
- infra/letsencrypt.sh itself, run here with stand-ins for certbot, ufw and apt-get that behave as they do (certbot
  runs its pre, deploy and post hooks), and the real scripts/rotate_broker_cert as deploy hook, in a temporary folder.
- scripts/deploy's preflight, dry run, package, its check of the broker's certificate against a real Mosquitto, and its
  steps against the real PostgreSQL and Mosquitto with the "system CA store" trusting the test broker (SSL_CERT_FILE).
"""

from __future__ import annotations

import base64
import functools
import grp
import json
import os
import re
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from infra.render_broker_conf import VM_CERTFILE, VM_KEYFILE, render_vm_conf
from infra.render_cloud_init import evaluate
from shared.core.settings import settings_from

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MODULES = INFRA / "modules"
LETSENCRYPT_SH = INFRA / "letsencrypt.sh"
ROTATE = REPO / "scripts" / "rotate_broker_cert"
DEPLOY = REPO / "scripts" / "deploy"
# Azure's limit on osProfile.customData (the decoded cloud-init): 64 KiB.
CUSTOM_DATA_LIMIT = 65535


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)  # type: ignore[no-any-return]


def main_bicep() -> dict[str, Any]:
    return parse(INFRA / "main.bicep")


def module(name: str) -> dict[str, Any]:
    return parse(MODULES / f"{name}.bicep")


# -- cloud-init as deployed ------------------------------------------------------------------------------------------


BASE_PARAMS = {
    "brokerFqdn": "mqtt-saas-abc123.westeurope.cloudapp.azure.com",
    "enableWebsockets": False,
    "adminUsername": "azureuser",
    "keyVaultUri": "https://kv-mqtt-saas.vault.azure.net/",
    "letsEncryptEmail": "",
    "letsEncryptKeyType": "ecdsa",
}
LE_PARAMS = {**BASE_PARAMS, "brokerFqdn": "mqtt.acme.test", "letsEncryptEmail": "certs@acme.test"}


def rendered_cloud_init(**params: Any) -> str:
    variables = module("brokerVm")["variables"]
    vm = module("brokerVm")["modules"]["virtualMachine"]["config"]["config"]  # if (!brokerVmExists)
    assert vm["params"]["customData"]["function"]["parameters"]["input_string"] == "cloudInit"
    text: str = evaluate("cloudInit", variables, params)
    assert not re.findall(r"__[A-Z0-9_]+__", text), "a placeholder left unfilled"
    return text


def write_files(cloud_init: str) -> dict[str, dict[str, str]]:
    """path -> the fields of each write_files entry, a literal block (`|`) as its text."""
    section = cloud_init.split("\nwrite_files:\n", 1)[1].split("\nruncmd:", 1)[0]
    entries = {}
    for chunk in section.split("\n  - path: "):
        lines = chunk.removeprefix("  - path: ").splitlines()
        fields: dict[str, str] = {}
        index = 1
        while index < len(lines):
            key, _, value = lines[index].strip().partition(":")
            index += 1
            if value.strip() != "|":
                fields[key] = value.strip()
                continue
            block = []
            while index < len(lines) and (lines[index].startswith("      ") or not lines[index].strip()):
                block.append(lines[index][6:])
                index += 1
            fields[key] = "\n".join(block).rstrip("\n") + "\n"
        entries[lines[0].strip()] = fields
    return entries


def file_content(cloud_init: str, path: str) -> bytes:
    entry = write_files(cloud_init)[path]
    if entry.get("encoding") == "b64":
        return base64.b64decode(entry["content"])
    return entry["content"].encode()


def setup_script(cloud_init: str) -> str:
    return file_content(cloud_init, "/opt/mqtt-saas/setup-broker.sh").decode()


def gated_blocks(script: str) -> tuple[list[str], list[str]]:
    """(lines inside `if [ -n "$letsencrypt_email" ]` / the else of `if [ -z "$letsencrypt_email" ]`, the rest)."""
    inside, outside = [], []
    depth_indent: str | None = None
    for line in script.splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        if depth_indent is None and re.match(r'\s*if \[ -[nz] "\$letsencrypt_email" \]', line):
            depth_indent = indent
            inside.append(line)
            continue
        if depth_indent is not None:
            inside.append(line)
            if line == f"{depth_indent}fi":
                depth_indent = None
            continue
        outside.append(line)
    return inside, outside


def test_cloud_init_fits_azure_custom_data_in_both_modes() -> None:
    for params in (BASE_PARAMS, LE_PARAMS):
        size = len(rendered_cloud_init(**params).encode())
        assert size < CUSTOM_DATA_LIMIT, size


def test_generated_ca_mode_renders_nothing_of_lets_encrypt_into_action() -> None:
    # GIVEN the template's defaults (no letsEncryptEmail)
    assert main_bicep()["parameters"]["letsEncryptEmail"]["default"] == ""
    cloud_init = rendered_cloud_init(**BASE_PARAMS)
    script = setup_script(cloud_init)
    # THEN the setup script's switch is empty and every Let's Encrypt step sits behind it
    assert 'letsencrypt_email=""' in script
    inside, outside = gated_blocks(script)
    commands = [line for line in outside if not line.lstrip().startswith("#")]
    for word in ("certbot", "letsencrypt.sh", "letsencrypt.env", "ISRG", "MQTT_CTRL", "/etc/hosts", "timer"):
        assert not [line for line in commands if word in line], word
        assert [line for line in inside if word in line], word
    # AND devices still get the generated CA in the admin's home, the broker its contract conf, ufw no port 80
    assert (
        'install -m 0644 -o "$admin_user" -g "$admin_user" /etc/mosquitto/ca/ca.crt "/home/${admin_user}/ca.crt"'
        in "\n".join(inside)
    )
    assert file_content(cloud_init, "/opt/mqtt-saas/mosquitto.conf").decode() == render_vm_conf()
    assert not re.search(r"ufw allow 80\b", script)


def test_lets_encrypt_mode_puts_certbot_its_hooks_and_the_deploy_hook_on_the_vm() -> None:
    cloud_init = rendered_cloud_init(**LE_PARAMS)
    files = write_files(cloud_init)
    # certbot's deploy hook is the repository's rotate_broker_cert, byte for byte, executable
    assert file_content(cloud_init, "/usr/local/sbin/rotate_broker_cert") == ROTATE.read_bytes()
    assert files["/usr/local/sbin/rotate_broker_cert"]["permissions"] == '"0755"'
    assert file_content(cloud_init, "/opt/mqtt-saas/letsencrypt.sh") == LETSENCRYPT_SH.read_bytes()
    # its settings: the broker's name, the account e-mail, the key type (none of them a secret)
    env = file_content(cloud_init, "/etc/mqtt-saas/letsencrypt.env").decode()
    assert env == "LE_DOMAIN='mqtt.acme.test'\nLE_EMAIL='certs@acme.test'\nLE_KEY_TYPE='ecdsa'\n"
    # a retry until the first certificate; renewals are certbot.timer's, enabled by the setup script
    service = file_content(cloud_init, "/etc/systemd/system/mqtt-saas-letsencrypt.service").decode()
    assert "EnvironmentFile=/etc/mqtt-saas/letsencrypt.env" in service
    assert "ExecStart=/bin/bash /opt/mqtt-saas/letsencrypt.sh" in service
    timer = file_content(cloud_init, "/etc/systemd/system/mqtt-saas-letsencrypt.timer").decode()
    assert "OnUnitActiveSec=30min" in timer and "WantedBy=timers.target" in timer
    script = setup_script(cloud_init)
    assert 'letsencrypt_email="certs@acme.test"' in script
    assert "systemctl enable --now mqtt-saas-letsencrypt.timer" in script
    assert "systemctl enable --now certbot.timer" in script
    # after the broker and its clients are up, and never fatal (the broker keeps its temporary certificate)
    assert script.index("bash /opt/mqtt-saas/dynsec-bootstrap.sh") < script.index("bash /opt/mqtt-saas/letsencrypt.sh")
    assert re.search(r"bash /opt/mqtt-saas/letsencrypt\.sh\) \\\n\s+\|\| echo", script)
    # the temporary certificate: the generated CA's, for the same name, before Mosquitto starts
    assert 'openssl req -newkey rsa:2048 -nodes -subj "/CN=${fqdn}"' in script
    assert script.index("/etc/mosquitto/certs/server.key") < script.index("systemctl restart mosquitto")
    # devices without a CA store get Let's Encrypt's roots, never the temporary CA
    assert "cat /etc/ssl/certs/ISRG_Root_X1.pem /etc/ssl/certs/ISRG_Root_X2.pem" in script


def test_certbot_is_installed_and_run_standalone_with_hooks_that_close_port_80() -> None:
    text = LETSENCRYPT_SH.read_text()
    assert "apt-get install -y --no-install-recommends certbot" in text
    assert re.search(r"certbot certonly --standalone --non-interactive --agree-tos", text)
    assert '--pre-hook "$OPEN_80" --post-hook "$CLOSE_80" --deploy-hook "$DEPLOY_HOOK"' in text
    assert 'OPEN_80="ufw allow 80/tcp"' in text and 'CLOSE_80="ufw delete allow 80/tcp"' in text
    assert "trap '$CLOSE_80" in text
    assert 'DEPLOY_HOOK="${DEPLOY_HOOK:-/usr/local/sbin/rotate_broker_cert certbot-hook}"' in text
    # no other place opens 80: the VM's firewall rules and both scripts
    everything = "\n".join((setup_script(rendered_cloud_init(**LE_PARAMS)), text, ROTATE.read_text()))
    assert re.findall(r"ufw allow \d+/tcp", everything).count("ufw allow 80/tcp") == 1
    assert "ufw allow 80/tcp" not in setup_script(rendered_cloud_init(**LE_PARAMS))


def test_mosquitto_reads_the_files_the_deploy_hook_writes() -> None:
    conf = file_content(rendered_cloud_init(**LE_PARAMS), "/opt/mqtt-saas/mosquitto.conf").decode()
    assert f"certfile {VM_CERTFILE}\n" in conf and f"keyfile {VM_KEYFILE}\n" in conf
    cert_dir = re.search(r'CERT_DIR="\$\{CERT_DIR:-([^}]+)\}"', ROTATE.read_text())
    assert cert_dir is not None
    assert {VM_CERTFILE, VM_KEYFILE} == {f"{cert_dir[1]}/server.crt", f"{cert_dir[1]}/server.key"}
    assert f'CERT_DIR="${{CERT_DIR:-{cert_dir[1]}}}"' in LETSENCRYPT_SH.read_text()


@pytest.mark.parametrize("script", [LETSENCRYPT_SH, ROTATE], ids=lambda p: p.name)
def test_vm_scripts_are_valid_bash(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- templates -------------------------------------------------------------------------------------------------------


def test_port_80_opens_only_with_lets_encrypt_and_only_for_http01() -> None:
    network = module("network")
    rules = [
        (name, r["config"])
        for name, r in network["resources"].items()
        if r["type"] == "Microsoft.Network/networkSecurityGroups/securityRules"
    ]
    inline = network["resources"]["networkSecurityGroup"]["config"]["properties"]["securityRules"]
    assert not [r for r in inline if r["properties"]["destinationPortRange"] in ("80", "*")]
    port_80 = [
        (name, config) for name, config in rules if config["config"]["properties"]["destinationPortRange"] == "80"
    ]
    assert len(port_80) == 1
    _, config = port_80[0]
    assert config["condition"] == "enableLetsEncrypt"
    properties = config["config"]["properties"]
    # Let's Encrypt validates from addresses it does not publish: the Internet, TCP, inbound 80 only
    assert (properties["sourceAddressPrefix"], properties["protocol"], properties["direction"]) == (
        "Internet",
        "Tcp",
        "Inbound",
    )
    assert network["parameters"]["enableLetsEncrypt"]["default"] is False
    assert main_bicep()["modules"]["network"]["config"]["params"]["enableLetsEncrypt"] == "letsEncrypt"
    assert main_bicep()["variables"]["letsEncrypt"]["value"] == {
        "operator": {
            "type": "not",
            "operands": {
                "bool_value": {"function": {"type": "empty", "parameters": {"item_to_test": "letsEncryptEmail"}}}
            },
        }
    }
    skip = re.search(r"#checkov:skip=CKV_AZURE_160:(.+)", (MODULES / "network.bicep").read_text())
    assert skip is not None and "HTTP-01" in skip[1]


def test_the_app_gets_the_broker_name_and_the_system_ca_store_under_lets_encrypt() -> None:
    main = main_bicep()
    params = main["modules"]["functionApp"]["config"]["params"]
    assert params["mqttHost"] == "brokerHost"
    assert params["mqttCaFile"] == {
        "operator": {
            "type": "conditional",
            "operands": {
                "condition": "letsEncrypt",
                "true_value": "",
                "false_value": module("functionApp")["parameters"]["mqttCaFile"]["default"],
            },
        }
    }
    # the one host name: the custom one when given, else Azure's; the VM's certificate and the outputs use it too
    assert main["variables"]["brokerHost"]["value"]["operator"]["operands"]["condition"] == {
        "function": {"type": "empty", "parameters": {"item_to_test": "brokerCustomDnsName"}}
    }
    assert main["variables"]["brokerHost"]["value"]["operator"]["operands"]["false_value"] == "brokerCustomDnsName"
    assert main["modules"]["brokerVm"]["config"]["params"]["brokerFqdn"] == "brokerHost"
    assert main["outputs"]["brokerHost"]["value"] == "brokerHost"
    assert main["outputs"]["brokerCertificate"]["value"]["operator"]["operands"] == {
        "condition": "letsEncrypt",
        "true_value": "letsencrypt",
        "false_value": "generated-ca",
    }
    for name in ("letsEncryptEmail", "letsEncryptKeyType"):
        assert main["modules"]["brokerVm"]["config"]["params"][name] == name
    # and an empty MQTT_CA_FILE is the system store to the app (paho would try to open "")
    settings = settings_from(
        {"DATABASE_URL": "postgresql://x", "INGEST_DATABASE_URL": "postgresql://y", "MQTT_CA_FILE": ""}
    )
    assert settings.mqtt_ca_file is None


def test_azure_names_the_broker_unless_told_otherwise() -> None:
    main = main_bicep()
    label = main["modules"]["network"]["config"]["params"]["dnsLabel"]["operator"]["operands"]
    assert label["true_value"] == module("network")["parameters"]["dnsLabel"]["default"] == "${name}-${resourceToken}"
    assert main["parameters"]["brokerDnsLabel"]["default"] == ""
    assert main["parameters"]["brokerCustomDnsName"]["default"] == ""
    assert main["parameters"]["letsEncryptKeyType"]["default"] == "ecdsa"


# -- infra/letsencrypt.sh, run here ----------------------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Vm:
    """A temporary stand-in for the VM's paths, with stub certbot/ufw/apt-get logging every call and keeping ufw's
    open ports, Mosquitto's temporary RSA pair from a generated CA, and an ECDSA "Let's Encrypt" lineage."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = root / "etc/mosquitto/certs"
        self.live = root / "etc/letsencrypt/live"
        self.status = root / "var/lib/mqtt-saas/letsencrypt-status"
        self.calls = root / "calls.log"
        self.ufw_open = root / "ufw-open"
        self.bin = root / "bin"
        for folder in (self.certs, self.live, self.bin, root / "issued"):
            folder.mkdir(parents=True)
        self.ufw_open.write_text("")
        self.group = "mosquitto" if os.geteuid() == 0 else grp.getgrgid(os.getgid()).gr_name
        ca = root / "ca"
        ca.mkdir()
        (root / "ext").write_text("subjectAltName=DNS:mqtt.acme.test\nextendedKeyUsage=serverAuth\n")
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=test CA",
            "-keyout",
            str(ca / "ca.key"),
            "-out",
            str(ca / "ca.crt"),
        )
        for key, name, out in (("rsa:2048", "temporary", self.certs), ("ec", "issued", root / "issued")):
            newkey = (
                ["-newkey", "rsa:2048"]
                if key.startswith("rsa")
                else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
            )
            keyfile = out / ("server.key" if name == "temporary" else "privkey.pem")
            certfile = out / ("server.crt" if name == "temporary" else "fullchain.pem")
            openssl(
                "req",
                *newkey,
                "-nodes",
                "-subj",
                "/CN=mqtt.acme.test",
                "-keyout",
                str(keyfile),
                "-out",
                str(root / f"{name}.csr"),
            )
            openssl(
                "x509",
                "-req",
                "-in",
                str(root / f"{name}.csr"),
                "-CA",
                str(ca / "ca.crt"),
                "-CAkey",
                str(ca / "ca.key"),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                str(root / "ext"),
                "-out",
                str(certfile),
            )
        # a chain, as Let's Encrypt's fullchain.pem: the leaf, then the issuer
        with (root / "issued" / "fullchain.pem").open("a") as chain:
            chain.write((ca / "ca.crt").read_text())
        self.temporary = (self.certs / "server.crt").read_bytes()
        hook = root / "sbin" / "rotate_broker_cert"
        hook.parent.mkdir()
        hook.write_bytes(ROTATE.read_bytes())
        hook.chmod(0o755)
        self.hook = f"{hook} certbot-hook"
        self.stub(
            "ufw",
            f"""
            echo "ufw $*" >>{self.calls}
            case "$*" in
                "allow 80/tcp") echo 80 >>{self.ufw_open} ;;
                "delete allow 80/tcp") sed -i '/^80$/d' {self.ufw_open} ;;
            esac""",
        )
        self.stub("apt-get", f'echo "apt-get $*" >>{self.calls}; exit 100')
        # certbot as certonly behaves: pre hook, then (issued) the lineage and the deploy hook, then the post hook
        # whatever happened; CERTBOT_STUB=fail: no certificate; crash: dies after the pre hook.
        self.stub(
            "certbot",
            f"""
            echo "certbot $*" >>{self.calls}
            while [ $# -gt 0 ]; do
                case "$1" in
                    --pre-hook) pre="$2"; shift ;; --post-hook) post="$2"; shift ;;
                    --deploy-hook) deploy="$2"; shift ;; --cert-name) name="$2"; shift ;;
                esac
                shift
            done
            sh -c "$pre"
            case "${{CERTBOT_STUB:-ok}}" in
                crash) exit 1 ;;
                fail) sh -c "$post"; exit 1 ;;
            esac
            mkdir -p {self.live}/"$name"
            cp {root}/issued/fullchain.pem {root}/issued/privkey.pem {self.live}/"$name"/
            RENEWED_LINEAGE={self.live}/"$name" sh -c "$deploy"; rc=$?
            sh -c "$post"
            exit $rc""",
        )

    def stub(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(
            "#!/bin/bash\n" + "\n".join(line.removeprefix("            ") for line in body.splitlines()) + "\n"
        )
        path.chmod(0o755)

    def run(self, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "LE_DOMAIN": "mqtt.acme.test",
            "LE_EMAIL": "certs@acme.test",
            "STATUS_FILE": str(self.status),
            "LIVE_DIR": str(self.live),
            "CERT_DIR": str(self.certs),
            "DEPLOY_HOOK": self.hook,
            "CERT_GROUP": self.group,
            "RELOAD": f"touch {self.root}/reloaded",
            "RESTART": f"touch {self.root}/restarted",
            **env,
        }
        return subprocess.run(
            ["bash", str(LETSENCRYPT_SH)], env=environment, capture_output=True, text=True, timeout=60
        )

    def log(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def vm(tmp_path: Path) -> Vm:
    return Vm(tmp_path)


def test_first_certificate_is_installed_for_mosquitto_and_port_80_closes_again(vm: Vm) -> None:
    # GIVEN Mosquitto serving its temporary RSA certificate and no Let's Encrypt certificate yet
    # WHEN the script runs and certbot gets one (ECDSA, the default key type)
    done = vm.run()
    # THEN certbot ran standalone for the name, with the account e-mail and the hooks it keeps for renewals
    assert done.returncode == 0, done.stdout + done.stderr
    certbot = [line for line in vm.log() if line.startswith("certbot ")]
    assert len(certbot) == 1
    for part in (
        "certonly --standalone --non-interactive --agree-tos",
        "--email certs@acme.test",
        "--domain mqtt.acme.test",
        "--cert-name mqtt.acme.test",
        "--key-type ecdsa",
        "--pre-hook ufw allow 80/tcp",
        "--post-hook ufw delete allow 80/tcp",
        f"--deploy-hook {vm.hook}",
    ):
        assert part in certbot[0], part
    assert "--staging" not in certbot[0]
    # AND port 80 was open only around certbot's run, and is closed now
    ufw = [line for line in vm.log() if line.startswith("ufw ")]
    assert ufw[0] == "ufw allow 80/tcp" and ufw[-1] == "ufw delete allow 80/tcp"
    assert vm.ufw_open.read_text() == ""
    # AND Mosquitto's files are the lineage's, root-owned, group-readable by Mosquitto only for the key
    issued = vm.live / "mqtt.acme.test"
    assert (vm.certs / "server.crt").read_bytes() == (issued / "fullchain.pem").read_bytes()
    assert (vm.certs / "server.key").read_bytes() == (issued / "privkey.pem").read_bytes()
    key, crt = (vm.certs / "server.key").stat(), (vm.certs / "server.crt").stat()
    assert stat.S_IMODE(key.st_mode) == 0o640 and stat.S_IMODE(crt.st_mode) == 0o644
    assert grp.getgrgid(key.st_gid).gr_name == vm.group == grp.getgrgid(crt.st_gid).gr_name
    # AND the temporary pair is kept for a rollback, and Mosquitto restarted (RSA to ECDSA: a reload would keep both)
    assert (vm.certs / "server.crt.prev").read_bytes() == vm.temporary
    assert (vm.root / "restarted").exists() and not (vm.root / "reloaded").exists()
    # AND the status line says so
    assert re.fullmatch(
        r"ok \S+Z: certificate for mqtt\.acme\.test served by Mosquitto, valid until .+; "
        r"certbot\.timer renews it\n",
        vm.status.read_text(),
    )
    assert stat.S_IMODE(vm.status.stat().st_mode) == 0o644
    assert not [line for line in vm.log() if line.startswith("apt-get")]


def test_a_later_run_leaves_renewals_to_certbot_and_touches_nothing(vm: Vm) -> None:
    assert vm.run().returncode == 0
    before = vm.log()
    (vm.root / "restarted").unlink()
    # WHEN the retry timer runs the script again
    done = vm.run()
    # THEN it only confirms: no certbot, no firewall change, no restart
    assert done.returncode == 0, done.stderr
    assert vm.log() == before
    assert not (vm.root / "restarted").exists()
    assert vm.status.read_text().startswith("ok ")


def test_a_certificate_whose_deploy_hook_failed_is_installed_by_the_next_run(vm: Vm) -> None:
    # GIVEN a lineage certbot got, while Mosquitto still serves the temporary certificate (the hook failed)
    lineage = vm.live / "mqtt.acme.test"
    lineage.mkdir()
    for name in ("fullchain.pem", "privkey.pem"):
        (lineage / name).write_bytes((vm.root / "issued" / name).read_bytes())
    # WHEN the script runs
    done = vm.run()
    # THEN it installs it without asking Let's Encrypt again
    assert done.returncode == 0, done.stderr
    assert not [line for line in vm.log() if line.startswith("certbot")]
    assert (vm.certs / "server.crt").read_bytes() == (lineage / "fullchain.pem").read_bytes()


@pytest.mark.parametrize("how", ["fail", "crash"])
def test_a_failure_keeps_the_temporary_certificate_reports_it_and_closes_port_80(vm: Vm, how: str) -> None:
    # GIVEN Let's Encrypt refusing (fail), or certbot dying before its post hook (crash)
    done = vm.run(CERTBOT_STUB=how)
    # THEN the script fails loudly, Mosquitto keeps serving the temporary certificate, untouched
    assert done.returncode == 1
    assert "LET'S ENCRYPT FAILED: certbot could not get a certificate for mqtt.acme.test" in done.stderr
    assert (vm.certs / "server.crt").read_bytes() == vm.temporary
    assert not (vm.root / "restarted").exists() and not (vm.root / "reloaded").exists()
    # AND port 80 is closed (by certbot's post hook, or by the script's own trap when certbot died)
    assert vm.ufw_open.read_text() == ""
    assert vm.log()[-1] == "ufw delete allow 80/tcp"
    # AND the status line scripts/deploy prints says what happened and where to look
    assert re.match(
        r"failed \S+Z: certbot could not get a certificate for mqtt\.acme\.test .*"
        r"/var/log/letsencrypt/letsencrypt\.log",
        vm.status.read_text(),
    )


def test_rsa_key_type_and_the_staging_server_are_passed_on(vm: Vm) -> None:
    done = vm.run(LE_KEY_TYPE="rsa", LE_STAGING="true")
    assert done.returncode == 0, done.stderr
    certbot = next(line for line in vm.log() if line.startswith("certbot "))
    assert "--key-type rsa" in certbot and "--staging" in certbot


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"LE_DOMAIN": ""}, "LE_DOMAIN is not set"),
        ({"LE_EMAIL": ""}, "LE_EMAIL is not set"),
        ({"LE_KEY_TYPE": "dsa"}, "LE_KEY_TYPE must be ecdsa or rsa"),
        (
            {"DEPLOY_HOOK": "/nonexistent/rotate_broker_cert certbot-hook"},
            "deploy hook /nonexistent/rotate_broker_cert",
        ),
    ],
)
def test_missing_settings_are_reported_before_anything_runs(vm: Vm, env: dict[str, str], reason: str) -> None:
    done = vm.run(**env)
    assert done.returncode == 1
    assert reason in vm.status.read_text() and reason in done.stderr
    assert vm.log() == []


# -- scripts/deploy --------------------------------------------------------------------------------------------------

SECRETS = {
    "DATABASE_URL": "postgresql://mqtt_saas_app:app-secret-1234@db.example.net:5432/mqtt_saas",
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


def deploy(
    tmp_path: Path, tools: tuple[str, ...], *extra: str, **parameters: object
) -> subprocess.CompletedProcess[str]:
    document = json.loads((INFRA / "main.parameters.json").read_text())
    values = document["parameters"]
    values["adminSourceCidr"] = {"value": "198.51.100.23/32"}
    values["alertEmail"] = {"value": "oncall@acme.test"}
    values.update({name: {"value": value} for name, value in parameters.items()})
    (tmp_path / "params.json").write_text(json.dumps(document))
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for tool in tools:
        (folder / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>"{tmp_path}/calls.log"\nexit 1\n')
        (folder / tool).chmod(0o755)
    return subprocess.run(
        [sys.executable, str(DEPLOY), "-g", "rg-test", "-p", str(tmp_path / "params.json"), *extra],
        env={"PATH": str(folder), "HOME": str(tmp_path), **SECRETS},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({"brokerCustomDnsName": "mqtt.acme.test"}, "parameter brokerCustomDnsName needs letsEncryptEmail"),
        ({"letsEncryptEmail": "certs-at-acme.test"}, "parameter letsEncryptEmail is not an e-mail address"),
        (
            {"letsEncryptEmail": "certs@acme.test", "brokerCustomDnsName": "MQTT.acme.test"},
            "parameter brokerCustomDnsName is not a lower-case DNS name",
        ),
        ({"brokerDnsLabel": "9broker"}, "parameter brokerDnsLabel must be 3-63 lower-case letters"),
        (
            {"letsEncryptEmail": "certs@acme.test", "letsEncryptKeyType": "dsa"},
            "parameter letsEncryptKeyType must be ecdsa or rsa",
        ),
        ({"letsEncryptEmail": "certs@example.com"}, "parameter letsEncryptEmail still holds the example value"),
    ],
)
def test_deploy_refuses_lets_encrypt_parameters_that_cannot_work(
    tmp_path: Path, parameters: dict[str, str], problem: str
) -> None:
    done = deploy(tmp_path, ("az", "func", "ssh", "scp"), "--dry-run", **parameters)
    assert done.returncode == 2, done.stdout + done.stderr
    assert problem in done.stderr
    assert not (tmp_path / "calls.log").exists()


def test_deploy_dry_run_with_lets_encrypt_copies_no_ca_and_checks_the_public_certificate(tmp_path: Path) -> None:
    # GIVEN Let's Encrypt for a name of one's own, and no scp on PATH (nothing to copy)
    done = deploy(
        tmp_path,
        ("az", "func", "ssh"),
        "--dry-run",
        letsEncryptEmail="certs@acme.test",
        brokerCustomDnsName="mqtt.acme.test",
    )
    # THEN the plan: the certificate's source, the VM's status line, the system CA store everywhere, no CA anywhere
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "broker certificate: Let's Encrypt for mqtt.acme.test (ecdsa, account certs@acme.test)" in out
    assert "[4/9] broker certificate: wait for cloud-init, then Let's Encrypt's on 8883" in out
    assert "cloud-init status --wait" in out and "cat /var/lib/mqtt-saas/letsencrypt-status" in out
    assert "verify the certificate mqtt.acme.test:8883 presents with the system CA store" in out
    assert "MQTT_CA_FILE=<system CA store>" in out
    assert "no CA (Let's Encrypt: the system CA store)" in out
    assert "(broker verified with the system CA store)" in out
    assert "scp" not in out and "broker-ca.crt" not in out
    # the one call: the read-only look-up of an existing broker VM
    assert [line.split(" --")[0] for line in (tmp_path / "calls.log").read_text().splitlines()] == ["az vm list"]


def test_deploy_dry_run_without_lets_encrypt_is_the_generated_ca_plan(tmp_path: Path) -> None:
    done = deploy(tmp_path, ("az", "func", "ssh", "scp"), "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broker certificate: from a CA generated on the VM (no letsEncryptEmail)" in done.stdout
    assert "[4/9] broker CA: wait for cloud-init, copy ca.crt into the app package" in done.stdout
    assert re.search(r"\$ scp .*:ca\.crt'? .*certs/broker-ca\.crt", done.stdout)
    assert "letsencrypt-status" not in done.stdout and "system CA store" not in done.stdout


def load_deploy() -> Any:
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("deploy_script_le", str(DEPLOY))
    spec = importlib.util.spec_from_loader("deploy_script_le", loader)
    assert spec is not None
    deploy_module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_script_le"] = deploy_module
    try:
        loader.exec_module(deploy_module)
    finally:
        del sys.modules["deploy_script_le"]
    return deploy_module


def test_the_package_for_a_lets_encrypt_broker_carries_no_ca(tmp_path: Path) -> None:
    load_deploy().stage_package(tmp_path / "package", None)
    assert not (tmp_path / "package" / "certs").exists()
    assert (tmp_path / "package" / "function_app.py").exists()


def test_deploy_stops_with_a_clear_line_when_the_broker_certificate_is_not_publicly_trusted(
    tmp_path: Path, mosquitto_broker: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a broker serving a certificate of a private CA (as the VM's temporary one), and the VM's status line
    deploy_module = load_deploy()
    folder = tmp_path / "bin"
    folder.mkdir()
    status = "failed 2026-11-24T10:00:00Z: certbot could not get a certificate for mqtt.acme.test"
    (folder / "ssh").write_text(f'#!/bin/sh\ncase "$*" in *letsencrypt-status*) echo "{status}";; esac\n')
    (folder / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    plan = deploy_module.Plan("rg", None, tmp_path / "p.json", {"letsEncryptEmail": "certs@acme.test"}, {}, False)
    plan.outputs = {"brokerHost": mosquitto_broker.host, "brokerPort": mosquitto_broker.port}
    # WHEN step 4 checks it with the system CA store
    with pytest.raises(SystemExit) as stopped:
        deploy_module.fetch_broker_ca(plan)
    # THEN deploy stops there, saying what the broker presents and what Let's Encrypt on the VM said
    message = str(stopped.value)
    assert (
        f"{mosquitto_broker.host}:{mosquitto_broker.port} does not present a certificate the system CA store "
        "trusts" in message
    )
    assert "certificate verify failed" in message
    assert f"Let's Encrypt on the VM says: {status}" in message
    assert f"Let's Encrypt on the VM: {status}" in capsys.readouterr().out
    # AND the same check passes when the broker's issuer is trusted (here: its CA standing in for the system store)
    summary = deploy_module.verify_broker_certificate(
        mosquitto_broker.host, mosquitto_broker.port, cafile=str(mosquitto_broker.ca_file)
    )
    assert summary.startswith(f"{mosquitto_broker.host}:{mosquitto_broker.port} presents a certificate for its name")
    with pytest.raises(ssl.SSLCertVerificationError):
        deploy_module.verify_broker_certificate(mosquitto_broker.host, mosquitto_broker.port)


@pytest.fixture
def empty_database(postgres_server: Any) -> Any:
    import uuid

    import psycopg

    name = f"deploy_le_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with psycopg.connect(postgres_server.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_deploy_with_lets_encrypt_runs_its_steps_against_real_services_with_the_system_store(
    tmp_path: Path, postgres_server: Any, mosquitto_broker: Any, role_passwords: dict[str, str], empty_database: str
) -> None:
    # GIVEN a deployment with letsEncryptEmail, Azure's tools standing in, and a "system CA store" that trusts the
    # test broker's issuer (SSL_CERT_FILE: what Let's Encrypt's root is to a real one)
    from shared.ingest.drain import drop_session

    where = f"127.0.0.1:{postgres_server.port}/{empty_database}"
    env = {
        "DATABASE_URL": f"postgresql://mqtt_saas_app:{role_passwords['mqtt_saas_app']}@{where}",
        "INGEST_DATABASE_URL": f"postgresql://mqtt_saas_ingest:{role_passwords['mqtt_saas_ingest']}@{where}",
        "MAINTENANCE_DATABASE_URL": f"postgresql://mqtt_saas_maintenance:{role_passwords['mqtt_saas_maintenance']}@{where}",
        "ADMIN_DATABASE_URL": postgres_server.superuser_dsn(empty_database),
        "MQTT_INGEST_PASSWORD": mosquitto_broker.ingest.password,
        "MQTT_PROVISIONER_PASSWORD": mosquitto_broker.provisioner.password,
        "MQTT_COMMANDER_PASSWORD": "commander-for-the-le-test",
        "AUTH_JWT_SECRET": "e" * 64,
        "ADMIN_SSH_PUBLIC_KEY": SECRETS["ADMIN_SSH_PUBLIC_KEY"],
    }
    tools = tmp_path / "bin"
    tools.mkdir()
    log = tmp_path / "calls.log"
    outputs = {
        "brokerHost": mosquitto_broker.host,
        "brokerPort": mosquitto_broker.port,
        "functionAppName": "func-test",
        "functionAppUrl": "https://func-test.example.net",
        "keyVaultName": "kv-test",
    }
    (tools / "outputs.json").write_text(json.dumps({k: {"type": "String", "value": v} for k, v in outputs.items()}))
    status = "ok 2026-11-24T10:00:00Z: certificate for mqtt.acme.test served by Mosquitto, valid until Feb 22 2027"
    for name, body in {
        "az": f'echo "az $*" >>{log}\ncase "$*" in *"deployment group create"*) cat {tools}/outputs.json;; esac',
        "ssh": f'echo "ssh $*" >>{log}\ncase "$*" in *letsencrypt-status*) echo "{status}";; esac',
        "scp": f'echo "scp $*" >>{log}\nexit 1',
        "func": f'echo "func $*" >>{log}\nexit 1',
    }.items():
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    document = json.loads((INFRA / "main.parameters.json").read_text())
    document["parameters"].update(
        {
            "adminSourceCidr": {"value": "198.51.100.23/32"},
            "alertEmail": {"value": "oncall@acme.test"},
            "letsEncryptEmail": {"value": "certs@acme.test"},
        }
    )
    (tmp_path / "params.json").write_text(json.dumps(document))
    ca_copy = tmp_path / "certs" / "broker-ca.crt"
    settings = settings_from(
        {
            **env,
            "MQTT_HOST": mosquitto_broker.host,
            "MQTT_PORT": str(mosquitto_broker.port),
            "MQTT_CA_FILE": str(mosquitto_broker.ca_file),
        }
    )
    try:
        # WHEN deploy runs (publish and smoke need Azure)
        done = subprocess.run(
            [
                sys.executable,
                str(DEPLOY),
                "-g",
                "rg-test",
                "-p",
                str(tmp_path / "params.json"),
                "--ca-file",
                str(ca_copy),
                "--skip-publish",
                "--skip-smoke",
            ],
            env={
                "PATH": f"{tools}:/usr/bin:/bin",
                "HOME": str(tmp_path),
                "SSL_CERT_FILE": str(mosquitto_broker.ca_file),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        # THEN step 4 printed the VM's status line and verified the broker with the system store, copying no CA;
        # the drain's session was made the same way (no MQTT_CA_FILE), and the deployment completed
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"Let's Encrypt on the VM: {status}" in done.stdout
        assert f"{mosquitto_broker.host}:{mosquitto_broker.port} presents a certificate for its name" in done.stdout
        assert "MQTT_CA_FILE" not in done.stdout
        assert not ca_copy.exists()
        calls = log.read_text()
        assert "scp" not in calls and "cloud-init status --wait" in calls
        assert "the drain's session exists" in done.stdout
        assert done.stdout.splitlines()[-1] == "deployed"
    finally:
        drop_session(settings)
