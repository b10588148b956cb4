"""scripts/dev end to end: `up` runs the whole local stack in a folder of its own (free ports, its own settings file),
the simulator's readings reach PostgreSQL through the timer-driven drain, a second `up` is a no-op, and `down`
leaves no process behind. Real servers and the real command; every wait has a deadline."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from scripts.localstack import PostgresServer, is_running, process_table

# Each test starts its own server(s), not the harness's.
pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "scripts" / "dev"
UP_TIMEOUT_S = 240  # includes scripts/install-deps, which is quick once everything is installed
DOWN_TIMEOUT_S = 120
READINGS_DEADLINE_S = 45
METRICS = {"temperature", "spindle_rpm", "door_open", "mode"}


def dev(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DEV), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def eventually(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """The first truthy result of ``probe`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s (last: {result!r})"
        time.sleep(interval)


def health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code
    except OSError:
        return None


def readings(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("""
            SELECT t.metric, t.seq, t.value, t.value_bool, t.value_text
            FROM telemetry t
            JOIN devices d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
            JOIN tenants n ON n.id = t.tenant_id
            WHERE n.slug = 'demo' AND d.name = 'press-01'""").fetchall()


def api_login(port: int, tenant: str, email: str, password: str) -> str:
    """Logs in over HTTP and returns the role GET /api/me reports."""
    base = f"http://127.0.0.1:{port}/api"
    body = json.dumps({"tenant": tenant, "email": email, "password": password}).encode()
    login = urllib.request.Request(f"{base}/auth/login", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=10) as response:
        token = json.load(response)["access_token"]
    me = urllib.request.Request(f"{base}/me", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(me, timeout=10) as response:
        return str(json.load(response)["role"])


def test_dev_up_runs_the_stack_until_down_stops_every_process(tmp_path_factory):
    # GIVEN a state folder of the test's own (short, for PostgreSQL's socket path) and the developer's settings file
    state_dir = tmp_path_factory.mktemp("dev")
    developer_settings = REPO / "local.settings.json"
    developer_stamp = developer_settings.stat().st_mtime_ns if developer_settings.exists() else None
    recorded: dict[str, dict] = {}
    stopped = False
    try:
        # WHEN the stack comes up on free ports with a drain every 2 s
        up = dev(
            "up", "--dir", str(state_dir), "--free-ports", "--ingest-schedule", "*/2 * * * * *", timeout=UP_TIMEOUT_S
        )
        state = json.loads((state_dir / "state.json").read_text()) if (state_dir / "state.json").exists() else {}
        recorded = state.get("processes", {})
        assert up.returncode == 0, f"scripts/dev up failed:\n{up.stdout}\n{up.stderr}"

        # THEN all five components run, with their settings in the state folder and not in the repository
        assert set(recorded) == {"postgres", "mosquitto", "azurite", "functions", "simulator"}
        settings = json.loads((state_dir / "local.settings.json").read_text())["Values"]
        example = json.loads((REPO / "local.settings.json.example").read_text())["Values"]
        assert set(example) <= set(settings)
        assert settings["INGEST_SCHEDULE"] == "*/2 * * * * *"
        assert settings["MQTT_PORT"] == str(state["ports"]["mosquitto"])
        assert (state_dir / "demo-device.json").stat().st_mode & 0o077 == 0
        assert (state_dir / "db-passwords.json").stat().st_mode & 0o077 == 0
        assert (developer_settings.stat().st_mtime_ns if developer_settings.exists() else None) == developer_stamp
        assert "mosquitto_sub" in up.stdout and "mosquitto_pub" in up.stdout and "psql" in up.stdout

        # AND the health endpoint answers 200
        eventually(lambda: health(state["ports"]["functions"]) == 200, 30, "GET /api/health == 200")

        # AND the demo tenant's owner logs in to the API with the password `scripts/dev secret demo-owner` prints
        assert (state_dir / "demo-owner.json").stat().st_mode & 0o077 == 0
        owner_password = dev("secret", "demo-owner", "--dir", str(state_dir), timeout=30).stdout.strip()
        assert api_login(state["ports"]["functions"], "demo", "owner@demo.example", owner_password) == "owner"

        # AND the simulator's readings reach PostgreSQL through the timer-driven drain (the drain run `up` makes
        # itself happens before the simulator starts), every metric with its type
        postgres = PostgresServer(state_dir / "postgres", state["ports"]["postgres"])
        superuser_dsn = postgres.superuser_dsn("mqtt_saas")
        assert (
            dev("secret", "db-superuser", "--dir", str(state_dir), timeout=30).stdout.strip()
            == postgres.superuser_password
        )

        def two_readings() -> list[tuple]:
            rows = readings(superuser_dsn)
            return rows if {1, 2} <= {seq for _, seq, *_ in rows} else []

        rows = eventually(two_readings, READINGS_DEADLINE_S, "simulator readings 1 and 2 in telemetry")
        first = {metric: (value, flag, text) for metric, seq, value, flag, text in rows if seq == 1}
        assert set(first) == METRICS
        assert isinstance(first["temperature"][0], float) and first["spindle_rpm"][0] is not None
        assert isinstance(first["door_open"][1], bool) and isinstance(first["mode"][2], str)

        # AND a second `up` finds it running and changes nothing
        again = dev("up", "--dir", str(state_dir), timeout=UP_TIMEOUT_S)
        assert again.returncode == 0, again.stderr
        assert "already up" in again.stdout
        assert json.loads((state_dir / "state.json").read_text())["processes"] == recorded
        assert dev("status", "--dir", str(state_dir), timeout=30).returncode == 0

        # WHEN the stack goes down
        down = dev("down", "--dir", str(state_dir), timeout=DOWN_TIMEOUT_S)
        stopped = down.returncode == 0
        assert stopped, f"scripts/dev down failed:\n{down.stdout}\n{down.stderr}"
    finally:
        if recorded and not stopped:
            dev("down", "--dir", str(state_dir), timeout=DOWN_TIMEOUT_S)

    # THEN none of the recorded processes, nor anything left in their sessions, is alive; the data stays
    table = process_table()
    alive = {name: r["pid"] for name, r in recorded.items() if is_running(r["pid"], r["start"], table)}
    assert alive == {}
    sessions = {r["pid"] for r in recorded.values()}
    assert {pid for pid, info in table.items() if info.session in sessions and not info.zombie} == set()
    assert dev("status", "--dir", str(state_dir), timeout=30).returncode == 3
    assert (state_dir / "postgres" / "data" / "PG_VERSION").exists()
