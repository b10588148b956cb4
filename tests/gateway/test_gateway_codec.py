"""Modbus registers to readings and back (gateway/codec.py). No servers."""

from __future__ import annotations

import struct

import pytest

from gateway.codec import Block, DecodeError, EncodeError, decode, encode, plan_blocks, values_of
from gateway.config import ModbusPoint


def point(kind: str, **extra) -> ModbusPoint:
    return ModbusPoint(
        metric="m", table=extra.pop("table", "holding"), address=extra.pop("address", 0), type=kind, **extra
    )


def words(fmt: str, value) -> list[int]:
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


@pytest.mark.parametrize(
    ("kind", "fmt", "value"),
    [
        ("int16", "h", -12345),
        ("uint16", "H", 54321),
        ("int32", "i", -123456789),
        ("uint32", "I", 4000000000),
        ("float32", "f", 2301.5),
    ],
)
@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_every_type_and_order_round_trips(kind, fmt, value, word_order, byte_order):
    p = point(kind, word_order=word_order, byte_order=byte_order)
    registers = encode(value, p)
    assert decode(registers, p) == value
    # and the registers are the big-endian words, reordered as the device says
    expected = words(fmt, value)
    if word_order == "little":
        expected.reverse()
    if byte_order == "little":
        expected = [((w & 0xFF) << 8) | (w >> 8) for w in expected]
    assert registers == expected


def test_scale_and_offset_apply_both_ways_and_keep_floats_clean():
    energy = point("uint32", scale=0.01, unit="kWh")
    assert decode([0x0001, 0x86A0], energy) == 1000.0
    assert decode([3], point("uint16", scale=0.1)) == 0.3  # not 0.30000000000000004
    temperature = point("int16", scale=0.1, offset=-40)
    assert decode(encode(21.5, temperature), temperature) == 21.5
    assert decode([7], point("uint16", scale=2, offset=1)) == 15 and isinstance(
        decode([7], point("uint16", scale=2)), int
    )


def test_values_a_device_cannot_mean_are_errors_not_readings():
    nan = words("f", float("nan"))
    with pytest.raises(DecodeError, match="no value"):
        decode(nan, point("float32"))
    with pytest.raises(EncodeError, match="outside"):
        encode(70000, point("uint16"))
    with pytest.raises(EncodeError, match="outside"):
        encode(-1, point("uint32", scale=0.01))
    with pytest.raises(EncodeError, match="number"):
        encode("fast", point("int16"))
    with pytest.raises(EncodeError, match="coil"):
        encode(5, point("bool", table="coil"))
    assert encode(True, point("bool", table="coil")) is True


def test_points_are_read_in_as_few_requests_as_modbus_allows():
    points = (
        point("uint16", address=0),
        point("uint32", address=1),
        point("float32", address=10),
        point("uint16", address=200),
        point("uint16", address=3, table="input"),
        point("bool", address=5, table="coil"),
        point("bool", address=0, table="coil"),
    )
    blocks = plan_blocks(points)
    assert [(b.table, b.address, b.count, len(b.points)) for b in blocks] == [
        ("holding", 0, 12, 3),
        ("holding", 200, 1, 1),
        ("input", 3, 1, 1),
        ("coil", 0, 6, 2),
    ]
    # a register map larger than one request is split at 125 registers
    many = tuple(point("uint16", address=a) for a in range(300))
    assert [b.count for b in plan_blocks(many)] == [125, 125, 50]


def test_a_short_answer_is_an_error_and_one_bad_point_spares_its_neighbours():
    block = Block("holding", 0, 4, (point("uint16", address=0), ModbusPoint("f", "holding", 2, "float32")))
    with pytest.raises(DecodeError, match="got 3"):
        values_of(block, [1, 2, 3])
    values, errors = values_of(block, [7, 0, *words("f", float("inf"))])
    assert values == {"m": 7} and len(errors) == 1
