"""The one cursor codec: the cursors clients already hold still decode, and one list's cursor is refused by another."""

import base64
import uuid
from datetime import UTC, datetime

import pytest

from shared.core.exceptions import InvalidCursor
from shared.core.paging import decode_cursor, decode_id_cursor, encode_cursor, encode_id_cursor


def test_id_cursors_keep_their_wire_form():
    # GIVEN the forms the device list, dead letters, status history and audit log have always handed out
    for kind in ("d", "dl", "sh", "audit"):
        issued = base64.urlsafe_b64encode(f"{kind}:42".encode()).decode().rstrip("=")
        # THEN they decode, and encoding gives the same string back
        assert decode_id_cursor(issued, kind) == 42
        assert encode_id_cursor(kind, 42) == issued


@pytest.mark.parametrize(
    "cursor",
    [
        encode_id_cursor("dl", 7),
        encode_id_cursor("d", 2**63),
        "not base64 !",
        base64.urlsafe_b64encode(b"d:-1").decode(),
        base64.urlsafe_b64encode(b"\xff").decode(),
    ],
)
def test_a_foreign_or_broken_id_cursor_is_refused(cursor):
    with pytest.raises(InvalidCursor):
        decode_id_cursor(cursor, "d")


def test_creation_order_cursor_round_trips_and_refuses_garbage():
    created, item = datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(created, item)) == (created, item)
    assert decode_cursor(None) == (None, None)
    with pytest.raises(InvalidCursor):
        decode_cursor(encode_id_cursor("d", 1))
