"""Buffered rows to native-format messages, within the drain's limits.

Telemetry rows become JSON lists of ``{"ts", "seq", "metrics"}`` records on ``.../telemetry``: as many per message
as fit ``max_records`` and MAX_PAYLOAD_BYTES, since one message carrying many readings costs the broker and the
drain about what one reading does. A unit can only travel in the single-entity form, so the first reading of a
metric that has one goes as ``{"value", "unit", "ts"}`` on ``.../{metric}/state`` (the drain keeps the unit per
device and metric); the row was made that way when the reading was buffered, so every re-send of it is the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway import contract
from gateway.buffer import STATE, Row

# A list's brackets, plus slack: the payload limit is a hard edge at the drain.
_ENVELOPE = 16


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    seqs: tuple[int, ...]  # the buffer rows it carries


def build_messages(
    tenant: str, device: str, rows: Sequence[Row], max_records: int, max_bytes: int = contract.MAX_PAYLOAD_BYTES
) -> list[Message]:
    prefix = contract.device_prefix(tenant, device)
    messages: list[Message] = []
    parts: list[str] = []
    seqs: list[int] = []
    size = _ENVELOPE

    def flush() -> None:
        nonlocal parts, seqs, size
        if parts:
            messages.append(
                Message(f"{prefix}/{contract.TELEMETRY_FORM}", ("[" + ",".join(parts) + "]").encode(), tuple(seqs))
            )
        parts, seqs, size = [], [], _ENVELOPE

    for row in rows:
        if row.kind == STATE:
            state = json.loads(row.body)
            payload = {"value": state["value"], "ts": row.ts_ms}
            if state.get("unit"):
                payload["unit"] = state["unit"]
            messages.append(
                Message(
                    f"{prefix}/{state['metric']}/{contract.STATE_SUFFIX}",
                    json.dumps(payload, separators=(",", ":")).encode(),
                    (row.seq,),
                )
            )
            continue
        part = f'{{"ts":{row.ts_ms},"seq":{row.seq},"metrics":{row.body}}}'
        length = len(part.encode()) + 1
        if parts and (len(parts) >= max_records or size + length > max_bytes):
            flush()
        parts.append(part)
        seqs.append(row.seq)
        size += length
    flush()
    return messages


def clean_value(value: object) -> bool | int | float | str | None:
    """A value as the drain can store it (a number, true/false, a string of at most 256 characters), or None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= contract.MAX_TEXT_VALUE and "\x00" not in value else None
    return None
