"""Modbus registers to readings and back: data types, word and byte order, scale and offset; and the blocks a
device's points are read in.

Modbus itself only defines 16-bit registers, sent big-endian. A 32-bit value spans two registers, and vendors
disagree on their order (word order) and, more rarely, on the byte order within a register; both are per point in
the configuration. A value that is not a finite number (a float32 NaN, which meters use for "no value") is a read
error, never a reading: the drain rejects a whole message for one NaN.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from gateway.config import ModbusPoint

_STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
# Largest request Modbus allows: 125 registers (function 3/4), 2000 bits (function 1/2).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000
# Registers between two points that are still worth reading in one request rather than two round trips.
MAX_GAP = 16


class DecodeError(ValueError):
    """The registers do not hold a value that can be stored (NaN, infinity)."""


class EncodeError(ValueError):
    """A value cannot be written to the point (wrong type, out of the type's range)."""


def _to_bytes(registers: list[int], point: ModbusPoint) -> bytes:
    words = list(registers) if point.word_order == "big" else list(reversed(registers))
    return b"".join(word.to_bytes(2, point.byte_order) for word in words)


def _to_registers(raw: bytes, point: ModbusPoint) -> list[int]:
    words = [int.from_bytes(raw[i : i + 2], point.byte_order) for i in range(0, len(raw), 2)]
    return words if point.word_order == "big" else list(reversed(words))


def decode(registers: list[int], point: ModbusPoint) -> int | float:
    """The reading a point's registers hold: raw * scale + offset (an int while both keep it one)."""
    raw: int | float = struct.unpack(">" + _STRUCT[point.type], _to_bytes(registers, point))[0]
    if point.type == "float32" and not math.isfinite(raw):
        raise DecodeError(f"{point.metric}: the device sent {raw} (no value)")
    if point.scale == 1 and point.offset == 0:
        return raw
    value = float(raw * point.scale + point.offset)
    if not math.isfinite(value):
        raise DecodeError(f"{point.metric}: {raw} x {point.scale} + {point.offset} is not finite")
    value = round(value, 9)  # 0.1 * 3 is 0.30000000000000004; nine places are below any meter's resolution
    if point.type != "float32" and float(point.scale).is_integer() and float(point.offset).is_integer():
        return int(value)  # an integer register scaled by whole numbers stays an integer
    return value


def encode(value: object, point: ModbusPoint) -> list[int] | bool:
    """What to write for a reading value: registers for a holding register, a bool for a coil."""
    if point.type == "bool":
        if not isinstance(value, bool) and value not in (0, 1):
            raise EncodeError(f"{point.metric} is a coil: the value must be true or false")
        return bool(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EncodeError(f"{point.metric}: the value must be a number")
    raw: float = (value - point.offset) / point.scale
    if point.type == "float32":
        packed = struct.pack(">f", raw)
        if not math.isfinite(struct.unpack(">f", packed)[0]):
            raise EncodeError(f"{point.metric}: {value} does not fit a float32")
    else:
        integer = round(raw)
        bits = 16 if point.type.endswith("16") else 32
        low, high = (0, 2**bits - 1) if point.type.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if not low <= integer <= high:
            raise EncodeError(
                f"{point.metric}: {value} is outside what a {point.type} holds here "
                f"({low * point.scale + point.offset:g} to {high * point.scale + point.offset:g})"
            )
        packed = struct.pack(">" + _STRUCT[point.type], integer)
    return _to_registers(packed, point)


@dataclass(frozen=True)
class Block:
    """One read request: a table, a start address, a count, and the points inside it."""

    table: str
    address: int
    count: int
    points: tuple[ModbusPoint, ...]


def plan_blocks(points: tuple[ModbusPoint, ...]) -> list[Block]:
    """The fewest requests that read every point: neighbours in one table share a request while it stays within
    Modbus's size limit and the gap between them is small (a meter's registers sit together; one round trip on a
    slow RS-485 bridge costs more than a few unused registers)."""
    blocks: list[Block] = []
    for table in ("holding", "input", "coil", "discrete"):
        limit = MAX_BITS_PER_READ if table in ("coil", "discrete") else MAX_REGISTERS_PER_READ
        current: list[ModbusPoint] = []
        start = end = 0
        for point in sorted((p for p in points if p.table == table), key=lambda p: p.address):
            point_end = point.address + point.count
            if current and point.address - end <= MAX_GAP and max(end, point_end) - start <= limit:
                current.append(point)
                end = max(end, point_end)
                continue
            if current:
                blocks.append(Block(table, start, end - start, tuple(current)))
            current, start, end = [point], point.address, point_end
        if current:
            blocks.append(Block(table, start, end - start, tuple(current)))
    return blocks


def values_of(block: Block, words: list[int] | list[bool]) -> tuple[dict[str, int | float | bool], list[str]]:
    """The readings of a block's points from the words (or bits) the device answered, and an error for each point
    that could not be decoded (the others are kept)."""
    if len(words) < block.count:
        raise DecodeError(f"asked for {block.count} {block.table} values from {block.address}, got {len(words)}")
    values: dict[str, int | float | bool] = {}
    errors: list[str] = []
    for point in block.points:
        at = point.address - block.address
        if point.type == "bool":
            values[point.metric] = bool(words[at])
            continue
        try:
            values[point.metric] = decode([int(w) for w in words[at : at + point.count]], point)
        except DecodeError as exc:
            errors.append(str(exc))
    return values, errors
