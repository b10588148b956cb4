"""A private PostgreSQL cluster: initdb on first start, the postmaster as our own child, recovery after kill().

Over TCP every role, the superuser included, must give its password (scram-sha-256), as on Azure, so a wrong password
in the settings fails locally too. Only the unix socket, in a 0700 folder, trusts its callers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path

from .process import (
    LOCALHOST,
    LocalStackError,
    ServerProcess,
    chown,
    free_port,
    is_root,
    make_traversable,
    run_command,
    wait_until,
    write_private,
)

SUPERUSER = "postgres"
# In base_dir, 0600. It exists once the server has the password, so a start that failed half-way sets it again.
SUPERUSER_PASSWORD_FILE = "superuser-password"

# Written into the data folder on every start: clusters made by earlier versions of this file trusted TCP too.
PG_HBA_CONF = """\
# Written by scripts/localstack on every start; edits are lost.
# The socket folder is 0700: only the server's user (and root) can reach it.
local   all   all                 trust
host    all   all   all           scram-sha-256
"""


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
        self.password_file = self.base_dir / SUPERUSER_PASSWORD_FILE
        self.host = LOCALHOST
        self.port = port
        self.extra_conf = dict(extra_conf or {})
        self._bin = postgres_bin_dir()
        self._user = "postgres" if is_root() else None
        self._process = ServerProcess("postgres", self.log_file)

    def __repr__(self) -> str:
        return f"PostgresServer({str(self.base_dir)!r}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def superuser_password(self) -> str:
        """Read from base_dir, so every process that knows the folder (scripts/dev, a test) has it."""
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            raise LocalStackError(f"{self.password_file} missing: start() sets the superuser password") from None

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.superuser_password}@{self.host}:{self.port}/{dbname}"

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
            chown(self._user, self.base_dir, self.socket_dir, self.log_file)
            make_traversable(self.base_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            run_command(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                what="initdb",
                user=self._user,
                cwd=self.base_dir,
            )
        self._write_hba()
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
            if not self.password_file.exists():
                self._set_superuser_password()

    def _write_hba(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        write_private(hba, PG_HBA_CONF)
        if self._user:
            chown(self._user, hba)

    def _set_superuser_password(self) -> None:
        """Over the socket, with PostgreSQL's own client: a fresh cluster's superuser has no password, nor has one
        made by an earlier version of this file."""
        password = secrets.token_hex(32)
        run_command(
            [
                str(self._bin / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ],
            what="psql: set the superuser password",
            user=self._user,
            cwd=self.base_dir,
            stdin_text=f"ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n",
        )
        write_private(self.password_file, password + "\n")

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
