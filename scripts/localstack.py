"""Private PostgreSQL, Mosquitto and Azurite instances for scripts/dev and the test suite (a library, not a command).

Each server lives in a folder of its own, listens on 127.0.0.1 only, on a given port or a free one, and runs as a
child process of the caller in its own process group; stop() leaves no process behind. System services and fixed
ports are never used. When run as root, PostgreSQL runs as the ``postgres`` user and Mosquitto drops to
``mosquitto`` by itself, so their folders are handed to those users (PLATFORM.md section 9).

Only the standard library, plus ``shared.dynsec`` (paho-mqtt) to set up the broker's roles and clients.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # so that scripts/dev can import this file by path and still reach shared/
    sys.path.insert(0, str(REPO_ROOT))

LOCALHOST = "127.0.0.1"

# Azurite's published development account (its README); it only ever guards a local emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

PROVISIONER_USERNAME = "mqtt-saas-provisioner"
INGEST_USERNAME = "mqtt-saas-ingest"
INGEST_CLIENT_ID = "mqtt-saas-ingest"
DYNSEC_PREFIX = "$CONTROL/dynamic-security/#"
INGEST_TOPICS = ("t/+/d/+/telemetry", "t/+/d/+/status", "t/+/d/+/+/state")


class LocalStackError(RuntimeError):
    """A local server could not be set up, started or stopped."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    client_id: str | None = None

    def __repr__(self) -> str:  # keeps passwords out of test output and logs
        return f"Credentials(username={self.username!r}, client_id={self.client_id!r})"


# -- helpers -------------------------------------------------------------------------------------------------------


def free_port(host: str = LOCALHOST) -> int:
    """A port that was free a moment ago; the kernel picks it when binding port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    alive: Callable[[], str | None] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll ``ready`` until it is true or the deadline passes; ``alive`` returns a reason to stop early."""
    deadline = time.monotonic() + timeout
    while True:
        # Liveness first: a dead server must not pass for ready because something else answers on its port.
        if alive is not None and (reason := alive()) is not None:
            raise LocalStackError(f"{what}: {reason}")
        if ready():
            return
        if time.monotonic() >= deadline:
            raise LocalStackError(f"{what}: not ready within {timeout:g} s")
        time.sleep(interval)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _is_root() -> bool:
    return os.geteuid() == 0


def _chown_tree(path: Path, user: str, skip: Sequence[Path] = ()) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files + dirs:
            item = Path(root, name)
            if item not in skip:
                os.lchown(item, entry.pw_uid, entry.pw_gid)


def _chown(user: str, *paths: Path) -> None:
    entry = pwd.getpwnam(user)
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """Let service users walk down to ``path``: add search (not read) permission on ancestors we own.

    Private temp folders such as pytest's /tmp/pytest-of-root are 0700; PostgreSQL and Mosquitto run as other users
    and open their files by absolute path. Search-only permission lets them pass without listing anything.
    """
    me = os.geteuid()
    for parent in reversed(path.parents):
        st = parent.stat()
        if not st.st_mode & stat.S_IXOTH and st.st_uid == me:
            parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically, with the final mode from the first byte on (passwords, keys)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ProcessInfo:
    """One process as /proc/PID/stat describes it; ``start`` is in clock ticks since boot, ``cpu_ticks`` is
    utime + stime."""

    parent: int
    group: int
    session: int
    start: int
    cpu_ticks: int
    zombie: bool


def process_info(pid: int) -> ProcessInfo | None:
    """The process ``pid`` (zombies too), or None when there is none."""
    try:
        # The command name may hold spaces and parentheses; what follows its last ")" has a fixed layout.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return ProcessInfo(
        parent=int(fields[1]),
        group=int(fields[2]),
        session=int(fields[3]),
        start=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        zombie=fields[0] in ("Z", "X"),
    )


def process_table() -> dict[int, ProcessInfo]:
    """Every process, zombies included: they still count for CPU time, but not as running."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := process_info(int(entry.name))) is not None:
            table[int(entry.name)] = info
    return table


def is_running(pid: int, start: int | None, table: Mapping[int, ProcessInfo] | None = None) -> bool:
    """``pid`` is still the process that started at ``start`` and has not exited.

    Pid and start time name one process for good, so a recycled pid never passes. A zombie has exited: it holds no
    port, no file, no memory.
    """
    info = process_info(pid) if table is None else table.get(pid)
    return info is not None and not info.zombie and info.start == start


def descendants(pid: int, table: Mapping[int, ProcessInfo]) -> set[int]:
    """Children, grandchildren and so on of ``pid`` in ``table``."""
    children: dict[int, list[int]] = {}
    for child, info in table.items():
        children.setdefault(info.parent, []).append(child)
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def process_family(pid: int, start: int | None, table: Mapping[int, ProcessInfo]) -> dict[int, int]:
    """pid -> start time of each running process that ``pid``, started in a session of its own, may have left.

    Members of its session or process group are ours even when the leader is gone: Linux never hands out a pid that
    is still some process's group or session id. Descendants matter too, as PostgreSQL's backends call setsid() and
    so leave the postmaster's group and session; they are followed only from a leader that is still ours, since the
    children of a recycled pid are someone else's.
    """
    leader = table.get(pid)
    if leader is not None and leader.start != start:
        return {}  # the pid was recycled, so its group and session ids now belong to the new process
    members = {p for p, info in table.items() if pid in (info.group, info.session)}
    if is_running(pid, start, table):
        members |= {pid} | descendants(pid, table)
    return {p: table[p].start for p in members if not table[p].zombie}


KILL_TIMEOUT_S = 30.0


def stop_process(pid: int, start: int | None, sig: signal.Signals | None, timeout: float, what: str) -> str | None:
    """Stop a process started in a session of its own, and all it left behind; returns what went wrong, or None.

    ``sig`` goes to the process itself, which then has ``timeout`` seconds to exit (None skips this); whatever of its
    family is left then gets SIGKILL. The servers' stop() and kill() use this, and so does `scripts/dev down`, which
    runs in another process than the one that started them and knows them only by pid and start time.
    """
    # Taken before the signal: once the leader exits, descendants outside its session can no longer be found.
    family = process_family(pid, start, process_table())
    problem = None
    if sig is not None and is_running(pid, start):
        try:
            os.kill(pid, sig)
            wait_until(lambda: not is_running(pid, start), timeout, what)
        except ProcessLookupError:
            pass
        except LocalStackError:
            problem = f"{what} did not stop on {sig.name} within {timeout:g} s; killed it"
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while True:
        table = process_table()
        # Looked up again each round: a member may have forked since the last one.
        family.update(process_family(pid, start, table))
        left = sorted(p for p, p_start in family.items() if is_running(p, p_start, table))
        if not left:
            return problem
        if time.monotonic() >= deadline:
            return f"{what}: processes {left} survived SIGKILL"
        for p in left:
            with suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.05)


def _run(cmd: Sequence[str], *, what: str, user: str | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        list(cmd), cwd=cwd, env=_child_env(), capture_output=True, text=True, **_as_user(user), check=False
    )
    if result.returncode != 0:
        raise LocalStackError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
    return str(result.stdout)


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a child as ``user`` (with only that user's group), when we are root."""
    if user is None or not _is_root():
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _child_env() -> dict[str, str]:
    # libpq/PG* variables of the caller must not redirect our private servers or clients.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
    return env


class _Process:
    """A server child in its own process group (so a signal reaches its helpers too), output to a log file."""

    def __init__(self, name: str, log_file: Path, other_logs: Sequence[Path] = ()) -> None:
        self.name = name
        self.log_file = log_file
        self.other_logs = tuple(other_logs)
        self.popen: subprocess.Popen[bytes] | None = None
        self._started: int | None = None

    def start(self, cmd: Sequence[str], *, cwd: Path, user: str | None = None) -> None:
        with open(self.log_file, "ab") as log:
            self.popen = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **_as_user(user),
            )
        # Read before anything reaps the child: until then its pid cannot have been recycled.
        info = process_info(self.popen.pid)
        if info is None:
            self.popen.kill()
            self.popen.wait()
            raise LocalStackError(f"{self.name}: /proc/{self.popen.pid}/stat is unreadable")
        self._started = info.start

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def exited(self) -> str | None:
        """For wait_until: why the child is gone, or None while it runs."""
        if self.popen is None:
            return "not started"
        code = self.popen.poll()
        if code is None:
            return None
        logs = "\n".join(f"--- {log}:\n{tail(log)}" for log in (self.log_file, *self.other_logs))
        return f"exited with {code}\n{logs}"

    def stop(self, sig: signal.Signals | None, timeout: float = 0.0) -> None:
        """Send ``sig`` to the main process and wait for it (None: neither), then SIGKILL whatever of it is left."""
        popen, self.popen = self.popen, None
        if popen is None:
            return
        problem = stop_process(popen.pid, self._started, sig, timeout, self.name)
        popen.wait()
        if problem:
            raise LocalStackError(problem)

    def kill(self) -> None:
        self.stop(None)

    @contextmanager
    def killed_on_error(self) -> Iterator[None]:
        """A start() that fails half-way leaves no server behind."""
        try:
            yield
        except BaseException:
            self.kill()
            raise


# -- PostgreSQL ----------------------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/N/bin (Debian layout), else the folder of an initdb on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise LocalStackError("PostgreSQL server binaries not found; run scripts/install-deps")


class PostgresServer:
    """A private PostgreSQL cluster under ``base_dir`` (data/, socket/, postgres.log).

    ``extra_conf`` adds ``-c name=value`` server settings. Durability settings stay at PostgreSQL's defaults (fsync
    on) so that crash tests with kill() mean what they say.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        port: int | None = None,
        extra_conf: Mapping[str, str | float | bool] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "postgres.log"
        self.host = LOCALHOST
        self.port = port
        self.extra_conf = dict(extra_conf or {})
        self._bin = postgres_bin_dir()
        self._user = "postgres" if _is_root() else None
        self._process = _Process("postgres", self.log_file)

    def __repr__(self) -> str:
        return f"PostgresServer({str(self.base_dir)!r}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> None:
        if self.pid is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        # The server writes its own 0600 postmaster.pid and socket lock files; the log is ours to create.
        self.log_file.touch(exist_ok=True)
        if self.port is None:
            self.port = free_port()
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > 107:  # sun_path limit; PostgreSQL would refuse to start
            raise LocalStackError(f"socket path too long ({socket_path}); use a shorter base_dir")
        if self._user:
            # initdb creates data/ as the postgres user; the rest it needs to own is this folder, the socket
            # folder and the log.
            _chown(self._user, self.base_dir, self.socket_dir, self.log_file)
            _make_traversable(self.base_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            # Trust auth is acceptable only because the server listens on loopback and a 0700 socket folder, and
            # holds throwaway data.
            _run(
                [str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C"],
                what="initdb",
                user=self._user,
                cwd=self.base_dir,
            )
        options = ["-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self.socket_dir}"]
        for name, value in self.extra_conf.items():
            options += ["-c", f"{name}={_pg_value(value)}"]
        # The postmaster runs as our own child rather than daemonized by pg_ctl: we reap it ourselves, so a kill()
        # followed by start() never trips over a zombie that still "holds" postmaster.pid.
        self._process.start(
            [str(self._bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), *options],
            cwd=self.base_dir,
            user=self._user,
        )
        with self._process.killed_on_error():
            wait_until(self._ready, timeout, f"PostgreSQL on port {self.port}", alive=self._process.exited)

    def _ready(self) -> bool:
        # Same test as `pg_ctl -w`: postmaster.pid names our process and says "ready" on its status line.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self.pid) and lines[7].strip() == "ready"

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Shut down as ``pg_ctl -m smart|fast|immediate stop`` would (SIGTERM, SIGINT, SIGQUIT)."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        self._process.stop(sig, timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once, like a power cut; start() then runs recovery."""
        self._process.kill()


def _pg_value(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# -- Mosquitto -----------------------------------------------------------------------------------------------------


def dynsec_plugin_path() -> Path:
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                    "/usr/local/lib/mosquitto_dynamic_security.so"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    raise LocalStackError("mosquitto_dynamic_security.so not found; run scripts/install-deps")


MOSQUITTO_CONF = """\
# Written by scripts/localstack.py on every start; edits are lost.
per_listener_settings false

# One TLS listener on loopback, no plain-text listener. tls_version is the minimum: 1.2 and 1.3 are offered.
listener {port} {host}
certfile {dir}/server.crt
keyfile {dir}/server.key
tls_version tlsv1.2

allow_anonymous false
plugin {plugin}
plugin_opt_config_file {dir}/dynamic-security.json

# Persistence is a snapshot written on graceful shutdown and every autosave_interval seconds. A SIGKILLed broker
# loses what it had not saved (and redelivers what was acknowledged since), so bound that window to ~10 s. Each save
# rewrites the whole file, so the cost grows with the backlog; fine for a local stack.
persistence true
persistence_location {dir}/
autosave_interval 10

# The default max_queued_messages of 1000 silently drops the 1001st message queued for an offline session, i.e. for
# the ingest drain between two timer runs. 0 would mean "no limit"; keep explicit bounds far above any backlog the
# drain must absorb, so only a forgotten session can reach them, and memory stays bounded. Drops past them are counted
# in $SYS/broker/publish/messages/dropped. max_queued_bytes counts payload bytes and is parsed as a C int in 2.0.x:
# a value >= 2^31 wraps negative and silently becomes 0 (unlimited), so stay below 2 GiB.
max_queued_messages 10000000
max_queued_bytes 1073741824
queue_qos0_messages false
# Sessions of devices that never come back expire. This also caps the Session Expiry a v5 client asks for (the
# shorter wins), so it must stay above the drain's own expiry (INGEST_SESSION_EXPIRY_S, 7 days by default).
persistent_client_expiration 14d

# The app dead-letters payloads above 64 KiB itself, so the broker must let them through (up to 1 MiB) for them to
# reach the dead-letter table. Over message_size_limit a message is dropped, and a v5 QoS 1 publisher gets PUBACK 149
# "packet too large" (2.0.11; not a valid PUBACK code, and paho-mqtt 2.2 drops the connection on it).
# max_packet_size, advertised in CONNACK, disconnects any client sending more; it sits a little above the payload
# limit so that a 1 MiB payload plus topic and properties still fits. (Mosquitto notes at start that max_packet_size
# is recommended over message_size_limit; we keep both for the 64 KiB < payload <= 1 MiB band.)
message_size_limit 1048576
max_packet_size 1114112

log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


class MosquittoBroker:
    """A private Mosquitto with TLS and dynamic security under ``base_dir``.

    First start: a local CA and server certificate, the dynsec file with an ``admin`` client, then (over the
    dynsec API) the ``provisioner`` and ``ingest`` clients. Their random passwords are kept in credentials.json
    (0600), so later starts, in this or another process, reuse port-independent state: certs, dynsec, sessions.
    """

    def __init__(self, base_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.host = LOCALHOST
        self.port = port
        self.ca_file = self.base_dir / "ca.crt"
        self.conf_file = self.base_dir / "mosquitto.conf"
        self.dynsec_file = self.base_dir / "dynamic-security.json"
        self.credentials_file = self.base_dir / "credentials.json"
        self.log_file = self.base_dir / "mosquitto.log"
        self._ca_key = self.base_dir / "ca.key"
        self._user = "mosquitto" if _is_root() else None
        # Mosquitto reports to stderr only until it has read log_dest from its configuration.
        self._process = _Process("mosquitto", self.base_dir / "mosquitto.stdout.log", other_logs=[self.log_file])
        self._credentials: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"MosquittoBroker({str(self.base_dir)!r}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def admin(self) -> Credentials:
        return self._credential("admin")

    @property
    def provisioner(self) -> Credentials:
        return self._credential("provisioner")

    @property
    def ingest(self) -> Credentials:
        return self._credential("ingest")

    def _credential(self, name: str) -> Credentials:
        if not self._credentials:
            self._credentials = self._load_or_create_credentials()
        return Credentials(**self._credentials[name])

    def start(self, timeout: float = 30.0) -> None:
        if self.pid is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        self._ensure_certificates()
        self._credentials = self._load_or_create_credentials()
        if not self.dynsec_file.exists():
            admin = self.admin
            # Refuses to overwrite an existing file; the admin role it creates may use the whole control API.
            _run(["mosquitto_ctrl", "dynsec", "init", str(self.dynsec_file), admin.username, admin.password],
                 what="mosquitto_ctrl dynsec init")
        self.conf_file.write_text(
            MOSQUITTO_CONF.format(host=self.host, port=self.port, dir=self.base_dir, plugin=dynsec_plugin_path())
        )
        self.log_file.touch(exist_ok=True)
        self.dynsec_file.chmod(0o600)
        if self._user:
            # The broker drops to `mosquitto` and must then write mosquitto.db and dynamic-security.json (atomically,
            # via a temporary file in this folder); otherwise dynsec changes silently live in memory only.
            _chown_tree(self.base_dir, self._user, skip=(self.credentials_file, self._ca_key))
            _make_traversable(self.base_dir)
        self._process.start(["mosquitto", "-c", str(self.conf_file)], cwd=self.base_dir)
        with self._process.killed_on_error():
            wait_until(self._tls_ready, timeout, f"Mosquitto TLS on port {self.port}", alive=self._process.exited)
            if not self._credentials.get("provisioned"):
                self._provision_service_clients()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: SIGTERM makes the broker save its persistence file before it exits."""
        self._process.stop(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: whatever changed since the last autosave is lost, as in a crash."""
        self._process.kill()

    def restart(self, timeout: float = 30.0) -> None:
        self.stop(timeout)
        self.start(timeout)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _tls_ready(self) -> bool:
        assert self.port is not None
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=1.0) as raw,
                self.ssl_context().wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                try:
                    tls.unwrap()  # a clean close_notify, so the broker does not log an "unexpected eof"
                except OSError:
                    pass
                return True
        except ssl.SSLCertVerificationError:
            raise  # someone else's broker on this port, or certificates replaced under a running broker
        except OSError:
            return False

    def _ensure_certificates(self) -> None:
        server_crt, server_key = self.base_dir / "server.crt", self.base_dir / "server.key"
        if self.ca_file.exists() and server_crt.exists() and server_key.exists():
            return
        work = self.base_dir / "certs.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        ext = work / "server.ext"
        ext.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid, issuer\n"
        )
        # P-256: instant to generate, and the extensions satisfy strict verifiers (e.g. Python 3.13's
        # VERIFY_X509_STRICT).
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        days = "3650"
        _run(["openssl", "req", "-x509", *ec, "-keyout", str(work / "ca.key"), "-out", str(work / "ca.crt"),
              "-days", days, "-subj", "/CN=mqtt-saas local CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], what="openssl CA")
        _run(["openssl", "req", *ec, "-keyout", str(work / "server.key"), "-out", str(work / "server.csr"),
              "-subj", "/CN=localhost"], what="openssl server key")
        _run(["openssl", "x509", "-req", "-in", str(work / "server.csr"), "-CA", str(work / "ca.crt"),
              "-CAkey", str(work / "ca.key"), "-set_serial", f"0x{secrets.token_hex(16)}", "-days", days,
              "-extfile", str(ext), "-out", str(work / "server.crt")], what="openssl server certificate")
        for name in ("ca.key", "server.key"):
            (work / name).chmod(0o600)
        for name in ("ca.key", "server.key", "server.crt", "ca.crt"):  # ca.crt last: it marks completion
            os.replace(work / name, self.base_dir / name)
        shutil.rmtree(work)

    def _load_or_create_credentials(self) -> dict[str, Any]:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.credentials_file.exists():
            loaded: dict[str, Any] = json.loads(self.credentials_file.read_text())
            return loaded
        credentials: dict[str, Any] = {
            "admin": asdict(Credentials("admin", secrets.token_hex(32))),
            "provisioner": asdict(Credentials(PROVISIONER_USERNAME, secrets.token_hex(32))),
            "ingest": asdict(Credentials(INGEST_USERNAME, secrets.token_hex(32), INGEST_CLIENT_ID)),
            "provisioned": False,
        }
        _write_private(self.credentials_file, json.dumps(credentials, indent=2))
        return credentials

    def _provision_service_clients(self) -> None:
        from shared.dynsec import Acl, DynsecClient

        admin, provisioner, ingest = self.admin, self.provisioner, self.ingest
        assert self.port is not None
        with DynsecClient(self.host, self.port, str(self.ca_file), admin.username, admin.password) as dynsec:
            # The control API has no per-command rights: whoever may publish to it is a full admin. The provisioner
            # gets exactly that and the right to read the answers, and no `#` read right as `admin` has.
            dynsec.ensure_role(
                "provisioner",
                [
                    Acl("publishClientSend", DYNSEC_PREFIX),
                    Acl("subscribePattern", DYNSEC_PREFIX),
                    Acl("publishClientReceive", DYNSEC_PREFIX),
                ],
            )
            dynsec.ensure_client(provisioner.username, provisioner.password, roles=["provisioner"])
            # The drain only reads device topics. It is bound to its client id, so nobody else can take over (or
            # kick) its persistent session.
            dynsec.ensure_role(
                "ingest",
                [Acl(kind, topic) for topic in INGEST_TOPICS for kind in ("subscribePattern", "publishClientReceive")],
            )
            dynsec.ensure_client(ingest.username, ingest.password, client_id=ingest.client_id, roles=["ingest"])
        self._credentials["provisioned"] = True
        _write_private(self.credentials_file, json.dumps(self._credentials, indent=2))


# -- Azurite -------------------------------------------------------------------------------------------------------


class AzuriteServer:
    """Azurite's blob service (from the repo's node_modules) with its data under ``base_dir``."""

    def __init__(
        self, base_dir: str | os.PathLike[str], port: int | None = None, executable: str | None = None
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.host = LOCALHOST
        self.port = port
        self.executable = Path(executable) if executable else REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
        self.log_file = self.base_dir / "azurite.log"
        self._process = _Process("azurite", self.log_file)

    def __repr__(self) -> str:
        return f"AzuriteServer({str(self.base_dir)!r}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self, timeout: float = 60.0) -> None:
        if self.pid is not None:
            return
        if not os.access(self.executable, os.X_OK):
            raise LocalStackError(f"{self.executable} missing; run scripts/install-deps")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        assert self.port is not None
        port = self.port
        self._process.start(
            [
                str(self.executable),
                "--location", str(self.base_dir / "data"),
                "--blobHost", self.host,
                "--blobPort", str(port),
                "--disableTelemetry",  # on by default: it would phone home from every test run
                "--skipApiVersionCheck",  # the Python SDK may be newer than the emulator
                "--silent",
            ],
            cwd=self.base_dir,
        )
        with self._process.killed_on_error():
            wait_until(self._ready, timeout, f"Azurite on port {port}", alive=self._process.exited)

    def _ready(self) -> bool:
        # Any HTTP answer with Azurite's Server header (this one is a 4xx: the request is unsigned).
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            connection.request("GET", f"/{AZURITE_ACCOUNT}?comp=list")
            response = connection.getresponse()
            response.read()
            return (response.getheader("Server") or "").startswith("Azurite")
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def stop(self, timeout: float = 30.0) -> None:
        self._process.stop(signal.SIGTERM, timeout)


# -- all three -----------------------------------------------------------------------------------------------------


class LocalStack:
    """PostgreSQL, Mosquitto and Azurite under one folder; ``ports`` may fix any of "postgres", "mosquitto",
    "azurite"."""

    def __init__(self, base_dir: str | os.PathLike[str], ports: Mapping[str, int] | None = None) -> None:
        ports = dict(ports or {})
        unknown = set(ports) - {"postgres", "mosquitto", "azurite"}
        if unknown:
            raise ValueError(f"unknown services in ports: {sorted(unknown)}")
        self.base_dir = Path(base_dir).resolve()
        self.postgres = PostgresServer(self.base_dir / "postgres", ports.get("postgres"))
        self.mosquitto = MosquittoBroker(self.base_dir / "mosquitto", ports.get("mosquitto"))
        self.azurite = AzuriteServer(self.base_dir / "azurite", ports.get("azurite"))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.postgres.start()
            self.mosquitto.start()
            self.azurite.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop all three, even if one of them fails to stop; then report the first failure."""
        errors: list[BaseException] = []
        for server in (self.azurite, self.mosquitto, self.postgres):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - the others must still be stopped
                errors.append(exc)
        if errors:
            raise errors[0]

    def environment(self) -> dict[str, str]:
        """The app settings this stack can fill (the database roles are the migrations' business)."""
        broker = self.mosquitto
        return {
            "MQTT_HOST": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_CA_FILE": str(broker.ca_file),
            "MQTT_INGEST_USERNAME": broker.ingest.username,
            "MQTT_INGEST_PASSWORD": broker.ingest.password,
            "MQTT_INGEST_CLIENT_ID": broker.ingest.client_id or "",
            "MQTT_PROVISIONER_USERNAME": broker.provisioner.username,
            "MQTT_PROVISIONER_PASSWORD": broker.provisioner.password,
            "STORAGE_CONNECTION_STRING": self.azurite.connection_string,
        }
