"""A Modbus TCP device, polled on its own schedule (pymodbus).

Every poll reads the device's points in as few requests as the register map allows (codec.plan_blocks) and
buffers one reading with everything that came back, stamped with the poll's time. A request that times out, fails
or comes back short is a read error of this source: counted for the health report, logged (the first after a good
poll, then once a minute), and the connection is dropped so the next poll starts clean; nothing else waits for it,
so a dead meter never delays the other machines. Three polls in a row without a value mark the device offline
(its status topic), the next good one online again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.codec import Block, DecodeError, encode, plan_blocks, values_of
from gateway.config import ModbusSourceConfig
from gateway.hub import Hub, event, now_ms

log = logging.getLogger(__name__)
# pymodbus logs every timeout and reconnect itself at ERROR; the gateway's own lines say it once, with the device.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

FAILED_POLLS_OFFLINE = 3
ERROR_LOG_EVERY_S = 60.0


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleeps until the next poll, or until the gateway stops; a plain sleep for the short pauses of a fast poll,
    where a wait on the event (a task and a timer each time) would cost more than the poll."""
    if seconds < 0.25:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


class ModbusSource:
    def __init__(self, config: ModbusSourceConfig, hub: Hub) -> None:
        self.config, self.hub = config, hub
        self.device = config.device
        self.blocks = plan_blocks(config.points)
        self.points = {p.metric: p for p in config.points}
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()  # one request at a time on the connection: many devices allow no more
        self._failed_polls = 0
        self._last_error_log = 0.0
        for point in config.points:
            if point.writable:
                hub.writers[(self.device, point.metric)] = self

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while not self.hub.stopping.is_set():
                await self.poll_once()
                # A fixed rate, not a fixed pause: a 1 s meter stays 1 Hz; a late poll skips the slots it missed.
                next_at += self.config.poll_interval_s
                now = loop.time()
                if next_at < now:
                    next_at = now
                await _pause(self.hub.stopping, next_at - now)
        finally:
            self._drop_connection()

    async def poll_once(self) -> None:
        errors: list[str] = []
        values: dict[str, Any] = {}
        async with self._lock:
            ts = now_ms()
            try:
                client = await self._connected()
            except (ModbusException, OSError, TimeoutError) as exc:
                client, errors = None, [f"connect: {exc or type(exc).__name__}"]
            for block in self.blocks:
                if client is None:
                    break
                try:
                    words = await self._read(client, block)
                    got, bad = values_of(block, words)
                    values |= got
                    errors += bad
                except DecodeError as exc:
                    errors.append(str(exc))
                except (ModbusException, OSError, TimeoutError) as exc:
                    errors.append(f"{block.table} {block.address}+{block.count}: {exc or type(exc).__name__}")
                    self._drop_connection()  # whatever it sends next could be the late answer to this request
                    break
        if values:
            self.hub.submit(self.device, ts, values)
        self._account(values, errors)

    def _account(self, values: dict[str, Any], errors: list[str]) -> None:
        if errors:
            self.hub.read_errors[self.device] += len(errors)
            if time.monotonic() - self._last_error_log > ERROR_LOG_EVERY_S or self._failed_polls == 0:
                self._last_error_log = time.monotonic()
                event(
                    "source.read_error",
                    {
                        "device": self.device,
                        "source": "modbus",
                        "endpoint": f"{self.config.host}:{self.config.port}",
                        "errors": errors[:5],
                    },
                    logging.WARNING,
                )
        if values:
            if self._failed_polls >= FAILED_POLLS_OFFLINE:
                event("source.recovered", {"device": self.device, "source": "modbus"})
            self._failed_polls = 0
            self.hub.set_source_ok(self.device, True)
        else:
            self._failed_polls += 1
            if self._failed_polls == FAILED_POLLS_OFFLINE:
                self.hub.set_source_ok(self.device, False)

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_connection()
        # retries=0 and no automatic reconnect: the poll schedule is the retry, and a timeout stays one timeout.
        client = AsyncModbusTcpClient(
            self.config.host,
            port=self.config.port,
            timeout=self.config.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=f"modbus-{self.device}",
        )
        try:
            connected = await asyncio.wait_for(client.connect(), self.config.timeout_s + 1)
        except BaseException:
            client.close()
            raise
        if not connected:
            client.close()
            raise ConnectionError(f"cannot connect to {self.config.host}:{self.config.port}")
        self._client = client
        return client

    def _drop_connection(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _read(self, client: AsyncModbusTcpClient, block: Block) -> list[int] | list[bool]:
        unit = self.config.unit_id
        request = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[block.table]
        # pymodbus' own timeout (timeout_s) bounds the wait for the answer, a device that never answers included.
        response = await request(block.address, count=block.count, device_id=unit)
        if response.isError():
            raise ModbusException(f"exception code {getattr(response, 'exception_code', '?')}")
        return list(response.bits if block.table in ("coil", "discrete") else response.registers)

    async def write(self, metric: str, value: object) -> None:
        point = self.points[metric]
        encoded = encode(value, point)
        async with self._lock:
            client = await self._connected()
            try:
                if isinstance(encoded, bool):
                    response = await asyncio.wait_for(
                        client.write_coil(point.address, encoded, device_id=self.config.unit_id),
                        self.config.timeout_s + 1,
                    )
                else:
                    response = await asyncio.wait_for(
                        client.write_registers(point.address, encoded, device_id=self.config.unit_id),
                        self.config.timeout_s + 1,
                    )
            except (ModbusException, OSError, TimeoutError):
                self._drop_connection()
                raise
        if response.isError():
            raise ModbusException(
                f"the device refused the write: exception code {getattr(response, 'exception_code', '?')}"
            )
        event("source.written", {"device": self.device, "metric": metric, "value": value, "registers": encoded})
