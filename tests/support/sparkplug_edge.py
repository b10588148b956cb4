"""A Sparkplug B edge node built with a third-party library (pysparkplug), for the tests.

    .venv/sparkplug/bin/python tests/support/sparkplug_edge.py < job.json

Runs in .venv/sparkplug (pysparkplug pins paho-mqtt<2). The job (stdin, so the password stays out of
ps) names the broker, the credential and the Sparkplug ids; the node connects over TLS (its NBIRTH,
with aliases), publishes NDATA, registers a device (DBIRTH), publishes DDATA, deregisters it (DDEATH)
and dies (its socket closed without DISCONNECT: the broker publishes the NDEATH the node registered as
its will, whose bdSeq matches its NBIRTH), printing one line per step. With "wait_rebirth" it stays connected until an
NCMD Node Control/Rebirth arrives, and prints REBIRTH.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from pysparkplug import (
    Client,
    DataType,
    Device,
    EdgeNode,
    Message,
    Metric,
    MQTTProtocol,
    TLSConfig,
)


def now_ms() -> int:
    return int(time.time() * 1000)


def main() -> None:
    job = json.load(sys.stdin)
    rebirth = threading.Event()

    def on_command(node: EdgeNode, message: Message) -> None:
        names = [metric.name for metric in message.payload.metrics]
        if "Node Control/Rebirth" in names:
            rebirth.set()

    client = Client(
        client_id=job["client_id"],
        protocol=MQTTProtocol.MQTT_V311,
        username=job["username"],
        password=job["password"],
        transport_config=TLSConfig(ca_certs=job["ca_file"]),
    )
    node = EdgeNode(
        group_id=job["group_id"],
        edge_node_id=job["edge_node_id"],
        metrics=[
            Metric(timestamp=now_ms(), name="Line/Speed", datatype=DataType.DOUBLE, value=12.5, alias=1),
            Metric(timestamp=now_ms(), name="Line/Running", datatype=DataType.BOOLEAN, value=True, alias=2),
            Metric(timestamp=now_ms(), name="Line/Count", datatype=DataType.INT32, value=-3, alias=3),
        ],
        client=client,
        cmd_callback=on_command,
    )
    node.connect(job["host"], port=job["port"], blocking=False)
    deadline = time.monotonic() + 15
    while not node._connected and time.monotonic() < deadline:  # noqa: SLF001 - the library exposes no flag
        time.sleep(0.05)
    print("NBIRTH", flush=True)
    node.update([Metric(timestamp=now_ms(), name="Line/Speed", datatype=DataType.DOUBLE, value=13.25)])
    print("NDATA", flush=True)
    node.register(
        Device("press", [Metric(timestamp=now_ms(), name="Pressure", datatype=DataType.FLOAT, value=4.5, alias=10)])
    )
    print("DBIRTH", flush=True)
    node.update_device("press", [Metric(timestamp=now_ms(), name="Pressure", datatype=DataType.FLOAT, value=4.75)])
    print("DDATA", flush=True)
    if job.get("wait_rebirth"):
        print("REBIRTH" if rebirth.wait(job.get("rebirth_timeout", 30)) else "NO REBIRTH", flush=True)
    node.deregister("press")
    print("DDEATH", flush=True)
    time.sleep(0.2)  # QoS 0: let paho write the frames before the socket goes
    print("NDEATH", flush=True)
    # pysparkplug's own disconnect() sends an NDEATH with the next session's bdSeq, which a host must
    # take for a stale will; a power cut is the death a gateway really has.
    os._exit(0)


if __name__ == "__main__":
    main()
