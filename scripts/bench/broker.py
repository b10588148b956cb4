#!/usr/bin/env python3
"""Measures Mosquitto's own CPU time per message in, per message out to the drain, and per TLS handshake.

    .venv/bin/python scripts/bench/broker.py [--devices 50] [--messages 50000] [--handshakes 500] [--idle-s 20]

Starts a private Mosquitto in a temporary folder as the local stack does (TLS, dynamic security, the broker contract's
settings: persistence, queue limits), provisions --devices device credentials, and reads the broker process's
utime + stime from /proc/<pid>/stat before and after each phase (CPU time, not wall time: other load on the machine
does not inflate it). Every device has its own TLS connection; publishers run in two worker processes. Payloads are
~200 bytes of telemetry JSON (9 metrics), QoS 1, MQTT v5.
  in, no subscriber  devices publish --messages; nobody subscribes (the broker parses, authorizes, acks, drops)
  in, queued         the drain's persistent session exists but is offline (as between two timer runs): each message
                     is also queued for it; the broker's RSS growth per queued message is printed too
  holding backlog    nothing happens for --idle-s seconds while that backlog waits (the autosave snapshot rewrites it)
  out                the drain's own MQTT client (DrainConnection, as in a run) takes that backlog and acks it
  live               the drain connected while devices publish: in and out at once
  handshake          --handshakes loops of TCP + TLS + MQTT CONNECT/CONNACK + DISCONNECT with one device credential
  idle               the devices' connections held open for --idle-s seconds (keepalive 60 s)
The last line is machine-readable:
broker_bench in_us=... queued_in_us=... queued_bytes=... backlog_idle_cpu_pct=... out_us=... live_us=...
    idle_cpu_pct=... handshake_ms=...
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

TENANT = "bench"
WORKERS = 2
PAYLOAD_METRICS = (
    '"temp":{t:.2f},"humidity":{h:.1f},"pressure":1013.25,"rpm":{r},"current_a":12.75,'
    '"voltage_v":229.8,"vibration_mm_s":2.31,"door_open":false,"mode":"auto"'
)


def payload(i: int, seq: int) -> str:
    metrics = PAYLOAD_METRICS.format(t=20 + (i % 100) / 10, h=40 + (i % 200) / 10, r=1000 + i % 500)
    return f'{{"ts":{int(time.time() * 1000)},"seq":{seq},"metrics":{{{metrics}}}}}'


def broker_cpu_s(pid: int) -> float:
    # Fields after the command name: state is 0, utime and stime are 11 and 12 (clock ticks).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


def machine_busy_s() -> float:
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class Workers:
    """Publisher processes, each owning a share of the devices' connections; driven line by line over stdin/stdout
    so the parent reads the broker's CPU exactly around the publishing, not around the connecting."""

    def __init__(self, host: str, port: int, ca: str, creds: list[tuple[str, str]]) -> None:
        self.procs = []
        for w in range(WORKERS):
            own = creds[w::WORKERS]
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert proc.stdin is not None
            # Over stdin, not argv: the passwords stay out of ps.
            proc.stdin.write(json.dumps({"host": host, "port": port, "ca": ca, "creds": own}) + "\n")
            proc.stdin.flush()
            self.procs.append(proc)
        self._expect("connected")

    def _expect(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != word:
                raise SystemExit(f"publisher worker said {line!r}, expected {word!r}")

    def publish(self, total: int, first_seq: int) -> None:
        share = total // WORKERS
        for w, proc in enumerate(self.procs):
            assert proc.stdin is not None
            proc.stdin.write(f"publish {share} {first_seq + w * share}\n")
            proc.stdin.flush()
        self._expect("done")

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        for proc in self.procs:
            proc.wait(60)


def worker() -> None:
    job = json.loads(sys.stdin.readline())
    pending = {"n": 0}
    cond = threading.Condition()

    def on_publish(client, userdata, mid, reason_code, properties):  # noqa: ANN001
        with cond:
            pending["n"] -= 1
            cond.notify_all()

    clients = []
    for username, password in job["creds"]:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.tls_set(ca_certs=job["ca"], cert_reqs=ssl.CERT_REQUIRED)
        client.max_inflight_messages_set(200)
        client.on_publish = on_publish
        client.connect(job["host"], job["port"], keepalive=60)
        client.loop_start()
        _, tenant, device = ("", *username.split(".", 1))
        clients.append((client, f"t/{tenant}/d/{device}/telemetry"))
    print("connected", flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "quit":
            break
        count, first_seq = int(words[1]), int(words[2])
        for i in range(count):
            client, topic = clients[i % len(clients)]
            with cond:
                pending["n"] += 1
                while pending["n"] > 2000:
                    cond.wait(1)
            client.publish(topic, payload(i, first_seq + i), qos=1)
        with cond:
            deadline = time.monotonic() + 300
            while pending["n"] > 0 and time.monotonic() < deadline:
                cond.wait(1)
        print("done" if pending["n"] == 0 else f"unacked {pending['n']}", flush=True)
    for client, _ in clients:
        client.disconnect()
        client.loop_stop()


class Phase:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Phase:
        self.cpu0, self.busy0, self.t0 = broker_cpu_s(self.pid), machine_busy_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = broker_cpu_s(self.pid) - self.cpu0
        self.wall = time.perf_counter() - self.t0
        self.others = machine_busy_s() - self.busy0 - self.cpu


def handshake_loop(host: str, port: int, ca: str, username: str, password: str, count: int) -> None:
    context = ssl.create_default_context(cafile=ca)
    for _ in range(count):
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.tls_set_context(context)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p, ev=connected: ev.set()
        client.connect(host, port, keepalive=60)
        client.loop_start()
        if not connected.wait(30):
            raise SystemExit("handshake: no CONNACK")
        client.disconnect()
        client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--handshakes", type=int, default=500)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument(
        "--server-key",
        choices=["rsa2048", "p256"],
        default="rsa2048",
        help="rsa2048: as the VM's cloud-init makes it (default); p256: as the local stack does",
    )
    args = parser.parse_args()

    from localstack import MosquittoBroker
    from shared.broker.dynsec import DynsecClient, generate_password
    from shared.core.settings import settings_from
    from shared.ingest.transport import DrainConnection, prepare_session

    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "mosquitto")
        if args.server_key == "rsa2048":
            vm_like_certificates(Path(tmp) / "mosquitto")
        broker.start()
        try:
            assert broker.pid is not None and broker.port is not None
            host, port, ca = broker.host, broker.port, str(broker.ca_file)
            admin = broker.admin
            creds = []
            with DynsecClient(host, port, ca, admin.username, admin.password) as dynsec:
                for i in range(args.devices):
                    password = generate_password()
                    creds.append((dynsec.provision_device(TENANT, f"machine-{i:03d}", password), password))
            ingest = broker.ingest
            # Only the MQTT part of the settings is used; the database URLs are required by the model, never dialled.
            settings = settings_from(
                {
                    "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
                    "INGEST_DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
                    "MQTT_HOST": host,
                    "MQTT_PORT": str(port),
                    "MQTT_CA_FILE": ca,
                    "MQTT_INGEST_USERNAME": ingest.username,
                    "MQTT_INGEST_PASSWORD": ingest.password,
                    "MQTT_INGEST_CLIENT_ID": ingest.client_id or ingest.username,
                }
            )
            results: dict[str, float] = {}
            n = args.messages

            def report(name: str, phase: Phase, per: int, unit: str, scale: float) -> float:
                value = phase.cpu / per * scale
                print(
                    f"{name:<18} broker {phase.cpu:6.2f} CPU-s over {phase.wall:6.1f} s for {per:,} -> "
                    f"{value:8.1f} {unit}; other processes on the machine {phase.others:.1f} CPU-s",
                    flush=True,
                )
                return value

            workers = Workers(host, port, ca, creds)
            try:
                with Phase(broker.pid) as in_phase:
                    workers.publish(n, 0)
                results["in_us"] = report("in, no subscriber", in_phase, n, "µs/msg", 1e6)

                prepare_session(settings)
                rss_before = broker_rss_kb(broker.pid)
                with Phase(broker.pid) as queued:
                    workers.publish(n, n)
                results["queued_in_us"] = report("in, queued", queued, n, "µs/msg", 1e6)
                # Mosquitto holds every queued message in memory (persistence is a snapshot of it): what a backlog
                # costs in RAM decides how long a drain outage a small VM survives.
                rss_after = broker_rss_kb(broker.pid)
                results["queued_bytes"] = (rss_after - rss_before) * 1024 / n
                print(
                    f"{'queued backlog':<18} broker RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB"
                    f" for {n:,} queued messages -> {results['queued_bytes']:.0f} bytes/msg",
                    flush=True,
                )

                # Persistence is a snapshot of everything in memory, rewritten every autosave_interval while anything
                # changed: a backlog waiting for the drain is rewritten each time, so the broker's idle CPU grows with
                # it. (The drain's own marker and devices' keepalives count as changes.)
                with Phase(broker.pid) as holding:
                    time.sleep(args.idle_s)
                results["backlog_idle_cpu_pct"] = holding.cpu / holding.wall * 100
                print(
                    f"{'holding backlog':<18} broker {holding.cpu:6.2f} CPU-s over {holding.wall:6.1f} s holding "
                    f"{n:,} queued messages -> {results['backlog_idle_cpu_pct']:.2f}% of a core",
                    flush=True,
                )

                with Phase(broker.pid) as out:
                    received = drain_backlog(DrainConnection(settings), settings.ingest_batch_size)
                if received != n:
                    raise SystemExit(f"out: the drain took {received} of {n} queued messages")
                results["out_us"] = report("out (drain)", out, n, "µs/msg", 1e6)

                connection = DrainConnection(settings)
                taken = {"n": 0}
                stop = threading.Event()

                def pump() -> None:
                    while not stop.is_set() or connection.received:
                        connection.pump(0.05)
                        messages, mids = connection.take(settings.ingest_batch_size)
                        taken["n"] += len(messages)
                        connection.ack(mids)
                        if stop.is_set() and taken["n"] >= n:
                            break

                thread = threading.Thread(target=pump, daemon=True)
                with Phase(broker.pid) as live:
                    thread.start()
                    workers.publish(n, 2 * n)
                    deadline = time.monotonic() + 120
                    while taken["n"] < n and time.monotonic() < deadline:
                        time.sleep(0.05)
                    stop.set()
                    thread.join(30)
                connection.close()
                results["live_us"] = report("live (in + out)", live, n, "µs/msg", 1e6)

                with Phase(broker.pid) as idle:
                    time.sleep(args.idle_s)
                results["idle_cpu_pct"] = idle.cpu / idle.wall * 100
                print(
                    f"{'idle':<18} broker {idle.cpu:6.2f} CPU-s over {idle.wall:6.1f} s with {args.devices} "
                    f"connections -> {results['idle_cpu_pct']:.3f}% of a core",
                    flush=True,
                )
            finally:
                workers.close()

            username, password = creds[0]
            with Phase(broker.pid) as shake:
                handshake_loop(host, port, ca, username, password, args.handshakes)
            results["handshake_ms"] = report("handshake", shake, args.handshakes, "ms/handshake", 1e3)
            rss = Path(f"/proc/{broker.pid}/status").read_text().split("VmRSS:")[1].split("\n")[0].strip()
            print(f"broker RSS after the run: {rss}")
        finally:
            broker.stop()

    print("broker_bench " + " ".join(f"{key}={value:.3f}" for key, value in results.items()))


def vm_like_certificates(folder: Path) -> None:
    """A CA (RSA 3072) and server certificate (RSA 2048, SHA-256) as infra/cloud-init.yaml makes them: the server key
    type sets most of a handshake's cost. MosquittoBroker keeps certificates it finds in its folder."""
    folder.mkdir(parents=True)
    ext = folder / "server.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:3072",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=bench CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        str(folder / "ca.key"),
        "-out",
        str(folder / "ca.crt"),
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(folder / "server.key"),
        "-out",
        str(folder / "server.csr"),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(folder / "server.csr"),
        "-CA",
        str(folder / "ca.crt"),
        "-CAkey",
        str(folder / "ca.key"),
        "-CAcreateserial",
        "-days",
        "30",
        "-sha256",
        "-extfile",
        str(ext),
        "-out",
        str(folder / "server.crt"),
    )
    for name in ("ca.key", "server.key"):
        (folder / name).chmod(0o600)


def drain_backlog(connection, batch: int) -> int:  # noqa: ANN001
    """As a drain run: marker, take and ack until the marker is back."""
    received = 0
    connection.publish_marker()
    deadline = time.monotonic() + 600
    while not connection.caught_up and not connection.lost and time.monotonic() < deadline:
        connection.pump(0.05)
        connection.ack_control()
        messages, mids = connection.take(batch)
        received += len(messages)
        connection.ack(mids)
    messages, mids = connection.take(len(connection.received))
    connection.ack(mids)
    connection.close()
    return received + len(messages)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
