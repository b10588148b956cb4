"""The gateway's centre: sources hand it readings, it buffers them (group commits on the buffer's own thread) and
wakes the device's uplink; it keeps the counters the health report publishes, and knows which source may write
which point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from gateway import contract
from gateway.buffer import STATE, TELEMETRY, Appended, Buffer, Record
from gateway.config import GatewayConfig
from gateway.payloads import clean_value

log = logging.getLogger(__name__)

T = TypeVar("T")


class Writer(Protocol):
    """A source that can write one of its points (only those the configuration marks writable)."""

    async def write(self, metric: str, value: object) -> None: ...


class Waker(Protocol):
    def wake(self) -> None: ...

    def source_state_changed(self) -> None: ...


def now_ms() -> int:
    return int(time.time() * 1000)


def event(name: str, fields: dict[str, Any], level: int = logging.INFO) -> None:
    """One log line, ``<name> {json}``: the same shape as the cloud app's event lines, for grep and journald."""
    log.log(level, "%s %s", name, json.dumps(fields, default=str, separators=(",", ":")))


class Hub:
    def __init__(self, config: GatewayConfig, buffer: Buffer) -> None:
        self.config = config
        self.buffer = buffer
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._incoming: list[Record] = []
        self._flushing: asyncio.Task[None] | None = None
        self._acks: list[tuple[str, tuple[int, ...], float]] = []
        self._acking: asyncio.Task[None] | None = None
        self._announced: set[tuple[str, str]] = set()
        self._units = {device: config.units(device) for device in config.devices}
        self.uplinks: dict[str, Waker] = {}
        self.writers: dict[tuple[str, str], Writer] = {}
        # Source state per device: True while it answers, False once it failed; absent: no source reports one.
        self.source_ok: dict[str, bool] = {}
        # Counters since the last health report (reset by take_interval_counters).
        self.read_errors: defaultdict[str, int] = defaultdict(int)
        self.readings: defaultdict[str, int] = defaultdict(int)
        self.dropped = 0
        self.published = 0
        self.resent = 0
        self.refused = 0
        self.latencies_ms: list[float] = []
        self.stopping = asyncio.Event()
        self.flushed = asyncio.Event()
        self.flushed.set()

    async def db(self, function: Callable[..., T], *args: Any) -> T:
        """Runs a buffer call on the buffer's one thread (FIFO: an ack recorded before a reconnect's re-queue is
        seen by it), so a WAL sync never blocks the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._db, function, *args)

    def add_units(self, device: str, units: dict[str, str]) -> None:
        self._units.setdefault(device, {}).update(units)

    def close(self) -> None:
        self._db.shutdown(wait=True)

    # -- readings in ------------------------------------------------------------------------------------------------

    def submit(self, device: str, ts_ms: int, values: dict[str, Any]) -> None:
        """Buffers one reading of a device's metrics (from the event loop). Values the drain could not store are
        read errors of the source, not readings."""
        records: list[Record] = []
        metrics: dict[str, Any] = {}
        units = self._units.get(device, {})
        for metric, raw in values.items():
            value = clean_value(raw)
            if value is None or not contract.METRIC_RE.match(metric):
                self.read_errors[device] += 1
                continue
            unit = units.get(metric)
            if unit and (device, metric) not in self._announced:
                # The first reading of a metric with a unit, each run: it travels as /state, which carries the unit.
                self._announced.add((device, metric))
                records.append(Record(device, ts_ms, STATE, {"metric": metric, "value": value, "unit": unit}))
            else:
                metrics[metric] = value
        items = list(metrics.items())
        for start in range(0, len(items), contract.MAX_METRICS):
            records.append(Record(device, ts_ms, TELEMETRY, dict(items[start : start + contract.MAX_METRICS])))
        if not records:
            return
        self.readings[device] += sum(len(r.body) if r.kind == TELEMETRY else 1 for r in records)
        self._incoming.extend(records)
        if self._flushing is None:
            self.flushed.clear()
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Group commit: whatever arrived while the previous transaction was syncing goes in the next one."""
        try:
            while self._incoming:
                batch, self._incoming = self._incoming, []
                try:
                    result: Appended = await self.db(self.buffer.append, batch)
                except Exception as exc:  # noqa: BLE001 - a full disk must not stop the gateway; it is counted
                    self.dropped += len(batch)
                    event("buffer.write_failed", {"readings": len(batch), "error": str(exc)[:300]}, logging.ERROR)
                    continue
                self.dropped += result.dropped
                for device in {r.device for r in batch}:
                    uplink = self.uplinks.get(device)
                    if uplink is not None:
                        uplink.wake()
        finally:
            self._flushing = None
            self.flushed.set()

    # -- acknowledgements -------------------------------------------------------------------------------------------

    def acknowledged(self, device: str, seqs: tuple[int, ...], at: float) -> None:
        """Records a PUBACK's rows: coalesced like the appends, so fifty devices' acks cost one transaction."""
        self._acks.append((device, seqs, at))
        if self._acking is None:
            self._acking = asyncio.get_running_loop().create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        try:
            while self._acks:
                batch, self._acks = self._acks, []
                await self.db(self.buffer.mark_acked_many, batch, self.config.publish.resend_window_s)
        finally:
            self._acking = None

    async def settle(self) -> None:
        """Waits until every ack and reading handed over is written."""
        while self._acking is not None or self._flushing is not None:
            await asyncio.wait({t for t in (self._acking, self._flushing) if t is not None})

    async def requeue_acknowledged(self, device: str) -> int:
        """After a (re)connect: the device's acknowledged rows are pending again. The acks recorded before it are
        written first, or an ack from the old connection landing after this would hide a row from the re-send."""
        while self._acking is not None:
            await asyncio.wait({self._acking})
        return await self.db(self.buffer.requeue_acknowledged, device)

    def set_source_ok(self, device: str, ok: bool) -> None:
        if self.source_ok.get(device) != ok:
            self.source_ok[device] = ok
            uplink = self.uplinks.get(device)
            if uplink is not None:
                uplink.source_state_changed()

    # -- commands ---------------------------------------------------------------------------------------------------

    async def handle_command(self, device: str, payload: bytes) -> None:
        """Carries out a command from the API: its name is a writable metric of the device, its args
        {"value": ...}. Acknowledged as every device does, with cmd_ack = the id and cmd_result in its telemetry
        (through the buffer, in the same transaction that records the id, so a redelivered command is not written
        twice)."""
        try:
            command = json.loads(payload)
            command_id = str(command["id"])
            name, args = command.get("name"), command.get("args")
        except (ValueError, KeyError, TypeError):
            event("command.unreadable", {"device": device, "payload": payload[:200]}, logging.WARNING)
            return
        if await self.db(self.buffer.command_result, command_id) is not None:
            return  # a redelivery: carried out and acknowledged already
        writer = self.writers.get((device, str(name)))
        if writer is None:
            result = f"rejected: {str(name)[:64]!r} is not a writable point of {device}"
        elif not isinstance(args, dict) or "value" not in args:
            result = 'rejected: args must be {"value": ...}'
        else:
            try:
                await writer.write(str(name), args["value"])
                result = "applied"
            except Exception as exc:  # noqa: BLE001 - every failure is reported to the API as the command's result
                result = f"failed: {exc}"
        result = result[: contract.MAX_TEXT_VALUE]
        ack = Record(device, now_ms(), TELEMETRY, {contract.ACK_METRIC: command_id, contract.RESULT_METRIC: result})
        if await self.db(self.buffer.record_command, command_id, device, result, ack):
            event("command.done", {"device": device, "id": command_id, "name": name, "result": result})
            uplink = self.uplinks.get(device)
            if uplink is not None:
                uplink.wake()

    # -- health -----------------------------------------------------------------------------------------------------

    def take_interval_counters(self) -> dict[str, Any]:
        counters = {
            "read_errors": dict(self.read_errors),
            "readings": dict(self.readings),
            "dropped": self.dropped,
            "published": self.published,
            "resent": self.resent,
            "refused": self.refused,
            "latencies_ms": self.latencies_ms,
        }
        self.read_errors, self.readings = defaultdict(int), defaultdict(int)
        self.dropped = self.published = self.resent = self.refused = 0
        self.latencies_ms = []
        return counters


async def forever(
    what: str,
    body: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> None:
    """Runs body again after any failure, with a growing pause (reset once it ran a minute), until stopping."""
    delay = first_delay
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a task of the gateway never dies of one failure
            event("task.failed", {"task": what, "error": f"{type(exc).__name__}: {exc}"[:300]}, logging.ERROR)
        if time.monotonic() - started > 60:
            delay = first_delay
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, max_delay)
