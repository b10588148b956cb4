"""Renders the broker VM's mosquitto.conf from shared/broker_contract.py into infra/generated/mosquitto.conf.

Bicep cannot run Python, so the file is generated here and committed; modules/brokerVm.bicep loads it into the
VM's cloud-init. tests/infra/test_bicep.py fails when the committed file differs from what the contract renders now,
so a change to BROKER_SETTINGS needs `.venv/bin/python infra/render_broker_conf.py` and a commit of the result.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.broker_contract import render_mosquitto_conf  # noqa: E402

GENERATED_CONF = ROOT / "infra" / "generated" / "mosquitto.conf"

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


def main() -> int:
    GENERATED_CONF.parent.mkdir(parents=True, exist_ok=True)
    GENERATED_CONF.write_bytes(render_vm_conf().encode("utf-8"))
    print(f"wrote {GENERATED_CONF.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
