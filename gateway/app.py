"""Wires the gateway together and runs it until SIGTERM or SIGINT: the buffer, one uplink per device, the sources,
the health report and the buffer's expiry; then stops in order (sources, the last buffer writes, the uplinks with
their "offline" status)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from gateway.buffer import Buffer
from gateway.config import GatewayConfig
from gateway.health import HEALTH_UNITS, report_health
from gateway.hub import Hub, event, forever
from gateway.sources.lan_mqtt import LanMqttSource
from gateway.sources.modbus import ModbusSource
from gateway.sources.opcua import OpcUaSource
from gateway.uplink import Uplink, tls_context

log = logging.getLogger(__name__)

EXPIRE_EVERY_S = 600.0


def open_buffer(config: GatewayConfig) -> Buffer:
    exempt = [config.health.device] if config.health.device else []
    return Buffer(
        config.buffer.path,
        int(config.buffer.max_mb * 2**20),
        config.buffer.when_full,
        config.buffer.synchronous,
        exempt,
    )


async def run(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    buffer = open_buffer(config)
    hub = Hub(config, buffer)
    if config.health.device:
        hub.add_units(config.health.device, HEALTH_UNITS)
    tls = tls_context(config.broker)
    uplinks = {
        device: Uplink(hub, config.tenant, config.credentials[device], config.broker, config.publish, tls)
        for device in config.devices
    }
    hub.uplinks.update(uplinks)
    sources: list[Any] = [
        *(ModbusSource(s, hub) for s in config.modbus),
        *(OpcUaSource(s, hub) for s in config.opcua),
        *(LanMqttSource(s, hub) for s in config.lan_mqtt),
    ]
    stats = await hub.db(buffer.stats)
    event(
        "gateway.started",
        {
            "tenant": config.tenant,
            "devices": config.devices,
            "sources": len(sources),
            "buffer": str(config.buffer.path),
            "pending": stats.pending,
            "last_seq": await hub.db(buffer.highest_seq),
            "resend_window_s": config.publish.resend_window_s,
        },
    )
    uplink_tasks = [loop.create_task(u.run(), name=f"uplink {d}") for d, u in uplinks.items()]
    source_tasks = [
        loop.create_task(forever(f"source {type(s).__name__}", s.run, hub.stopping), name=f"source {type(s).__name__}")
        for s in sources
    ]
    source_tasks.append(loop.create_task(report_health(hub, lambda: sum(u.connected for u in uplinks.values()))))
    source_tasks.append(loop.create_task(_expire(hub)))
    await stop.wait()
    event("gateway.stopping", {})
    hub.stopping.set()
    await asyncio.gather(*source_tasks, return_exceptions=True)
    await hub.flushed.wait()  # the readings read so far are in the buffer
    for uplink in uplinks.values():
        uplink.wake_always()
    _, late = await asyncio.wait(uplink_tasks, timeout=10)
    for task in late:
        task.cancel()
    await hub.settle()
    hub.close()
    stats = buffer.stats()
    buffer.close()
    event("gateway.stopped", {"pending": stats.pending})


async def _expire(hub: Hub) -> None:
    """Readings older than max_age_days cannot be stored by the drain, and would take their whole message with
    them into the dead-letter table; they are deleted (counted and logged) before that."""
    max_age_ms = int(hub.config.publish.max_age_days * 86400 * 1000)
    while not hub.stopping.is_set():
        hub.dropped += await hub.db(hub.buffer.expire, int(time.time() * 1000) - max_age_ms)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.stopping.wait(), EXPIRE_EVERY_S)
