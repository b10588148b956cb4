"""The gateway's own health, every ``interval_s``, as readings of its [health] device (through the buffer like any
other reading, so an outage's report arrives after it), and as a ``gateway.health`` log line.

Counts are per interval (what happened since the previous report), so an alert rule reads them directly: "max of
read_errors.meter-01 over 5 minutes > 0", "buffer_oldest_s > 300".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import statistics
import time
from typing import Any

from gateway.hub import Hub, event, now_ms

log = logging.getLogger(__name__)

HEALTH_UNITS = {
    "buffer_oldest_s": "s",
    "buffer_mb": "MB",
    "publish_latency_ms_p50": "ms",
    "publish_latency_ms_max": "ms",
    "rss_mb": "MB",
}


def rss_mb() -> float:
    """Resident memory now (Linux), else the peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def health_readings(hub: Hub, stats: Any, counters: dict[str, Any], connected: int) -> dict[str, Any]:
    now = now_ms()
    latencies = counters["latencies_ms"]
    readings: dict[str, Any] = {
        "buffer_readings": stats.pending,
        "buffer_oldest_s": round(max(0, now - stats.oldest_ts_ms) / 1000, 1) if stats.oldest_ts_ms else 0,
        "buffer_mb": round(stats.used_bytes / 2**20, 3),
        "buffer_dropped": counters["dropped"],
        "buffer_dropped_total": stats.dropped_total,
        "published": counters["published"],
        "resent": counters["resent"],
        "refused": counters["refused"],
        "uplinks_connected": connected,
        "uplinks": len(hub.uplinks),
        "rss_mb": round(rss_mb(), 1),
    }
    if latencies:
        readings["publish_latency_ms_p50"] = round(statistics.median(latencies), 2)
        readings["publish_latency_ms_max"] = round(max(latencies), 2)
    for device in hub.config.devices:
        if device != hub.config.health.device:
            readings[f"read_errors.{device}"] = counters["read_errors"].get(device, 0)
    return readings


async def report_health(hub: Hub, connected: Any) -> None:
    """Runs until the gateway stops; connected() counts the uplinks that are up."""
    device = hub.config.health.device
    interval = hub.config.health.interval_s
    next_at = time.monotonic() + min(interval, 5.0)  # the first soon after start: the dashboard sees it at once
    while not hub.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hub.stopping.wait(), max(0.0, next_at - time.monotonic()))
        if hub.stopping.is_set():
            return
        next_at += interval
        stats = await hub.db(hub.buffer.stats)
        readings = health_readings(hub, stats, hub.take_interval_counters(), connected())
        event("gateway.health", readings)
        if device:
            hub.submit(device, now_ms(), readings)
