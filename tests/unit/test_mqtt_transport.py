"""The drain's lean PUBLISH parser, fed hand-built MQTT 5 packets, and the paho pin it relies on."""

from __future__ import annotations

import struct

import pytest

from shared.ingest import transport
from shared.ingest.transport import Publish, parse_publish

PUBLISH = 0x30


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def packet(
    topic: bytes,
    payload: bytes,
    *,
    qos: int = 1,
    mid: int = 7,
    properties: bytes = b"",
    property_length: int | None = None,
) -> bytes:
    """The variable header and payload of a PUBLISH (what paho hands its handler)."""
    header = struct.pack("!H", len(topic)) + topic
    if qos:
        header += struct.pack("!H", mid)
    length = len(properties) if property_length is None else property_length
    return header + varint(length) + properties + payload


def command(qos: int = 1, retain: bool = False) -> int:
    return PUBLISH | (qos << 1) | int(retain)


def test_qos1_publish_gives_topic_payload_and_packet_id():
    parsed = parse_publish(command(1), packet(b"t/a/d/b/telemetry", b'{"metrics":{"x":1}}', mid=513))
    assert parsed == Publish(qos=1, retain=False, mid=513, topic="t/a/d/b/telemetry", payload=b'{"metrics":{"x":1}}')


def test_qos0_publish_has_no_packet_id():
    parsed = parse_publish(command(0), packet(b"t/a/d/b/status", b"online", qos=0))
    assert parsed == Publish(qos=0, retain=False, mid=0, topic="t/a/d/b/status", payload=b"online")


def test_retain_flag_is_reported():
    parsed = parse_publish(command(1, retain=True), packet(b"t/a/d/b/status", b"offline"))
    assert parsed is not None and parsed.retain


def test_v5_properties_are_skipped_whatever_their_length():
    # Content type (0x03) and a user property (0x26) long enough for a two-byte property length.
    content_type = b"\x03" + struct.pack("!H", 16) + b"application/json"
    user = b"\x26" + struct.pack("!H", 4) + b"site" + struct.pack("!H", 300) + b"x" * 300
    properties = content_type + user
    assert len(varint(len(properties))) == 2
    parsed = parse_publish(command(1), packet(b"t/a/d/b/telemetry", b"{}", properties=properties))
    assert parsed is not None and parsed.payload == b"{}" and parsed.topic == "t/a/d/b/telemetry"


def test_empty_payload_is_a_message():
    parsed = parse_publish(command(1, retain=True), packet(b"t/a/d/b/status", b""))
    assert parsed is not None and parsed.payload == b"" and parsed.retain


@pytest.mark.parametrize(
    ("what", "cmd", "raw"),
    [
        ("QoS 2 goes to paho", command(2), packet(b"t/a", b"x")),
        ("a topic alias (empty topic name) goes to paho", command(1), packet(b"", b"x", properties=b"\x23\x00\x05")),
        ("packet id 0 is invalid for QoS 1", command(1), packet(b"t/a", b"x", mid=0)),
        ("truncated before the topic length", command(1), b"\x00"),
        ("topic length past the end", command(1), struct.pack("!H", 200) + b"t/a"),
        ("truncated before the packet id", command(1), struct.pack("!H", 3) + b"t/a" + b"\x00"),
        ("property length past the end", command(1), packet(b"t/a", b"", property_length=50)),
        (
            "property length varint longer than four bytes",
            command(1),
            struct.pack("!H", 3) + b"t/a" + b"\x00\x01" + b"\xff\xff\xff\xff\x01",
        ),
        ("property length varint cut off", command(1), struct.pack("!H", 3) + b"t/a" + b"\x00\x01" + b"\x80"),
        ("topic that is not UTF-8", command(1), packet(b"t/\xff\xfe", b"x")),
    ],
)
def test_what_the_lean_path_does_not_take_goes_to_paho(what, cmd, raw):
    assert parse_publish(cmd, raw) is None, what


def test_the_pinned_paho_has_the_internals_the_fast_path_uses():
    # requirements.txt pins paho-mqtt exactly; if this fails after an upgrade, the drain still
    # works through paho's own path, several times slower: re-check the overridden internals.
    assert transport.FAST_PATH
