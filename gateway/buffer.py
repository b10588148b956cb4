"""The store-and-forward buffer: every reading is in this SQLite file (WAL) before it is published, and leaves it
only after the broker acknowledged it and the broker's own crash window has passed.

A reading's row id is its ``seq`` in the native format (AUTOINCREMENT: never reused, even after the rows are
gone), and its ``ts`` is fixed when it is read, so every copy the gateway ever sends of it has the same
(device, metric, ts, seq) dedup key and the drain stores it once however often it arrives.

A row's life: pending (``acked_at`` NULL) -> acknowledged (PUBACK < 128 received; ``acked_at`` set) -> deleted,
once a later PUBACK on the same connection came more than ``resend_window_s`` after it: a broker that was still
answering then had taken a snapshot since (Mosquitto persists by snapshot every autosave_interval, and a SIGKILLed
broker forgets what it acknowledged after its last one). Every (re)connect turns the acknowledged rows of the device
back into pending ones, so what a crashed broker forgot is sent again.

Bounded by ``max_bytes`` of live pages. When full, ``drop_oldest`` deletes the oldest readings to make room (the
newest data is what an operator needs first after an outage), ``drop_newest`` refuses new ones; either way every
dropped reading is counted (``dropped_total``, kept in the file) and logged, never silent. The health device's own
rows are exempt, so the gateway can still say that it is dropping, and so are the few /state readings that carry
each metric's unit.

All methods run on one thread at a time (the gateway gives the buffer a single-thread executor); the lock is for
callers that do not.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

TELEMETRY, STATE = 0, 1  # a row is one telemetry record (body: metrics), or one /state reading (body: value, unit)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    device   TEXT    NOT NULL,
    ts_ms    INTEGER NOT NULL,
    kind     INTEGER NOT NULL,
    body     TEXT    NOT NULL,
    acked_at REAL
);
CREATE INDEX IF NOT EXISTS readings_pending ON readings (device, seq) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS readings_acked ON readings (device, acked_at) WHERE acked_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    id         TEXT PRIMARY KEY,
    device     TEXT NOT NULL,
    result     TEXT NOT NULL,
    applied_at REAL NOT NULL
);
"""
# Applied command ids are kept this long: the broker redelivers a command at most within its message expiry
# (MQTT_COMMAND_EXPIRY_S, an hour by default).
COMMAND_MEMORY_S = 2 * 86400


@dataclass(frozen=True, slots=True)
class Record:
    """A reading on its way into the buffer."""

    device: str
    ts_ms: int
    kind: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    ts_ms: int
    kind: int
    body: str  # JSON, exactly as stored


@dataclass(frozen=True)
class Stats:
    pending: int
    oldest_ts_ms: int | None
    used_bytes: int
    dropped_total: int


@dataclass(frozen=True)
class Appended:
    stored: int
    dropped: int  # by the when-full policy: older rows deleted (drop_oldest) or these refused (drop_newest)


class Buffer:
    def __init__(
        self,
        path: str | Path,
        max_bytes: int,
        when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest",
        synchronous: Literal["full", "normal"] = "full",
        exempt: Iterable[str] = (),
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.exempt = tuple(exempt)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), one per call.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL syncs the WAL on every commit: a power cut keeps what was committed. NORMAL survives a crash of the
        # gateway (SIGKILL) but may lose the last commits to a power cut.
        self._synchronous = "FULL" if synchronous == "full" else "NORMAL"
        self._db.execute(f"PRAGMA synchronous={self._synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing --------------------------------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> Appended:
        """Stores readings in one transaction (one WAL sync however many), applying the when-full policy."""
        if not records:
            return Appended(0, 0)
        with self._lock, self._transaction():
            refused = 0
            if self.when_full == "drop_newest" and self._used_bytes() >= self.max_bytes:
                kept = [r for r in records if r.device in self.exempt]
                refused = len(records) - len(kept)
                records = kept
            self._db.executemany(
                "INSERT INTO readings (device, ts_ms, kind, body) VALUES (?, ?, ?, ?)",
                [(r.device, r.ts_ms, r.kind, json.dumps(r.body, separators=(",", ":"))) for r in records],
            )
            dropped = refused + (self._drop_oldest() if self.when_full == "drop_oldest" else 0)
            if dropped:
                self._count("dropped_total", dropped)
        if dropped:
            log.warning(
                "buffer.full %s",
                json.dumps(
                    {
                        "policy": self.when_full,
                        "dropped": dropped,
                        "max_mb": round(self.max_bytes / 2**20, 3),
                        "what": "oldest readings deleted"
                        if self.when_full == "drop_oldest"
                        else "new readings refused",
                    },
                    separators=(",", ":"),
                ),
            )
        return Appended(len(records), dropped)

    def _drop_oldest(self) -> int:
        """Deletes the oldest non-exempt rows while the live pages exceed the bound: in chunks of a hundredth of the
        rows, so a full buffer pays one delete per hundred appends rather than one per append."""
        dropped = 0
        while self._used_bytes() > self.max_bytes:
            total = self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
            chunk = max(100, total // 100)
            marks = ",".join("?" * len(self.exempt)) or "''"
            deleted = self._db.execute(
                f"DELETE FROM readings WHERE seq IN (SELECT seq FROM readings WHERE kind = {TELEMETRY} "
                f"AND device NOT IN ({marks}) "
                "ORDER BY seq LIMIT ?)",
                (*self.exempt, chunk),
            ).rowcount
            if deleted == 0:
                break
            dropped += deleted
        return dropped

    def mark_acked(self, device: str, seqs: Sequence[int], at: float, resend_window_s: float) -> None:
        self.mark_acked_many([(device, seqs, at)], resend_window_s)

    def mark_acked_many(self, acks: Sequence[tuple[str, Sequence[int], float]], resend_window_s: float) -> None:
        """The broker acknowledged these (device, seqs, when); per device, rows acknowledged more than the window
        before its latest ack are safe in the broker's snapshot by now and go. One transaction for them all, and
        without a WAL sync of its own: an ack lost to a power cut only means the reading is sent again (the next
        append's sync makes it durable anyway)."""
        latest: dict[str, float] = {}
        for device, _, at in acks:
            latest[device] = max(at, latest.get(device, at))
        with self._lock:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction():
                    self._db.executemany(
                        "UPDATE readings SET acked_at = ? WHERE seq = ?",
                        [(at, seq) for _, seqs, at in acks for seq in seqs],
                    )
                    self._db.executemany(
                        "DELETE FROM readings WHERE device = ? AND acked_at IS NOT NULL AND acked_at < ?",
                        [(device, at - resend_window_s) for device, at in latest.items()],
                    )
            finally:
                self._db.execute(f"PRAGMA synchronous={self._synchronous}")

    def requeue_acknowledged(self, device: str) -> int:
        """On every (re)connect: what the broker acknowledged within the window may be what a crashed broker lost,
        so it is pending again and goes out first. Returns how many rows."""
        with self._lock, self._transaction():
            return self._db.execute(
                "UPDATE readings SET acked_at = NULL WHERE device = ? AND acked_at IS NOT NULL", (device,)
            ).rowcount

    def expire(self, older_than_ms: int) -> int:
        """Deletes pending readings too old for the drain to accept (it would dead-letter their whole message)."""
        with self._lock, self._transaction():
            expired = self._db.execute("DELETE FROM readings WHERE ts_ms < ?", (older_than_ms,)).rowcount
            if expired:
                self._count("expired_total", expired)
        if expired:
            log.warning(
                "buffer.expired %s",
                json.dumps({"expired": expired, "older_than_ms": older_than_ms}, separators=(",", ":")),
            )
        return expired

    # -- reading --------------------------------------------------------------------------------------------------

    def pending(self, device: str, after_seq: int, limit: int) -> list[Row]:
        with self._lock:
            return [
                Row(*r)
                for r in self._db.execute(
                    "SELECT seq, ts_ms, kind, body FROM readings WHERE device = ? AND acked_at IS NULL AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (device, after_seq, limit),
                )
            ]

    def stats(self) -> Stats:
        with self._lock:
            pending = self._db.execute("SELECT count(*) FROM readings WHERE acked_at IS NULL").fetchone()[0]
            oldest = self._db.execute("SELECT min(ts_ms) FROM readings WHERE acked_at IS NULL").fetchone()[0]
            return Stats(pending, oldest, self._used_bytes(), self._counter("dropped_total"))

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counter(name)

    def highest_seq(self) -> int:
        """The last seq ever given (sqlite_sequence outlives the rows)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
            return int(row[0]) if row else 0

    # -- commands -------------------------------------------------------------------------------------------------

    def command_result(self, command_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM commands WHERE id = ?", (command_id,)).fetchone()
            return None if row is None else str(row[0])

    def record_command(self, command_id: str, device: str, result: str, ack: Record) -> bool:
        """The command's outcome and its ack reading, in one transaction: a command redelivered after this is
        recognised by its id and not carried out twice. False if it was already recorded."""
        now = time.time()
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM commands WHERE applied_at < ?", (now - COMMAND_MEMORY_S,))
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO commands (id, device, result, applied_at) VALUES (?, ?, ?, ?)",
                (command_id, device, result, now),
            ).rowcount
            if inserted:
                self._db.execute(
                    "INSERT INTO readings (device, ts_ms, kind, body) VALUES (?, ?, ?, ?)",
                    (ack.device, ack.ts_ms, ack.kind, json.dumps(ack.body, separators=(",", ":"))),
                )
        return bool(inserted)

    # -- internals ------------------------------------------------------------------------------------------------

    def _used_bytes(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    def _count(self, name: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
