"""An OPC UA server (a PLC), read by subscription or by polling (asyncua).

Subscribe (the default) lets the server report each change as it samples it, with the value's own source
timestamp, which is what an OPC UA PLC is built for; poll reads every node each interval, for servers with a poor
subscription implementation. Either way a lost connection (asyncua's watchdog probes the server every second) is a
read error, the device is marked offline, and the session is rebuilt with a growing pause.

Writes go to nodes the configuration marks writable, as the node's own data type (read from the server once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from datetime import datetime
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError

from gateway.config import OpcUaSourceConfig
from gateway.hub import Hub, event, forever, now_ms

log = logging.getLogger(__name__)
for name in ("asyncua", "asyncua.client", "asyncua.common"):
    logging.getLogger(name).setLevel(logging.ERROR)

_INTEGER_RANGES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}


def _ts_ms(value: ua.DataValue) -> int:
    stamp: datetime | None = value.SourceTimestamp or value.ServerTimestamp
    return int(stamp.timestamp() * 1000) if stamp is not None else now_ms()


def as_variant(value: object, kind: ua.VariantType) -> ua.Variant:
    """A command's value as the node's data type, or ValueError saying why it does not fit."""
    if kind == ua.VariantType.Boolean:
        if not isinstance(value, bool):
            raise ValueError("the node is a Boolean: the value must be true or false")
        return ua.Variant(value, kind)
    if kind in _INTEGER_RANGES:
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            raise ValueError(f"the node is an {kind.name}: the value must be a whole number")
        low, high = _INTEGER_RANGES[kind]
        if not low <= int(value) <= high:
            raise ValueError(f"{value} is outside {kind.name}'s {low}..{high}")
        return ua.Variant(int(value), kind)
    if kind in (ua.VariantType.Float, ua.VariantType.Double):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"the node is a {kind.name}: the value must be a number")
        return ua.Variant(float(value), kind)
    if kind == ua.VariantType.String:
        if not isinstance(value, str):
            raise ValueError("the node is a String: the value must be text")
        return ua.Variant(value, kind)
    raise ValueError(f"writing a {kind.name} node is not supported")


class OpcUaSource:
    def __init__(self, config: OpcUaSourceConfig, hub: Hub) -> None:
        self.config, self.hub = config, hub
        self.device = config.device
        self._client: Client | None = None
        self._nodes: dict[str, Node] = {}
        self._metric_of: dict[Any, str] = {}
        self._types: dict[str, ua.VariantType] = {}
        self._lost = asyncio.Event()
        for node in config.nodes:
            if node.writable:
                hub.writers[(self.device, node.metric)] = self

    async def run(self) -> None:
        await forever(f"opcua {self.device}", self._session, self.hub.stopping, max_delay=30.0)

    async def _session(self) -> None:
        config = self.config
        client = Client(config.url, timeout=config.timeout_s)
        if config.username:
            client.set_user(config.username)
        if config.password:
            client.set_password(config.password)
        if config.security:
            await client.set_security_string(config.security)
        self._lost.clear()

        async def lost(exc: Exception) -> None:
            self._lost.set()

        client.connection_lost_callback = lost
        try:
            await client.connect()
        except BaseException as exc:
            self._failed(f"connect to {config.url}: {exc or type(exc).__name__}")
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            raise
        try:
            self._client = client
            self._nodes = {n.metric: client.get_node(n.node_id) for n in config.nodes}
            self._metric_of = {node.nodeid: metric for metric, node in self._nodes.items()}
            event(
                "source.connected", {"device": self.device, "source": "opcua", "url": config.url, "mode": config.mode}
            )
            if config.mode == "subscribe":
                await self._subscribe(client)
            else:
                await self._poll(client)
            if self._lost.is_set():
                self._failed(f"connection to {config.url} lost")
        finally:
            self._client = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), config.timeout_s)

    async def _subscribe(self, client: Client) -> None:
        subscription = await client.create_subscription(self.config.interval_s * 1000, self)
        results = await subscription.subscribe_data_change(list(self._nodes.values()))
        bad = [metric for metric, r in zip(self._nodes, results, strict=True) if isinstance(r, ua.StatusCode)]
        if bad:
            self.hub.read_errors[self.device] += len(bad)
            event(
                "source.read_error",
                {"device": self.device, "source": "opcua", "errors": [f"cannot subscribe to {m}" for m in bad]},
                logging.WARNING,
            )
        if len(bad) == len(self._nodes):
            raise ConnectionError("none of the nodes could be subscribed to")
        self.hub.set_source_ok(self.device, True)
        stop = asyncio.ensure_future(self.hub.stopping.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            lost.cancel()

    # asyncua's subscription handler interface
    def datachange_notification(self, node: Node, value: Any, data: Any) -> None:
        metric = self._metric_of.get(node.nodeid)
        data_value: ua.DataValue = data.monitored_item.Value
        if metric is None:
            return
        if data_value.StatusCode is not None and not data_value.StatusCode.is_good():
            self.hub.read_errors[self.device] += 1
            return
        self.hub.submit(self.device, _ts_ms(data_value), {metric: value})

    def status_change_notification(self, status: Any) -> None:
        self._lost.set()

    async def _poll(self, client: Client) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.hub.stopping.is_set() and not self._lost.is_set():
            ts = now_ms()
            try:
                values = await client.read_attributes(list(self._nodes.values()), AttributeIds.Value)
            except (OSError, TimeoutError, UaError) as exc:
                self._failed(f"read: {exc or type(exc).__name__}")
                return
            readings: dict[str, Any] = {}
            for metric, data_value in zip(self._nodes, values, strict=True):
                if data_value.StatusCode is None or data_value.StatusCode.is_good():
                    readings[metric] = data_value.Value.Value if data_value.Value is not None else None
                else:
                    self.hub.read_errors[self.device] += 1
            if readings:
                self.hub.submit(self.device, ts, readings)
            self.hub.set_source_ok(self.device, bool(readings))
            next_at = max(next_at + self.config.interval_s, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hub.stopping.wait(), next_at - loop.time())

    def _failed(self, error: str) -> None:
        self.hub.read_errors[self.device] += 1
        self.hub.set_source_ok(self.device, False)
        event("source.read_error", {"device": self.device, "source": "opcua", "errors": [error[:300]]}, logging.WARNING)

    async def write(self, metric: str, value: object) -> None:
        client, node = self._client, self._nodes.get(metric)
        if client is None or node is None:
            raise ConnectionError(f"not connected to {self.config.url}")
        if metric not in self._types:
            self._types[metric] = await node.read_data_type_as_variant_type()
        variant = as_variant(value, self._types[metric])
        await node.write_value(ua.DataValue(variant))
        event("source.written", {"device": self.device, "metric": metric, "value": value})
