"""Renders the broker VM's cloud-init as infra/modules/brokerVm.bicep does, and the script that applies it to a VM that
already exists (Azure never changes an existing VM's customData, and cloud-init runs it on the first boot only).

    .venv/bin/python infra/render_cloud_init.py --broker-host HOST --key-vault-name KV [--parameters FILE]
    .venv/bin/python infra/render_cloud_init.py --broker-host HOST --key-vault-name KV [--parameters FILE] --reapply \
        >reapply.sh
    az vm run-command invoke -g RG -n <brokerVmName> --command-id RunShellScript --scripts @reapply.sh

HOST and KV are the deployment's outputs brokerHost and keyVaultName; FILE is the parameters file deploy used
(enableWebsockets, adminUsername, letsEncryptEmail, letsEncryptKeyType; main.bicep's defaults otherwise).

The reapply script (run as root) does what cloud-init did at first boot, with today's files: installs the packages
cloud-init lists, writes every write_files entry (each through a temporary file and a rename), and runs the runcmd,
i.e. /opt/mqtt-saas/setup-broker.sh, which is safe to re-run: the CA, the server key and the dynamic-security file
are created only when missing, existing broker clients keep their passwords, the roles get the contract's ACLs.
It restarts Mosquitto (devices reconnect; nothing accepted is lost). The evaluation is the Bicep's own: pycep reads
brokerVm.bicep's replace() chain, so a new placeholder there shows up here without an edit.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from pycep import BicepParser

INFRA = Path(__file__).resolve().parent
MODULES = INFRA / "modules"
# environment().suffixes.keyvaultDns in Azure's public cloud.
KEY_VAULT_DNS = ".vault.azure.net"


def evaluate(expression: Any, variables: dict[str, Any], params: dict[str, Any]) -> Any:
    """The Bicep forms brokerVm.bicep builds cloud-init with: loadTextContent, loadFileAsBase64, replace, a?b:c. pycep
    writes a reference and a string literal alike, so a bare string is a variable or parameter when one has that
    name, else itself."""
    if isinstance(expression, str):
        if expression in variables:
            return evaluate(variables[expression]["value"], variables, params)
        return params.get(expression, expression)
    if isinstance(expression, bool):
        return expression
    if "function" in expression:
        function = expression["function"]
        arguments = function["parameters"]
        if function["type"] == "load_text_content":
            return (MODULES / arguments["file_path"]).resolve().read_text()
        if function["type"] == "load_file_as_base64":
            return base64.b64encode((MODULES / arguments["file_path"]).resolve().read_bytes()).decode()
        if function["type"] == "replace":
            original, old, new = (
                evaluate(arguments[k], variables, params) for k in ("original_string", "old_string", "new_string")
            )
            return original.replace(old, new)
    if expression.get("operator", {}).get("type") == "conditional":
        operands = expression["operator"]["operands"]
        chosen = "true_value" if evaluate(operands["condition"], variables, params) else "false_value"
        return evaluate(operands[chosen], variables, params)
    raise ValueError(f"brokerVm.bicep builds cloud-init with a form not evaluated here: {expression}")


@functools.cache
def _variables() -> dict[str, Any]:
    # Parsing the template is most of a render's time; it does not change while a process runs.
    variables: dict[str, Any] = BicepParser().parse(file_path=MODULES / "brokerVm.bicep")["variables"]
    return variables


def render(
    broker_host: str,
    key_vault_uri: str,
    enable_websockets: bool = False,
    admin_username: str = "azureuser",
    lets_encrypt_email: str = "",
    lets_encrypt_key_type: str = "ecdsa",
) -> str:
    variables = _variables()
    params = {
        "brokerFqdn": broker_host,
        "keyVaultUri": key_vault_uri,
        "enableWebsockets": enable_websockets,
        "adminUsername": admin_username,
        "letsEncryptEmail": lets_encrypt_email,
        "letsEncryptKeyType": lets_encrypt_key_type,
    }
    text: str = evaluate("cloudInit", variables, params)
    return text


def reapply_script(cloud_init: str) -> str:
    """A bash script doing what cloud-init did: packages, write_files, runcmd. ROOT (empty on the VM) prefixes every
    path it writes, for a look in a scratch folder."""
    config = yaml.safe_load(cloud_init)
    lines = [
        "#!/bin/bash",
        "# Rendered by infra/render_cloud_init.py --reapply: the broker VM's cloud-init, applied to a VM that",
        "# exists (as root: az vm run-command invoke ... --scripts @this-file).",
        "set -euo pipefail",
        'ROOT="${ROOT:-}"',
    ]
    if config.get("packages"):
        packages = " ".join(shlex.quote(p) for p in config["packages"])
        lines += [
            "export DEBIAN_FRONTEND=noninteractive",
            "apt-get update -q" if config.get("package_update") else ":",
            f"apt-get install -y -q {packages}",
        ]
    for entry in config.get("write_files", []):
        content = entry.get("content", "")
        data = base64.b64decode(content) if entry.get("encoding") == "b64" else content.encode()
        path = shlex.quote(entry["path"])
        encoded = base64.encodebytes(data).decode().rstrip("\n")
        lines += [
            f'install -d "$ROOT"{shlex.quote(str(Path(entry["path"]).parent))}',
            f"base64 -d >\"$ROOT\"{path}.new <<'B64'",
            encoded,
            "B64",
            f'chown {shlex.quote(entry.get("owner", "root:root"))} "$ROOT"{path}.new',
            f'chmod {shlex.quote(str(entry.get("permissions", "0644")))} "$ROOT"{path}.new',
            f'mv -f "$ROOT"{path}.new "$ROOT"{path}',
        ]
    lines.append("systemctl daemon-reload")
    for command in config.get("runcmd", []):
        words = command if isinstance(command, list) else ["sh", "-c", command]
        lines.append(" ".join(shlex.quote(str(word)) for word in words))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker-host", required=True, help="deployment output brokerHost")
    parser.add_argument("--key-vault-name", required=True, help="deployment output keyVaultName")
    parser.add_argument("--parameters", type=Path, help="the parameters file deploy used")
    parser.add_argument("--reapply", action="store_true", help="print the script that applies it to an existing VM")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.parameters:
        document = json.loads(args.parameters.read_text())
        values = {k: v.get("value") for k, v in document.get("parameters", {}).items() if isinstance(v, dict)}
    cloud_init = render(
        args.broker_host,
        f"https://{args.key_vault_name}{KEY_VAULT_DNS}/",
        enable_websockets=bool(values.get("enableWebsockets", False)),
        admin_username=values.get("adminUsername") or "azureuser",
        lets_encrypt_email=values.get("letsEncryptEmail") or "",
        lets_encrypt_key_type=values.get("letsEncryptKeyType") or "ecdsa",
    )
    sys.stdout.write(reapply_script(cloud_init) if args.reapply else cloud_init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
