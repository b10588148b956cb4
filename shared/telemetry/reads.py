"""Reads for dashboards: latest values with units, the fleet overview, bucketed
series and the ingest overview. Every role reads; the ingest overview is for staff and owners.

Each read runs in tenant_transaction with the tenant of the verified token and re-checks the
caller (users.acting_user), so a deleted user or another tenant's device id reads nothing.
Latest values and units come from device_metrics and the per-minute ingest counts from
ingest_minute_counts, both kept by the drain with each batch (sql/migrations/0007). Series in
whole minutes or hours come from the rollups where the rollup job's watermark says they are
complete, and from raw elsewhere (shared/telemetry/rollups.py); the buckets are the same either way.
"""

from __future__ import annotations

import base64
import math
import unicodedata
from datetime import datetime, timedelta
from typing import Any

from shared.accounts.access import acting_user
from shared.accounts.tokens import Principal
from shared.core.db import DictConnection, DictPool, tenant_transaction
from shared.core.exceptions import DeviceNotFound, InvalidRange, MetricNotNumeric
from shared.core.paging import decode_id_cursor, encode_id_cursor
from shared.core.sql import QUERIES
from shared.telemetry import rollups

SERIES_DEFAULT_POINTS = 500
SERIES_MAX_POINTS = 5000
SERIES_MAX_RANGE = timedelta(days=400)
SERIES_DEFAULT_RANGE = timedelta(days=1)
# Bucket widths a chart axis can label; past the last one, whole days.
NICE_BUCKETS_S = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    2 * 86400,
    7 * 86400,
)

ADMIN_ROLES = ("owner", "staff")
PREVIEW_CHARS = 512
PAYLOAD_SHOWN_BYTES = 4096
RECENT_RUNS = 20


def _require_device(conn: DictConnection, principal: Principal, device_id: int) -> None:
    if (
        conn.execute(QUERIES["device_exists"], {"tenant_id": principal.tenant_id, "device_id": device_id}).fetchone()
        is None
    ):
        raise DeviceNotFound()


# -- latest and fleet ----------------------------------------------------------------------------------------------


def latest(pool: DictPool, principal: Principal, device_id: int) -> list[dict[str, Any]]:
    """The newest value (number, boolean or text), its ts and unit, of each metric of the device."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        _require_device(conn, principal, device_id)
        rows = conn.execute(
            QUERIES["latest_metrics"], {"tenant_id": principal.tenant_id, "device_id": device_id}
        ).fetchall()
    return [_latest_view(row) for row in rows]


def _latest_view(row: dict[str, Any]) -> dict[str, Any]:
    if row["value"] is not None:
        value, kind = row["value"], "number"
    elif row["value_bool"] is not None:
        value, kind = row["value_bool"], "boolean"
    else:
        value, kind = row["value_text"], "text"
    return {
        "metric": row["metric"],
        "value": value,
        "type": kind,
        "unit": row["unit"],
        "ts": row["ts"],
        "first_seen": row["first_seen"],
    }


def fleet(pool: DictPool, principal: Principal) -> dict[str, int]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        row = conn.execute(QUERIES["fleet_counts"], {"tenant_id": principal.tenant_id}).fetchone()
    return dict(row) if row else {"online": 0, "offline": 0, "never_seen": 0, "disabled": 0, "total": 0}


# -- series --------------------------------------------------------------------------------------------------------


def bucket_width_s(span: timedelta, max_points: int, at_least_s: int = 1) -> int:
    """The narrowest chart-friendly width >= at_least_s that gives at most max_points buckets.

    Buckets are aligned to the width, so a range cuts one more bucket than span / width when its
    ends fall inside buckets: hence max_points - 1."""
    needed = max(at_least_s, math.ceil(span.total_seconds() / max(1, max_points - 1)), 1)
    for width in NICE_BUCKETS_S:
        if width >= needed:
            return width
    return math.ceil(needed / 86400) * 86400


def series(
    pool: DictPool,
    principal: Principal,
    device_id: int,
    metric: str,
    start: datetime | None,
    end: datetime | None,
    max_points: int,
    bucket_s: int | None,
    now: datetime,
) -> dict[str, Any]:
    """A metric of a device over [start, end), bucketed server-side (avg, min, max, count).

    Defaults: end = now, start = end - 1 day. Numbers only: a metric whose values are booleans or
    text answers 422 (a chart of averages means nothing for them; /latest shows them)."""
    end = end or now
    try:
        start = start or end - SERIES_DEFAULT_RANGE
    except OverflowError:  # 'to' within a day of year 1
        raise InvalidRange() from None
    if start >= end:
        raise InvalidRange("'from' must be before 'to'.")
    if end - start > SERIES_MAX_RANGE:
        raise InvalidRange(f"A series spans at most {SERIES_MAX_RANGE.days} days; narrow 'from'..'to'.")
    width = bucket_width_s(end - start, max_points, bucket_s or 1)
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        _require_device(conn, principal, device_id)
        meta = conn.execute(
            QUERIES["metric_meta"], {"tenant_id": principal.tenant_id, "device_id": device_id, "metric": metric}
        ).fetchone()
        if meta is not None and not meta["numeric"]:
            raise MetricNotNumeric()
        points = series_points(conn, principal, device_id, metric, start, end, width)
    return {
        "device_id": device_id,
        "metric": metric,
        "unit": meta["unit"] if meta else None,
        "from": start,
        "to": end,
        "bucket_s": width,
        "points": points,
    }


def series_points(
    conn: DictConnection,
    principal: Principal,
    device_id: int,
    metric: str,
    start: datetime,
    end: datetime,
    bucket_s: int,
) -> list[dict[str, Any]]:
    """The one place that reads buckets: from the rollups where they are complete (whole minutes or
    hours, shared.telemetry.rollups.series_points), else from raw; both give the same buckets."""
    points = rollups.series_points(conn, principal.tenant_id, device_id, metric, start, end, bucket_s)
    if points is not None:
        return points
    return conn.execute(
        QUERIES["series_buckets"],
        {
            "tenant_id": principal.tenant_id,
            "device_id": device_id,
            "metric": metric,
            "from": start,
            "to": end,
            "bucket": timedelta(seconds=bucket_s),
        },
    ).fetchall()


# -- ingest overview -----------------------------------------------------------------------------------------------

# -- status history ------------------------------------------------------------------------------------------------


def status_history(
    pool: DictPool, principal: Principal, device_id: int, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The device's status changes, newest first, as the drain recorded them."""
    before_id = decode_id_cursor(cursor, "sh")
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal)
        _require_device(conn, principal, device_id)
        rows = conn.execute(
            QUERIES["status_history"],
            {"tenant_id": principal.tenant_id, "device_id": device_id, "before_id": before_id, "limit": limit + 1},
        ).fetchall()
    next_cursor = encode_id_cursor("sh", rows[limit - 1]["id"]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def ingest_overview(
    pool: DictPool, principal: Principal, *, minutes: int, quiet_minutes: int, cursor: str | None, limit: int
) -> dict[str, Any]:
    """What the drain did for the caller's tenant, and what it could not store."""
    before_id = decode_id_cursor(cursor, "dl")
    tenant = principal.tenant_id
    with tenant_transaction(pool, str(tenant)) as conn:
        acting_user(conn, principal, *ADMIN_ROLES)
        per_minute = conn.execute(QUERIES["ingest_per_minute"], {"tenant_id": tenant, "minutes": minutes}).fetchall()
        by_reason = conn.execute(
            QUERIES["dead_letters_by_reason"], {"tenant_id": tenant, "minutes": minutes}
        ).fetchall()
        dead = conn.execute(
            QUERIES["dead_letters_page"], {"tenant_id": tenant, "before_id": before_id, "limit": limit + 1}
        ).fetchall()
        runs = conn.execute(QUERIES["recent_ingest_runs"], {"limit": RECENT_RUNS}).fetchall()
        quiet = conn.execute(
            QUERIES["quiet_devices"], {"tenant_id": tenant, "quiet_minutes": quiet_minutes, "limit": 100}
        ).fetchall()
    next_cursor = encode_id_cursor("dl", dead[limit - 1]["id"]) if len(dead) > limit else None
    return {
        "minutes": minutes,
        "messages_per_minute": per_minute,
        "dead_letters_by_reason": by_reason,
        "dead_letters": {"items": [_dead_letter_view(row) for row in dead[:limit]], "next_cursor": next_cursor},
        "recent_runs": runs,
        "quiet_minutes": quiet_minutes,
        "quiet_devices": quiet,
    }


def _dead_letter_view(row: dict[str, Any]) -> dict[str, Any]:
    stored = bytes(row["payload"])
    shown = stored[:PAYLOAD_SHOWN_BYTES]
    return {
        "id": row["id"],
        "received_at": row["received_at"],
        "device_id": row["device_id"],
        "device_name": row["device_name"],
        "topic": safe_text(row["topic"], 256),
        "reason": row["reason"],
        "detail": safe_text(row["detail"] or "", PREVIEW_CHARS),
        "payload_bytes": row["payload_bytes"],
        "payload_base64": base64.b64encode(shown).decode(),
        "payload_truncated": len(shown) < row["payload_bytes"],
        "payload_preview": payload_preview(shown),
    }


def payload_preview(payload: bytes, limit: int = PREVIEW_CHARS) -> str:
    """The payload as text a browser or terminal shows as is: UTF-8, with every byte that is not
    valid UTF-8 as \\xNN, every control, format or separator character (NUL, ESC, CR, U+202E,
    U+2028...) as \\xNN or \\uNNNN and a backslash doubled, so nothing can pose as an escape;
    cut at limit characters, with an ellipsis. payload_base64 has the exact bytes."""
    return safe_text(payload.decode("utf-8", errors="surrogateescape"), limit)


def safe_text(text: str, limit: int) -> str:
    out: list[str] = []
    length = 0
    for char in text:
        code = ord(char)
        if char == "\\":
            piece = "\\\\"
        elif 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            piece = f"\\x{code - 0xDC00:02x}"
        elif unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
            piece = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        else:
            piece = char
        if length + len(piece) > limit:
            out.append("…")
            break
        out.append(piece)
        length += len(piece)
    return "".join(out)
