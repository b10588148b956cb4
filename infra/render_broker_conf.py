"""Renders what the broker VM takes from shared/broker/contract.py into infra/generated/:
mosquitto.conf (BROKER_SETTINGS with the VM's paths) and dynsec-bootstrap.sh (default ACL access, the
provisioner's, the drain's and the API commander's roles and clients, as mosquitto_ctrl commands).

Bicep cannot run Python, so the files are generated here and committed; modules/brokerVm.bicep loads them into the
VM's cloud-init. tests/infra/test_bicep.py fails when a committed file differs from what the contract renders now,
so a change to the contract needs `.venv/bin/python infra/render_broker_conf.py` and a commit of the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import json  # noqa: E402
import shlex  # noqa: E402

from shared.broker.contract import (  # noqa: E402
    COMMANDER_ROLE,
    COMMANDER_USERNAME,
    INGEST_CLIENT_ID,
    INGEST_ROLE,
    INGEST_USERNAME,
    PROVISIONER_ROLE,
    PROVISIONER_USERNAME,
    SERVICE_ROLES,
    policy_commands,
    render_mosquitto_conf,
)

GENERATED_CONF = ROOT / "infra" / "generated" / "mosquitto.conf"
GENERATED_DYNSEC = ROOT / "infra" / "generated" / "dynsec-bootstrap.sh"

# Where things live on the VM (Ubuntu 24.04, apt's mosquitto 2.0.18). cloud-init writes the certificates and
# initialises dynamic security at these paths; the rendered file replaces /etc/mosquitto/mosquitto.conf.
VM_LISTENER_HOST = "0.0.0.0"
VM_LISTENER_PORT = 8883
VM_CERTFILE = "/etc/mosquitto/certs/server.crt"
VM_KEYFILE = "/etc/mosquitto/certs/server.key"
VM_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
VM_DYNSEC_FILE = "/var/lib/mosquitto/dynamic-security.json"
VM_PERSISTENCE_DIR = "/var/lib/mosquitto"
VM_LOG_DEST = "file /var/log/mosquitto/mosquitto.log"


def render_vm_conf() -> str:
    return render_mosquitto_conf(
        listener_host=VM_LISTENER_HOST,
        listener_port=VM_LISTENER_PORT,
        certfile=VM_CERTFILE,
        keyfile=VM_KEYFILE,
        plugin=VM_PLUGIN,
        dynsec_file=VM_DYNSEC_FILE,
        persistence_dir=VM_PERSISTENCE_DIR,
        log_dest=VM_LOG_DEST,
    )


def render_dynsec_bootstrap() -> str:
    """A bash script run on the VM after the broker starts. It expects MQTT_ADMIN_PASSWORD,
    MQTT_INGEST_PASSWORD and MQTT_PROVISIONER_PASSWORD in the environment, and MQTT_COMMANDER_PASSWORD if the
    API's commander client is to be created (optional, so a VM whose cloud-init predates it still boots). Creating
    what exists fails and is tolerated (|| true), so a re-run creates what is missing and resets default access
    and the roles' ACLs to the contract; it never changes a password."""
    lines = [
        "#!/usr/bin/env bash",
        "# Rendered from shared/broker/contract.py by infra/render_broker_conf.py; edits are lost.",
        "set -euo pipefail",
        "# The VM's broker unless told otherwise (the tests point it at their own).",
        'ctrl() { mosquitto_ctrl -h "${MQTT_CTRL_HOST:-localhost}" -p "${MQTT_CTRL_PORT:-8883}" '
        '--cafile "${MQTT_CTRL_CAFILE:-/etc/mosquitto/certs/ca.crt}" -u "${MQTT_ADMIN_USERNAME:-admin}" '
        '-P "$MQTT_ADMIN_PASSWORD" dynsec "$@"; }',
        *(f"ctrl createRole {role} || true" for role in SERVICE_ROLES),
        # Default access and the roles' whole ACL lists (modifyRole replaces them, so a re-run after a contract
        # change also drops what the contract dropped), as JSON to the control topic, the way shared/broker/dynsec.py
        # sends them: mosquitto_ctrl's setDefaultACLAccess changes nothing on 2.0.11 (measured) though it exits 0.
        'mosquitto_pub -h "${MQTT_CTRL_HOST:-localhost}" -p "${MQTT_CTRL_PORT:-8883}" '
        '--cafile "${MQTT_CTRL_CAFILE:-/etc/mosquitto/certs/ca.crt}" -u "${MQTT_ADMIN_USERNAME:-admin}" '
        "-P \"$MQTT_ADMIN_PASSWORD\" -q 1 -t '$CONTROL/dynamic-security/v1' -m "
        + shlex.quote(json.dumps({"commands": policy_commands()})),
        f'ctrl createClient {PROVISIONER_USERNAME} -p "$MQTT_PROVISIONER_PASSWORD" || true',
        f"ctrl addClientRole {PROVISIONER_USERNAME} {PROVISIONER_ROLE} 0 || true",
        f'ctrl createClient {INGEST_USERNAME} -c {INGEST_CLIENT_ID} -p "$MQTT_INGEST_PASSWORD" || true',
        f"ctrl addClientRole {INGEST_USERNAME} {INGEST_ROLE} 0 || true",
        # The API's commands-only client, not bound to a client id (each app instance connects with its own).
        # Optional until the deployment passes its password: without the client, sending a command answers 503.
        'if [ -n "${MQTT_COMMANDER_PASSWORD:-}" ]; then',
        f'  ctrl createClient {COMMANDER_USERNAME} -p "$MQTT_COMMANDER_PASSWORD" || true',
        f"  ctrl addClientRole {COMMANDER_USERNAME} {COMMANDER_ROLE} 0 || true",
        "fi",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    GENERATED_CONF.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((GENERATED_CONF, render_vm_conf()), (GENERATED_DYNSEC, render_dynsec_bootstrap())):
        path.write_bytes(text.encode("utf-8"))
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
