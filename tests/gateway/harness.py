"""The gateway's tests' helpers: a tenant and its gateway.toml (Site), the gateway as a subprocess
(GatewayProcess), and the exactly-once check every fault test ends with."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.devices import Device, run_mqtt_ingest
from tests.support.waiting import query, wait_for

REPO = Path(__file__).resolve().parents[2]
HEALTH_DEVICE = "gw-health"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    return json.dumps(str(value))


def to_toml(config: dict[str, Any]) -> str:
    """Just enough TOML for a gateway configuration: tables, tables of tables, arrays of tables (one level of
    nested arrays: points, nodes, topics)."""
    lines: list[str] = []

    def table(header: str, body: dict[str, Any]) -> None:
        lines.append(header)
        nested = {k: v for k, v in body.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        for key, value in body.items():
            if key not in nested:
                lines.append(f"{key} = {toml_value(value)}")
        return nested  # type: ignore[return-value]

    for name, body in config.items():
        if isinstance(body, list):
            for item in body:
                nested = table(f"[[{name}]]", item)
                for key, items in nested.items():
                    for sub in items:
                        table(f"[[{name}.{key}]]", sub)
        elif name == "devices":
            for device, entry in body.items():
                table(f"[devices.{device}]", entry)
        else:
            table(f"[{name}]", body)
    return "\n".join(lines) + "\n"


@dataclass
class Site:
    """A tenant with its devices provisioned on the broker, and everything a gateway.toml needs for them."""

    tenant: dict[str, Any]
    credentials: dict[str, Any]
    settings: Any
    folder: Path
    database: Any

    @property
    def slug(self) -> str:
        return str(self.tenant["slug"])

    def config(self, *, broker_port: int | None = None, **sections: Any) -> dict[str, Any]:
        devices = {}
        for name, credential in self.credentials.items():
            secret = self.folder / f"{name}.password"
            secret.write_text(credential.password + "\n")
            secret.chmod(0o600)
            devices[name] = {"password_file": secret.name}
        config: dict[str, Any] = {
            "gateway": {"tenant": self.slug},
            "broker": {
                "host": self.settings.mqtt_host,
                "port": broker_port or self.settings.mqtt_port,
                "ca_file": self.settings.mqtt_ca_file,
                "keepalive_s": 10,
                "connect_timeout_s": 3,
            },
            "buffer": {"path": "buffer.sqlite3"},
            "publish": {"retry_s": 0.5},
            "health": {"device": HEALTH_DEVICE, "interval_s": 1.0},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        config["devices"] = devices
        return config

    def device_id(self, name: str) -> int:
        [(device_id,)] = query(
            self.database,
            "SELECT id FROM devices WHERE tenant_id = %(t)s AND name = %(n)s",
            {"t": self.tenant["id"], "n": name},
        )
        return int(device_id)

    def rows(self, device: str, metric: str) -> list[tuple[Any, ...]]:
        """(value, value_bool, value_text, ts as epoch ms, seq) of one metric, in time order."""
        return query(
            self.database,
            """
            SELECT t.value, t.value_bool, t.value_text, (extract(epoch FROM t.ts) * 1000)::bigint, t.seq
            FROM telemetry t JOIN devices d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
            WHERE t.tenant_id = %(t)s AND d.name = %(d)s AND t.metric = %(m)s ORDER BY t.ts, t.seq""",
            {"t": self.tenant["id"], "d": device, "m": metric},
        )

    def drain(self) -> None:
        run_mqtt_ingest()

    def drain_until(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        def drained() -> Any:
            run_mqtt_ingest()
            return condition()

        return wait_for(drained, timeout, what, interval=0.05)


@dataclass
class GatewayProcess:
    """The gateway as a systemd unit would run it: python -m gateway --config <file>, logs to a file."""

    folder: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def buffer_path(self) -> Path:
        return self.folder / "buffer.sqlite3"

    def start(self) -> GatewayProcess:
        config_file = self.folder / "gateway.toml"
        config_file.write_text(to_toml(self.config))
        self.starts += 1
        log = self.folder / f"gateway-{self.starts}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(config_file)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def log_text(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The fields of every `<name> {json}` line the gateway logged, in all its runs."""
        found = []
        for line in self.log_text().splitlines():
            marker = f" {name} "
            if marker in line:
                found.append(json.loads(line.split(marker, 1)[1]))
        return found

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, as systemd stops it; returns its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def buffer(self, sql: str) -> list[tuple[Any, ...]]:
        """A query on the gateway's buffer file (WAL: readable while the gateway writes)."""
        wait_for(self._schema_made, 10, "the gateway's buffer file")
        with sqlite3.connect(f"file:{self.buffer_path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchall()

    def _schema_made(self) -> bool:
        if not self.buffer_path.exists():
            return False
        with sqlite3.connect(f"file:{self.buffer_path}?mode=ro", uri=True, timeout=5) as conn:
            return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'commands'").fetchall())

    def pending(self) -> int:
        return int(self.buffer("SELECT count(*) FROM readings WHERE acked_at IS NULL")[0][0])

    def highest_seq(self) -> int:
        rows = self.buffer("SELECT seq FROM sqlite_sequence WHERE name = 'readings'")
        return int(rows[0][0]) if rows else 0


def clear_retained_status(settings: Any, credentials: Any) -> None:
    """Deletes each device's retained status (an empty retained message), publishing as the device itself; a
    second try for a broker slow to answer on a busy machine."""
    for credential in credentials:
        for attempt in (1, 2):
            try:
                device = Device(settings, credential)
            except TimeoutError:
                if attempt == 2:
                    raise
                continue
            try:
                if not device.refused:
                    info = device.client.publish(f"{credential.topic_prefix}/status", b"", qos=1, retain=True)
                    device.wait_acked([info.mid], timeout=20)
                break
            finally:
                device.close()


def assert_every_reading_stored_once(site: Site, gateway: GatewayProcess, dropped: int = 0) -> None:
    """Every seq the gateway ever gave is in telemetry exactly once, as one reading (one device, one ts): the seqs of
    telemetry rows plus the /state readings (stored with seq 0) plus what the stated when-full policy dropped
    account for all of 1..highest seq."""
    highest = gateway.highest_seq()
    seqs = query(
        site.database,
        """
        SELECT seq, count(DISTINCT (device_id, ts)) FROM telemetry WHERE tenant_id = %(t)s AND seq > 0
        GROUP BY seq ORDER BY seq""",
        {"t": site.tenant["id"]},
    )
    [(state_readings,)] = query(
        site.database, "SELECT count(*) FROM telemetry WHERE tenant_id = %(t)s AND seq = 0", {"t": site.tenant["id"]}
    )
    assert all(readings == 1 for _, readings in seqs), "a seq was stored as two different readings"
    stored = {seq for seq, _ in seqs}
    assert stored <= set(range(1, highest + 1))
    missing = highest - len(stored)
    assert missing == state_readings + dropped, (
        f"{missing - state_readings - dropped} readings lost (highest seq {highest}, {len(stored)} stored, "
        f"{state_readings} /state readings, {dropped} dropped by policy)"
    )
