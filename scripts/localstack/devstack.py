"""scripts/dev's Python side: bring the whole local stack up, take it down, say what runs.

    scripts/dev up     [--dir PATH] [--free-ports] [--ingest-schedule NCRONTAB]
    scripts/dev down   [--dir PATH] [--purge]
    scripts/dev status [--dir PATH]
    scripts/dev secret NAME [--dir PATH]      # one password, for "$(scripts/dev secret mqtt-admin)"

`up` starts private PostgreSQL, Mosquitto (TLS, dynamic security) and Azurite under .localstack/ (the servers of
this package), prepares the database (migrations, login passwords for the app and ingest roles), provisions the demo
tenant `demo` and its device `press-01`, writes local.settings.json, creates the drain's persistent session, then runs
the function app (Core Tools' `func start` when on PATH, else scripts/func_host.py) and the device simulator in the
background and waits until /api/health answers 200. Everything it starts is recorded in .localstack/state.json (pid
and start time, so a recycled pid is never signalled); `down` stops it all and waits until no process is left.
Data stays for the next `up` unless `down --purge`. Preferred ports: PostgreSQL 55432, MQTT/TLS 18883, Azurite blob
10010, functions 7071, each falling back to a free port when taken.

Locally the drain runs every 10 s (INGEST_SCHEDULE "*/10 * * * * *", with a time budget below that and a short idle
exit), so readings show up within seconds; in Azure the schedule is an app setting set by Bicep.

`--dir PATH` keeps all state, and local.settings.json, in PATH instead of .localstack/ and the repository root;
`--free-ports` never uses the preferred ports. Both are for tests, which must not touch the developer's stack.
`down`, `status` and `secret` need only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.core.exceptions import MqttSaasError

from .azurite import AzuriteServer
from .mosquitto import MosquittoBroker
from .postgres import SUPERUSER_PASSWORD_FILE, PostgresServer
from .process import (
    LOCALHOST,
    REPO_ROOT,
    LocalStackError,
    free_port,
    is_running,
    process_info,
    stop_process,
    tail,
    write_private,
)

DEFAULT_DIR = REPO_ROOT / ".localstack"
DEFAULT_SETTINGS = REPO_ROOT / "local.settings.json"
SETTINGS_EXAMPLE = REPO_ROOT / "local.settings.json.example"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"

PREFERRED_PORTS = {"postgres": 55432, "mosquitto": 18883, "azurite": 10010, "functions": 7071}
DATABASE = "mqtt_saas"
APP_ROLE, INGEST_ROLE = "mqtt_saas_app", "mqtt_saas_ingest"
MAINTENANCE_ROLE = "mqtt_saas_maintenance"  # rollup and blob_archiver timers (0010)
DEMO_TENANT, DEMO_TENANT_NAME, DEMO_PLAN, DEMO_DEVICE = "demo", "Demo Factory", "starter", "press-01"
DEMO_OWNER_EMAIL = "owner@demo.example"
SIMULATOR_INTERVAL_S = 2

# Local drain timing: a run every 10 s that ends before the next tick and as soon as the simulator pauses.
LOCAL_INGEST_SCHEDULE = "*/10 * * * * *"
LOCAL_INGEST_TIME_BUDGET_S = "8"
LOCAL_INGEST_IDLE_EXIT_S = "1.5"

HEALTH_TIMEOUT_S = {"func": 180.0, "func_host": 60.0}  # Core Tools fetches its extension bundle on a first start
STOP_TIMEOUT_S = 20.0
# Stop order: what produces data first, PostgreSQL last. Signals as each process expects them: SIGTERM lets the
# simulator say "offline" and Mosquitto save its sessions; SIGINT is PostgreSQL's fast shutdown.
COMPONENTS = ("simulator", "functions", "azurite", "mosquitto", "postgres")
STOP_SIGNALS = {"postgres": signal.SIGINT}
SECRETS = (
    "db-app",
    "db-ingest",
    "db-maintenance",
    "db-superuser",
    "mqtt-admin",
    "mqtt-provisioner",
    "mqtt-ingest",
    "mqtt-commander",
    "demo-device",
    "demo-owner",
)


class DevError(Exception):
    """scripts/dev cannot do what was asked; the message says why and what to do."""


def say(message: str) -> None:
    print(f"[dev] {message}", flush=True)


# -- where things live --------------------------------------------------------------------------------------------


class Layout:
    """Paths of one stack: the state folder and the settings file that goes with it."""

    def __init__(self, state_dir: Path | None) -> None:
        self.custom = state_dir is not None
        self.dir = (state_dir or DEFAULT_DIR).resolve()
        self.settings_file = self.dir / "local.settings.json" if self.custom else DEFAULT_SETTINGS
        self.state_file = self.dir / "state.json"
        self.lock_file = self.dir / ".lock"
        self.passwords_file = self.dir / "db-passwords.json"
        self.device_file = self.dir / "demo-device.json"
        self.owner_file = self.dir / "demo-owner.json"
        self.functions_log = self.dir / "functions.log"
        self.simulator_log = self.dir / "simulator.log"
        self.postgres_dir = self.dir / "postgres"
        self.mosquitto_dir = self.dir / "mosquitto"
        self.azurite_dir = self.dir / "azurite"

    def dev_command(self, *args: str) -> str:
        """How to call `scripts/dev ARGS` from the caller's folder, with --dir when this is not the default stack."""
        command = show_path(REPO_ROOT / "scripts" / "dev")
        if "/" not in command:
            command = f"./{command}"
        words = [command, *args] + (["--dir", show_path(self.dir)] if self.custom else [])
        return shlex.join(words)


def show_path(path: Path) -> str:
    """``path`` relative to the current folder when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def stack_lock(layout: Layout) -> Iterator[None]:
    """One `up` or `down` per stack at a time; the children never inherit the lock (close_fds)."""
    layout.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(layout.lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another scripts/dev is working on this stack; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# -- state.json ---------------------------------------------------------------------------------------------------


class State:
    """What runs, on which ports: written after every start so that even an interrupted `up` can be taken down."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.data: dict[str, Any] = load_json(layout.state_file) or {}
        self.data.setdefault("processes", {})
        self.data.setdefault("ports", {})

    @property
    def processes(self) -> dict[str, dict[str, Any]]:
        return self.data["processes"]

    @property
    def ports(self) -> dict[str, int]:
        return self.data["ports"]

    def record(self, name: str, pid: int, log: Path) -> None:
        info = process_info(pid)
        if info is None or info.zombie:
            raise DevError(f"{name} (pid {pid}) exited right after it started; see {show_path(log)}")
        self.processes[name] = {"pid": pid, "start": info.start, "log": str(log)}
        self.save()

    def save(self) -> None:
        self.layout.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.layout.state_file, json.dumps(self.data, indent=2) + "\n")

    def running(self) -> dict[str, bool]:
        records = {name: self.processes.get(name) for name in COMPONENTS}
        return {name: r is not None and is_running(int(r["pid"]), r.get("start")) for name, r in records.items()}


# -- processes ----------------------------------------------------------------------------------------------------


def start_background(cmd: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """A child in a session of its own (so `down` can reach all of it), output appended to ``log``."""
    with open(log, "ab") as handle:
        handle.write(f"\n=== {datetime.now(UTC).isoformat(timespec='seconds')} {shlex.join(cmd)}\n".encode())
        handle.flush()
        return subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# -- ports --------------------------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    # SO_REUSEADDR as the servers set it: a port in TIME_WAIT is free for them, a listening one is not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def choose_port(name: str, state: State, free_only: bool, taken: set[int]) -> int:
    """The preferred port, else the one used last time (settings stay stable), else any free one."""
    preferred = PREFERRED_PORTS[name]
    candidates = [] if free_only else [preferred, state.ports.get(name)]
    for port in candidates:
        if port and port not in taken and port_is_free(port):
            break
    else:
        port = free_port()
        while port in taken:
            port = free_port()
    if not free_only and port != preferred:
        say(f"{name}: port {preferred} is taken; using {port}")
    taken.add(port)
    return port


# -- up -----------------------------------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def up(layout: Layout, free_ports: bool, ingest_schedule: str) -> int:
    started = time.monotonic()
    # Like Ctrl-C, SIGTERM and SIGHUP unwind a half-done `up`, which then stops what it started.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    with stack_lock(layout):
        state = State(layout)
        running = state.running()
        if all(running.values()):
            say("already up")
            print_info(state)
            return 0
        if any(running.values()):
            say(f"partly running ({', '.join(n for n, up in running.items() if not up)} down); restarting it all")
            if problems := stop_all(state):
                raise DevError("; ".join(problems))
        bring_up(layout, state, free_ports, ingest_schedule)
        say(f"up in {time.monotonic() - started:.1f} s")
        print_info(state)
        return 0


def bring_up(layout: Layout, state: State, free_ports: bool, ingest_schedule: str) -> None:
    taken: set[int] = set()
    ports = {name: choose_port(name, state, free_ports, taken) for name in PREFERRED_PORTS}
    state.data.update(
        ports=ports,
        settings_file=str(layout.settings_file),
        processes={},
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    state.save()
    postgres = PostgresServer(layout.postgres_dir, ports["postgres"])
    broker = MosquittoBroker(layout.mosquitto_dir, ports["mosquitto"])
    azurite = AzuriteServer(layout.azurite_dir, ports["azurite"])
    children: list[subprocess.Popen[bytes]] = []
    try:
        for name, server in (("postgres", postgres), ("mosquitto", broker), ("azurite", azurite)):
            step = time.monotonic()
            server.start()
            assert server.pid is not None
            state.record(name, server.pid, server.log_file)
            say(f"{name}: up on {LOCALHOST}:{server.port} ({time.monotonic() - step:.1f} s)")

        step = time.monotonic()
        passwords = prepare_database(layout, postgres)
        values = settings_values(layout, postgres, broker, azurite, passwords, ports["functions"], ingest_schedule)
        settings = load_settings(values)
        credential, tenant_id = ensure_demo_device(layout, postgres, settings)
        ensure_demo_owner(layout, settings, tenant_id)
        state.data["demo"] = {
            "tenant_id": tenant_id,
            "tenant": credential["tenant"],
            "device": credential["device"],
            "username": credential["username"],
            "client_id": credential["client_id"],
        }
        write_settings(layout, values, ports["functions"])
        prime_drain_session(values)
        say(f"database, demo device, settings and drain session ready ({time.monotonic() - step:.1f} s)")

        env = child_environment()
        host_kind = "func" if shutil.which("func", path=env["PATH"]) else "func_host"
        # func_host.py reads the settings file given to it; Core Tools reads only the repository's
        # local.settings.json, and lets environment variables win over it, which matters with --dir.
        host_env = {**env, **values} if host_kind == "func" else env
        functions = start_background(
            function_host_command(host_kind, layout, ports["functions"]), layout.functions_log, host_env
        )
        children.append(functions)
        state.data["function_host"] = host_kind
        state.record("functions", functions.pid, layout.functions_log)
        simulator = start_background(simulator_command(layout, broker), layout.simulator_log, env)
        children.append(simulator)
        state.record("simulator", simulator.pid, layout.simulator_log)

        step = time.monotonic()
        wait_healthy(ports["functions"], functions, layout.functions_log, HEALTH_TIMEOUT_S[host_kind])
        say(f"function app healthy ({time.monotonic() - step:.1f} s)")
        if simulator.poll() is not None:
            raise DevError(
                f"the simulator exited ({simulator.returncode}); {show_path(layout.simulator_log)}:\n"
                f"{tail(layout.simulator_log)}"
            )
    except BaseException:
        say("start failed; stopping what was started")
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        # The servers stop through their own objects too: one interrupted while starting is not recorded yet.
        for server in (azurite, broker, postgres):
            with contextlib.suppress(Exception):
                server.stop()
        stop_all(state)
        raise


def prepare_database(layout: Layout, postgres: PostgresServer) -> dict[str, str]:
    """Create the database if missing, migrate it, and give the two roles their (persisted) login passwords."""
    import psycopg
    from psycopg import sql

    from shared.core.migrate import apply_migrations

    passwords = load_json(layout.passwords_file) or {}
    if not all(isinstance(passwords.get(role), str) for role in (APP_ROLE, INGEST_ROLE, MAINTENANCE_ROLE)):
        passwords = {role: secrets.token_urlsafe(24) for role in (APP_ROLE, INGEST_ROLE, MAINTENANCE_ROLE)}
        write_private(layout.passwords_file, json.dumps(passwords, indent=2) + "\n")
    with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    applied = apply_migrations(postgres.superuser_dsn(DATABASE))
    if applied:
        say(f"migrations applied: {', '.join(applied)}")
    with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
        for role in (APP_ROLE, INGEST_ROLE, MAINTENANCE_ROLE):
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(passwords[role]))
            )
    return {role: passwords[role] for role in (APP_ROLE, INGEST_ROLE, MAINTENANCE_ROLE)}


def settings_values(
    layout: Layout,
    postgres: PostgresServer,
    broker: MosquittoBroker,
    azurite: AzuriteServer,
    passwords: Mapping[str, str],
    functions_port: int,
    ingest_schedule: str,
) -> dict[str, str]:
    """Every key of local.settings.json.example, for this stack.

    Keys the stack decides (addresses, credentials, the local drain timing) are always rewritten; any other key keeps
    the value the developer gave it in the existing file, else the example's.
    """
    example = (load_json(SETTINGS_EXAMPLE) or {}).get("Values", {})
    existing = (load_json(layout.settings_file) or {}).get("Values", {})
    values = {key: str(existing.get(key, value)) for key, value in example.items()}
    values.update({key: str(value) for key, value in existing.items() if key not in example})

    def dsn(role: str) -> str:
        return f"postgresql://{role}:{passwords[role]}@{LOCALHOST}:{postgres.port}/{DATABASE}"

    # The API refuses to sign tokens with the example's placeholder: give the stack a random secret once and keep
    # it (tokens stay valid across `down`/`up`).
    if values.get("AUTH_JWT_SECRET", "").startswith("CHANGE-ME"):
        values["AUTH_JWT_SECRET"] = secrets.token_hex(32)

    values.update(
        {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            # The host keeps its timer schedule status in blob storage: Azurite's blob service.
            "AzureWebJobsStorage": azurite.connection_string,
            "DATABASE_URL": dsn(APP_ROLE),
            "INGEST_DATABASE_URL": dsn(INGEST_ROLE),
            "MAINTENANCE_DATABASE_URL": dsn(MAINTENANCE_ROLE),
            "MQTT_HOST": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_CA_FILE": str(broker.ca_file),
            "MQTT_INGEST_USERNAME": broker.ingest.username,
            "MQTT_INGEST_PASSWORD": broker.ingest.password,
            "MQTT_INGEST_CLIENT_ID": broker.ingest.client_id or broker.ingest.username,
            "MQTT_PROVISIONER_USERNAME": broker.provisioner.username,
            "MQTT_PROVISIONER_PASSWORD": broker.provisioner.password,
            "MQTT_COMMANDER_USERNAME": broker.commander.username,
            "MQTT_COMMANDER_PASSWORD": broker.commander.password,
            "INGEST_SCHEDULE": ingest_schedule,
            "INGEST_TIME_BUDGET_S": LOCAL_INGEST_TIME_BUDGET_S,
            "INGEST_IDLE_EXIT_S": LOCAL_INGEST_IDLE_EXIT_S,
            "STORAGE_CONNECTION_STRING": azurite.connection_string,
        }
    )
    missing = set(example) - set(values)
    assert not missing, missing
    return values


def load_settings(values: Mapping[str, str]) -> Any:
    from shared.core.settings import settings_from

    return settings_from(dict(values))


def write_settings(layout: Layout, values: Mapping[str, str], functions_port: int) -> None:
    """0600: the file holds passwords. Core Tools reads Host.LocalHttpPort as its default port."""
    previous = load_json(layout.settings_file) or {}
    document = {
        "IsEncrypted": False,
        "Values": dict(values),
        "Host": {**previous.get("Host", {}), "LocalHttpPort": functions_port},
    }
    write_private(layout.settings_file, json.dumps(document, indent=2) + "\n")


def ensure_demo_device(layout: Layout, postgres: PostgresServer, settings: Any) -> tuple[dict[str, str], str]:
    """The demo tenant and device with its broker credential; what exists is reused (the credential file too)."""
    import psycopg
    from psycopg.rows import dict_row

    from shared.broker.dynsec import DynsecClient, device_username, generate_password
    from shared.core.db import create_pool
    from shared.core.exceptions import DynsecError
    from tests.support.registry import DeviceCredential, create_tenant, provision_device

    def lookup() -> tuple[dict[str, Any] | None, bool]:
        # As the owner: the app role sees a tenant only once it acts for it, and finds none by slug.
        with psycopg.connect(postgres.superuser_dsn(DATABASE), row_factory=dict_row) as conn:
            tenant = conn.execute("SELECT id, slug, name, plan FROM tenants WHERE slug = %s", (DEMO_TENANT,)).fetchone()
            device = (
                tenant is not None
                and conn.execute(
                    "SELECT 1 FROM devices WHERE tenant_id = %s AND name = %s", (tenant["id"], DEMO_DEVICE)
                ).fetchone()
                is not None
            )
        return tenant, device

    tenant, device_exists = lookup()
    stored = load_json(layout.device_file)
    if (
        tenant is not None
        and device_exists
        and stored
        and (stored.get("tenant"), stored.get("device")) == (DEMO_TENANT, DEMO_DEVICE)
    ):
        return stored, str(tenant["id"])

    pool = create_pool(settings)
    try:
        if tenant is None:
            tenant = create_tenant(pool, DEMO_TENANT, DEMO_TENANT_NAME, DEMO_PLAN)
            say(f"created tenant {DEMO_TENANT!r} (plan {DEMO_PLAN})")
        with DynsecClient(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.mqtt_ca_file,
            settings.mqtt_provisioner_username,
            settings.mqtt_provisioner_password,
        ) as dynsec:
            if not device_exists:
                # A broker credential left by an interrupted earlier `up` would make provisioning fail.
                dynsec.deprovision_device(DEMO_TENANT, DEMO_DEVICE)
                credential = provision_device(pool, dynsec, tenant, DEMO_DEVICE)
                say(f"provisioned device {DEMO_DEVICE!r} and its broker credential")
            else:
                # The row exists but the password file is gone: the broker only keeps a hash, so set a new one.
                username, password = device_username(DEMO_TENANT, DEMO_DEVICE), generate_password()
                try:
                    dynsec.set_client_password(username, password)
                except DynsecError:
                    dynsec.provision_device(DEMO_TENANT, DEMO_DEVICE, password)
                credential = DeviceCredential(DEMO_TENANT, DEMO_DEVICE, username, username, password)
                say(f"gave device {DEMO_DEVICE!r} a new broker password")
    finally:
        pool.close()
    stored = {
        "tenant": credential.tenant,
        "device": credential.device,
        "username": credential.username,
        "client_id": credential.client_id,
        "password": credential.password,
        "topic_prefix": credential.topic_prefix,
    }
    write_private(layout.device_file, json.dumps(stored, indent=2) + "\n")
    return stored, str(tenant["id"])


def ensure_demo_owner(layout: Layout, settings: Any, tenant_id: str) -> None:
    """The demo tenant's owner, to log in to the API with; the password is kept in demo-owner.json
    (`scripts/dev secret demo-owner`). A user whose password file is gone gets a new password."""
    from shared.accounts.passwords import generate_password, hash_password
    from shared.core.db import create_pool, tenant_transaction

    stored = load_json(layout.owner_file) or {}
    with create_pool(settings) as pool, tenant_transaction(pool, tenant_id) as conn:
        row = conn.execute(
            "SELECT id FROM users WHERE tenant_id = %s AND email = %s", (tenant_id, DEMO_OWNER_EMAIL)
        ).fetchone()
        if row is not None and stored.get("email") == DEMO_OWNER_EMAIL and stored.get("password"):
            return
        password = generate_password()
        if row is None:
            conn.execute(
                "INSERT INTO users (tenant_id, email, role, password_hash) VALUES (%s, %s, 'owner', %s)",
                (tenant_id, DEMO_OWNER_EMAIL, hash_password(password)),
            )
            say(f"created the demo tenant's owner {DEMO_OWNER_EMAIL}")
        else:
            conn.execute(
                "UPDATE users SET password_hash = %s WHERE tenant_id = %s AND id = %s",
                (hash_password(password), tenant_id, row["id"]),
            )
            say(f"gave {DEMO_OWNER_EMAIL} a new password")
    write_private(
        layout.owner_file,
        json.dumps({"tenant": DEMO_TENANT, "email": DEMO_OWNER_EMAIL, "password": password}, indent=2) + "\n",
    )


def prime_drain_session(values: Mapping[str, str]) -> None:
    """Creates the drain's persistent session and subscriptions, so readings published before the first timer
    tick wait on the broker instead of being dropped (kept as it is on later `up`s)."""
    from shared.ingest.drain import prepare_session

    prepare_session(load_settings(values))


def child_environment() -> dict[str, str]:
    """The caller's environment without its PG* or project settings (they would override the stack's), with the
    virtualenv first on PATH."""
    project = ("DATABASE_", "INGEST_", "MQTT_", "STORAGE_", "PG")
    env = {key: value for key, value in os.environ.items() if not key.startswith(project)}
    venv_bin = str(REPO_ROOT / ".venv" / "bin")
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(REPO_ROOT / ".venv")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def function_host_command(kind: str, layout: Layout, port: int) -> list[str]:
    if kind == "func":
        return ["func", "start", "--port", str(port)]
    return [
        python(),
        str(REPO_ROOT / "scripts" / "func_host.py"),
        "--port",
        str(port),
        "--settings",
        str(layout.settings_file),
        "--app-dir",
        str(REPO_ROOT),
    ]


def simulator_command(layout: Layout, broker: MosquittoBroker) -> list[str]:
    return [
        python(),
        str(REPO_ROOT / "scripts" / "simulator.py"),
        "--credential",
        str(layout.device_file),
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        "--cafile",
        str(broker.ca_file),
        "--interval",
        str(SIMULATOR_INTERVAL_S),
    ]


def health_url(port: int) -> str:
    return f"http://{LOCALHOST}:{port}/api/health"


def health_status(port: int) -> int | None:
    try:
        with urllib.request.urlopen(health_url(port), timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def wait_healthy(port: int, host: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while (status := health_status(port)) != 200:
        if host.poll() is not None:
            raise DevError(f"the function host exited ({host.returncode}); {show_path(log)}:\n{tail(log)}")
        if time.monotonic() >= deadline:
            raise DevError(
                f"{health_url(port)} answered {status or 'nothing'} for {timeout:g} s; {show_path(log)}:\n{tail(log)}"
            )
        time.sleep(0.2)


# -- down, status, secret -----------------------------------------------------------------------------------------


def stop_all(state: State) -> list[str]:
    problems = []
    for name in COMPONENTS:
        record = state.processes.get(name)
        if record is None:
            continue
        sig = STOP_SIGNALS.get(name, signal.SIGTERM)
        problem = stop_process(int(record["pid"]), record.get("start"), sig, STOP_TIMEOUT_S, name)
        if problem:
            problems.append(problem)
        else:
            del state.processes[name]
            state.save()
    return problems


def down(layout: Layout, purge: bool) -> int:
    if not layout.dir.exists():
        say(f"nothing to stop: {show_path(layout.dir)} does not exist")
        return 0
    with stack_lock(layout):
        state = State(layout)
        running = [name for name, up in state.running().items() if up]
        problems = stop_all(state)
        for problem in problems:
            say(problem)
        say(f"stopped {', '.join(running)}" if running else "nothing was running")
        if problems:
            return 1
        if purge:
            purge_dir(layout)
            return 0
    say(f"data kept in {show_path(layout.dir)}; `{layout.dev_command('down', '--purge')}` deletes it")
    return 0


def purge_dir(layout: Layout) -> None:
    known = {"state.json", ".lock", "postgres", "mosquitto", "azurite"}
    if not known & {entry.name for entry in layout.dir.iterdir()}:
        raise DevError(f"{layout.dir} does not look like a scripts/dev state folder; not deleting it")
    shutil.rmtree(layout.dir)
    say(f"deleted {show_path(layout.dir)}")
    if not layout.custom and DEFAULT_SETTINGS.exists():
        say(f"{show_path(DEFAULT_SETTINGS)} still names the old stack; the next `up` rewrites it")


def status(layout: Layout) -> int:
    state = State(layout)
    running = state.running()
    for name in COMPONENTS:
        record = state.processes.get(name)
        where = describe(name, state)
        pid = f"pid {record['pid']}" if running[name] and record else ""
        print(f"  {name:<10} {'up' if running[name] else 'down':<5} {pid:<10} {where}")
    if running["functions"]:
        code = health_status(state.ports["functions"])
        print(f"  health     {health_url(state.ports['functions'])} -> {code or 'no answer'}")
    everything = all(running.values())
    print(f"stack {'up' if everything else 'partly up' if any(running.values()) else 'down'} ({show_path(layout.dir)})")
    return 0 if everything else 3


def describe(name: str, state: State) -> str:
    port = state.ports.get(name)
    if name == "postgres":
        return f"{LOCALHOST}:{port} database {DATABASE}"
    if name == "mosquitto":
        return f"mqtts://{LOCALHOST}:{port} (MQTT v5 over TLS)"
    if name == "azurite":
        return f"http://{LOCALHOST}:{port} (blob)"
    if name == "functions":
        host = "func start" if state.data.get("function_host") == "func" else "scripts/func_host.py"
        return f"http://{LOCALHOST}:{port}/api ({host})"
    demo = state.data.get("demo", {})
    return f"{demo.get('tenant', DEMO_TENANT)}/{demo.get('device', DEMO_DEVICE)} every {SIMULATOR_INTERVAL_S} s"


def secret(layout: Layout, name: str) -> int:
    if name in ("db-app", "db-ingest", "db-maintenance"):
        role = {"db-app": APP_ROLE, "db-ingest": INGEST_ROLE, "db-maintenance": MAINTENANCE_ROLE}[name]
        value = (load_json(layout.passwords_file) or {}).get(role)
    elif name == "db-superuser":
        password_file = layout.postgres_dir / SUPERUSER_PASSWORD_FILE
        value = password_file.read_text().strip() if password_file.exists() else None
    elif name == "demo-device":
        value = (load_json(layout.device_file) or {}).get("password")
    elif name == "demo-owner":
        value = (load_json(layout.owner_file) or {}).get("password")
    else:
        credentials = load_json(layout.mosquitto_dir / "credentials.json") or {}
        value = credentials.get(name.removeprefix("mqtt-"), {}).get("password")
    if not value:
        raise DevError(f"no {name} password in {show_path(layout.dir)}; run `{layout.dev_command('up')}` first")
    print(value)
    return 0


def print_info(state: State) -> None:
    layout, ports = state.layout, state.ports
    demo = state.data.get("demo", {})
    tenant, device = demo.get("tenant", DEMO_TENANT), demo.get("device", DEMO_DEVICE)
    username = demo.get("username", f"{tenant}.{device}")
    client_id = demo.get("client_id", username)
    ca = shlex.quote(show_path(layout.mosquitto_dir / "ca.crt"))
    mqtt = f"-V mqttv5 -h {LOCALHOST} -p {ports['mosquitto']} --cafile {ca}"
    app_password = layout.dev_command("secret", "db-app")
    admin_password = layout.dev_command("secret", "mqtt-admin")
    device_password = layout.dev_command("secret", "demo-device")
    query = "SELECT ts, metric, value, value_bool, value_text FROM telemetry ORDER BY ts DESC, metric LIMIT 8"
    reading = '{"seq": 1, "metrics": {"temperature": 21.5}}'
    logs = {
        "postgres": layout.postgres_dir / "postgres.log",
        "mosquitto": layout.mosquitto_dir / "mosquitto.log",
        "azurite": layout.azurite_dir / "azurite.log",
        "functions": layout.functions_log,
        "simulator": layout.simulator_log,
    }
    schedule = (load_json(layout.settings_file) or {}).get("Values", {}).get("INGEST_SCHEDULE", "?")
    lines = ["", f"mqtt-saas local stack ({show_path(layout.dir)}):"]
    for name in reversed(COMPONENTS):
        pid = state.processes.get(name, {}).get("pid", "-")
        lines.append(f"  {name:<10} {describe(name, state):<50} pid {pid:<7} log {show_path(logs[name])}")
    lines += [
        f"  settings   {show_path(layout.settings_file)} (the drain runs on {schedule!r} here; Azure sets its own)",
        "",
        "Health:",
        f"  curl -s {health_url(ports['functions'])}",
        f"Dashboard: http://{LOCALHOST}:{ports['functions']}/api/dashboard/ (sign in: tenant {DEMO_TENANT}, "
        f"{DEMO_OWNER_EMAIL}, password from `{layout.dev_command('secret', 'demo-owner')}`)",
        f"The API as the demo tenant's owner ({DEMO_OWNER_EMAIL}; docs/api.md has more):",
        f"  TOKEN=$(curl -s -X POST http://{LOCALHOST}:{ports['functions']}/api/auth/login "
        "-H 'content-type: application/json' "
        f'-d "{{\\"tenant\\":\\"{DEMO_TENANT}\\",\\"email\\":\\"{DEMO_OWNER_EMAIL}\\",'
        f'\\"password\\":\\"$({layout.dev_command("secret", "demo-owner")})\\"}}" '
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'  curl -s http://{LOCALHOST}:{ports["functions"]}/api/me -H "authorization: Bearer $TOKEN"',
        f"Database as the app role (row-level security: it sees only the tenant in app.tenant_id, here {tenant!r}):",
        f"  PGPASSWORD=\"$({app_password})\" PGOPTIONS='-c app.tenant_id={demo.get('tenant_id', '?')}' "
        f"psql -h {LOCALHOST} -p {ports['postgres']} -U {APP_ROLE} {DATABASE} -c {shlex.quote(query)}",
        "Database as the superuser (every tenant; over the private socket):",
        f"  psql -h {shlex.quote(str(layout.postgres_dir / 'socket'))} -p {ports['postgres']} -U postgres {DATABASE}",
        "Watch all device traffic (a device may only publish under its own prefix; the broker admin may read '#'):",
        f"  mosquitto_sub {mqtt} -u admin -P \"$({admin_password})\" -t 't/#' -v",
        f"Publish as the demo device (its credential is bound to client id {client_id}, so this briefly takes over "
        "the simulator's connection; it reconnects):",
        f'  mosquitto_pub {mqtt} -u {username} -P "$({device_password})" -i {client_id} -q 1 '
        f"-t t/{tenant}/d/{device}/telemetry -m {shlex.quote(reading)}",
        f"Stop: {layout.dev_command('down')}   (data stays in {show_path(layout.dir)}; "
        f"`{layout.dev_command('down', '--purge')}` deletes it)",
    ]
    print("\n".join(lines), flush=True)


# -- command line -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="state folder instead of .localstack/; local.settings.json is then written there too",
    )
    parser = argparse.ArgumentParser(prog="scripts/dev", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", parents=[common], help="start the stack (idempotent)")
    up_parser.add_argument("--free-ports", action="store_true", help="never use the preferred ports")
    up_parser.add_argument(
        "--ingest-schedule",
        default=LOCAL_INGEST_SCHEDULE,
        metavar="NCRONTAB",
        help="INGEST_SCHEDULE for the drain (default: %(default)r)",
    )
    down_parser = commands.add_parser("down", parents=[common], help="stop everything, keep the data")
    down_parser.add_argument("--purge", action="store_true", help="also delete the state folder")
    commands.add_parser("status", parents=[common], help="show each component up or down")
    secret_parser = commands.add_parser("secret", parents=[common], help="print one local password")
    secret_parser.add_argument("name", choices=SECRETS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = Layout(args.dir)
    try:
        if args.command == "up":
            return up(layout, args.free_ports, args.ingest_schedule)
        if args.command == "down":
            return down(layout, args.purge)
        if args.command == "status":
            return status(layout)
        return secret(layout, args.name)
    except (DevError, LocalStackError, MqttSaasError) as exc:
        print(f"[dev] ERROR: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
