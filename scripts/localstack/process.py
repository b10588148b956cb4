"""Running a server as a child of the caller and stopping all of it again, from /proc alone.

A server runs in a process group and session of its own, so a signal reaches its helpers too, and is known by pid and
start time, so a recycled pid is never signalled; stop_process() also serves callers that did not start the process
(`scripts/dev down`). When run as root, a server may run as (or drop to) a service user, so its folders are handed
to that user. Standard library only.
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"


class LocalStackError(RuntimeError):
    """A local server could not be set up, started or stopped."""


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


def is_root() -> bool:
    return os.geteuid() == 0


def chown_tree(path: Path, user: str, skip: Sequence[Path] = ()) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files + dirs:
            item = Path(root, name)
            if item not in skip:
                os.lchown(item, entry.pw_uid, entry.pw_gid)


def chown(user: str, *paths: Path) -> None:
    entry = pwd.getpwnam(user)
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def make_traversable(path: Path) -> None:
    """Let service users walk down to ``path``: add search (not read) permission on ancestors we own.

    Private temp folders such as pytest's /tmp/pytest-of-root are 0700; PostgreSQL and Mosquitto run as other users
    and open their files by absolute path. Search-only permission lets them pass without listing anything.
    """
    me = os.geteuid()
    for parent in reversed(path.parents):
        st = parent.stat()
        if not st.st_mode & stat.S_IXOTH and st.st_uid == me:
            parent.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
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


def run_command(
    cmd: Sequence[str], *, what: str, user: str | None = None, cwd: Path | None = None, stdin_text: str | None = None
) -> str:
    """Run ``cmd`` to completion; ``stdin_text`` is for secrets, which the arguments would show to every local user
    (/proc/PID/cmdline)."""
    result = subprocess.run(
        list(cmd),
        cwd=cwd,
        env=_child_env(),
        input=stdin_text,
        capture_output=True,
        text=True,
        **_as_user(user),
        check=False,
    )
    if result.returncode != 0:
        raise LocalStackError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
    return str(result.stdout)


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a child as ``user`` (with only that user's group), when we are root."""
    if user is None or not is_root():
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _child_env() -> dict[str, str]:
    # libpq/PG* variables of the caller must not redirect our private servers or clients.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
    return env


class ServerProcess:
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
