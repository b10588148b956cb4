"""Sparkplug B 3.0 for the drain: an edge node's births, data and deaths into readings and presence.

The contract maps the namespace: spBv1.0/{group id = tenant}/{type}/{edge node id = device}[/{sub}].
NBIRTH and DBIRTH define the metrics (names, aliases, datatypes), which the device's decoder state
keeps across runs; NDATA and DDATA carry values by alias; NDEATH marks the device offline (unless its
bdSeq says it is a stale will of an earlier session), DDEATH a sub-device. Every message but NDEATH
carries the node's sequence number (0-255, wrapping), stored as the readings' seq: a gap is recorded
as an event and, like data with an alias no birth defined, asks the node for a rebirth on its NCMD
topic (published by the drain through the commander credential, at most once a minute per node).
Payloads are parsed with Eclipse Tahu's schema (sparkplug_b_pb2, made by scripts/sparkplug_schema.py).

A sub-device's metrics are stored as {sub}.{metric}, with {sub}.online for its birth and death; '/' in
a metric's name becomes '.', and control metrics (bdSeq, Node Control/*, Device Control/*) are not
data. DataSet, Template, File, Bytes, PropertySet and array metrics cannot be stored as one value:
their names are reported once per birth (an unsupported_metrics event).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from shared.ingest.decoding import Decoded, Value, check_value, metric_name
from shared.ingest.sparkplug.sparkplug_b_pb2 import Payload
from shared.ingest.validation import Rejected

NAME = "sparkplug-b"
SEQ_MODULO = 256
REBIRTH_INTERVAL_US = 60_000_000
REBIRTH_METRIC = "Node Control/Rebirth"
BOOLEAN = 11
_CONTROL_PREFIXES = ("Node Control/", "Device Control/")
# DataType numbers (sparkplug_b.proto): the scalar ones a metric's value can be stored as.
_SIGNED_32 = {1: 8, 2: 16, 3: 32}
_INT64, _DATETIME = 4, 13
_SCALAR = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}


class SparkplugRejected(Rejected):
    """A message that cannot be stored, and what the decoder learnt from it all the same."""

    def __init__(self, reason: str, detail: str, decoded: Decoded) -> None:
        super().__init__(reason, detail)
        self.decoded = decoded


def rebirth_payload(now_ms: int) -> bytes:
    """An NCMD asking the node to publish its births again (Node Control/Rebirth = true)."""
    payload = Payload(timestamp=now_ms)
    payload.metrics.add(name=REBIRTH_METRIC, datatype=BOOLEAN, boolean_value=True)
    return payload.SerializeToString()


def _value(metric: Any, datatype: int) -> Value | None:
    kind = metric.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(metric, kind)
    if datatype in _SIGNED_32 and kind == "int_value":
        bits = _SIGNED_32[datatype]
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if raw >= 1 << (bits - 1) else raw  # type: ignore[no-any-return]
    if datatype == _INT64 and kind == "long_value" and raw >= 1 << 63:
        return raw - (1 << 64)  # type: ignore[no-any-return]
    if kind in ("int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"):
        return raw  # type: ignore[no-any-return]
    return None


class SparkplugDecoder:
    """The sparkplug-b built-in. topic is the message type, with "/{sub}" for a device message."""

    stateful = True

    name = NAME

    def decode(self, prefix: str, topic: str, payload: bytes, state: dict[str, Any], received_us: int) -> Decoded:
        kind, _, sub = topic.partition("/")
        try:
            message = Payload.FromString(payload)
        except DecodeError:
            raise Rejected("invalid_payload", f"not a Sparkplug B payload ({len(payload)} bytes)") from None
        node: dict[str, Any] = state.setdefault("spb", {})
        out = Decoded(state_changed=True)
        if kind == "NDEATH":
            return self._death(message, node, out)
        if kind == "NBIRTH":
            node.clear()
            node.update({"aliases": {}, "devices": {}, "online": True})
            out.status = "online"
            out.events.append(("node_birth", {"seq": message.seq}))
        elif "aliases" not in node:
            # Data (or a device birth) from a node whose birth this platform has not seen.
            self._ask_rebirth(node, out, received_us)
            raise SparkplugRejected(
                "sparkplug_no_birth", f"{kind} before any NBIRTH of this node; a rebirth was requested", out
            )
        self._check_seq(kind, message, node, out, received_us)
        scope = sub if sub else ""
        aliases: dict[str, list[Any]] = node["aliases"].setdefault(scope, {})
        if kind == "DBIRTH":
            aliases.clear()
            node["devices"][sub] = True
            out.events.append(("device_birth", {"device": sub}))
        elif kind == "DDEATH":
            node["devices"][sub] = False
            out.events.append(("device_death", {"device": sub}))
        birth = kind in ("NBIRTH", "DBIRTH")
        base = f"{sub}/" if sub else ""
        default_ts = message.timestamp * 1000 if message.HasField("timestamp") else None
        by_ts: dict[int | None, dict[str, Value]] = {}
        unknown: list[int] = []
        unsupported: list[str] = []
        for metric in message.metrics:
            name, datatype = metric.name, metric.datatype
            if metric.HasField("alias"):
                alias = str(metric.alias)
                if birth:
                    aliases[alias] = [name, datatype]
                elif not name:
                    known = aliases.get(alias)
                    if known is None:
                        unknown.append(metric.alias)
                        continue
                    name, datatype = known[0], datatype or known[1]
            if not name or name == "bdSeq" or name.startswith(_CONTROL_PREFIXES):
                if birth and name == "bdSeq" and kind == "NBIRTH":
                    node["bd_seq"] = _value(metric, datatype or 8)
                continue
            if metric.is_null or metric.is_transient:
                continue
            if datatype not in _SCALAR:
                unsupported.append(name)
                continue
            value = _value(metric, datatype)
            if value is None:
                continue
            stored = metric_name((base + name).replace("/", "."))
            ts = metric.timestamp * 1000 if metric.HasField("timestamp") else default_ts
            by_ts.setdefault(ts, {})[stored] = check_value(stored, value)
        if sub and kind in ("DBIRTH", "DDEATH"):
            by_ts.setdefault(default_ts, {})[metric_name(f"{sub}.online")] = kind == "DBIRTH"
        if birth and unsupported:
            out.events.append(("unsupported_metrics", {"device": sub or None, "metrics": unsupported[:50]}))
        # The node's seq tells two messages' readings of one metric in one millisecond apart (the dedup
        # key is device, metric, ts, seq), while a redelivered message stores nothing twice.
        seq = message.seq if message.HasField("seq") else 0
        out.records.extend((ts, seq, metrics) for ts, metrics in by_ts.items() if metrics)
        if unknown:
            self._ask_rebirth(node, out, received_us)
            raise SparkplugRejected(
                "sparkplug_unknown_alias",
                f"{kind} uses aliases {sorted(set(unknown))[:10]} that no birth defined; a rebirth was requested",
                out,
            )
        return out

    def _death(self, message: Any, node: dict[str, Any], out: Decoded) -> Decoded:
        bd_seq = next((_value(m, m.datatype or 8) for m in message.metrics if m.name == "bdSeq"), None)
        if bd_seq is not None and node.get("bd_seq") is not None and bd_seq != node["bd_seq"]:
            # The will of an earlier session, delivered after the node came back: not news.
            out.events.append(("node_death", {"stale": True, "bd_seq": bd_seq}))
            return out
        node["online"] = False
        out.status = "offline"
        devices: dict[str, bool] = node.get("devices", {})
        offline = {metric_name(f"{sub}.online"): False for sub, up in devices.items() if up}
        for sub in devices:
            devices[sub] = False
        if offline:
            out.records.append((None, 0, offline))  # type: ignore[arg-type]
        out.events.append(("node_death", {"bd_seq": bd_seq}))
        return out

    def _check_seq(self, kind: str, message: Any, node: dict[str, Any], out: Decoded, received_us: int) -> None:
        if not message.HasField("seq"):
            return
        seq = message.seq
        last = node.get("seq")
        if kind != "NBIRTH" and last is not None and seq != (last + 1) % SEQ_MODULO:
            out.events.append(("seq_gap", {"expected": (last + 1) % SEQ_MODULO, "got": seq, "type": kind}))
            self._ask_rebirth(node, out, received_us)
        node["seq"] = seq

    def _ask_rebirth(self, node: dict[str, Any], out: Decoded, received_us: int) -> None:
        last = node.get("rebirth_at")
        if last is None or received_us - last >= REBIRTH_INTERVAL_US:
            node["rebirth_at"] = received_us
            out.rebirth = True
            out.events.append(("rebirth_requested", {}))
