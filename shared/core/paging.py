"""Cursor paging, one codec for every list: a page ends with an opaque cursor naming its last item, and the
next page starts strictly after it. Unlike offsets, a row inserted or deleted meanwhile never shifts a page.

Two keys are in use: (created_at, id) for lists in creation order (users, rules, commands, ...), and a
bigint id under a short kind prefix for lists ordered by id (devices, dead letters, status history, the
audit log). The prefix keeps one list's cursor out of another's. Cursors are URL-safe base64 without
padding; a cursor this API did not hand out is InvalidCursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from shared.core.exceptions import InvalidCursor

_MAX_BIGINT = 2**63 - 1


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


def encode_cursor(created_at: datetime, item_id: uuid.UUID) -> str:
    return _encode(json.dumps([created_at.isoformat(), str(item_id)]))


def decode_cursor(cursor: str | None) -> tuple[datetime | None, uuid.UUID | None]:
    if cursor is None:
        return None, None
    try:
        created_at, item_id = json.loads(_decode(cursor))
        return datetime.fromisoformat(created_at), uuid.UUID(item_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor() from None


def encode_id_cursor(kind: str, item_id: int) -> str:
    return _encode(f"{kind}:{item_id}")


def decode_id_cursor(cursor: str | None, kind: str) -> int | None:
    """The id a page continues from (the caller's query says before or after it)."""
    if cursor is None:
        return None
    try:
        prefix, _, number = _decode(cursor).partition(":")
        if prefix != kind or not number.isdigit() or int(number) > _MAX_BIGINT:
            raise ValueError(prefix)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor() from None


def page_of(rows: list[dict[str, Any]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """rows were fetched with LIMIT limit + 1: the extra row only says another page exists."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last["created_at"], last["id"])
