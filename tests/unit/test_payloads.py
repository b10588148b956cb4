"""Pure validation and batch preparation: no broker, no database."""

from __future__ import annotations

import pytest

from shared.ingest.batch import prepare_batch
from shared.ingest.messages import DeviceRef, InboundMessage, Presence, TimeWindow
from shared.ingest.store import DeviceDirectory
from shared.ingest.validation import Limits, Rejected, parse_topic, timestamp_us, validate_status, validate_telemetry

NOW_US = 1_763_900_000_000_000
WINDOW = TimeWindow(max_past_s=30 * 86400, max_future_s=3600)
TENANT = "7f1c1c9e-7a0b-4c1e-9a43-4d1f0c7b9e10"


def directory(*names: str, disabled: tuple[str, ...] = ()) -> DeviceDirectory:
    found = DeviceDirectory()
    for number, name in enumerate(names + disabled, start=1):
        found._known[("acme", name)] = DeviceRef(TENANT, number, name not in disabled)
    return found


@pytest.mark.parametrize(
    "topic, expected",
    [
        ("t/acme/d/press-01/telemetry", ("telemetry", "acme", "press-01", None)),
        ("t/acme/d/press-01/status", ("status", "acme", "press-01", None)),
        ("t/acme/d/press-01/spindle_temp/state", ("state", "acme", "press-01", "spindle_temp")),
    ],
)
def test_topics_parse_into_kind_tenant_device_entity(topic, expected):
    parsed = parse_topic(topic)
    assert (parsed.kind, parsed.tenant, parsed.device, parsed.entity) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "t/acme/d/press-01/other",
        "t/ACME/d/x/telemetry",
        "x/acme/d/p/telemetry",
        "t/acme/d/p/q/telemetry",
        "t/acme/d/bad device/telemetry",
        "t/acme/d/p/bad entity/state",
        "t/acme/d//telemetry",
    ],
)
def test_unexpected_topics_are_rejected_as_bad_topic(topic):
    with pytest.raises(Rejected) as caught:
        parse_topic(topic)
    assert caught.value.reason == "bad_topic"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (1763900000123, 1763900000123000),
        (1763900000123.5, 1763900000123500),
        ("2025-11-23T12:13:20.123456Z", 1763900000123456),
        ("2025-11-23T13:13:20.123+01:00", 1763900000123000),
        (None, None),
    ],
)
def test_timestamps_become_epoch_microseconds(raw, expected):
    assert timestamp_us(raw) == expected


def test_boolean_stays_boolean_and_integer_stays_number():
    [reading] = validate_telemetry(b'{"metrics": {"on": true, "n": 1, "x": 1.5, "s": "1"}}', Limits())
    assert reading["metrics"] == {"on": True, "n": 1, "x": 1.5, "s": "1"}
    assert type(reading["metrics"]["on"]) is bool and type(reading["metrics"]["n"]) is int


@pytest.mark.parametrize(
    "payload, status",
    [(b"online", "online"), (b" offline\n", "offline"), (b'"online"', "online"), (b'{"status": "offline"}', "offline")],
)
def test_status_accepts_plain_json_string_and_object(payload, status):
    assert validate_status(payload, Limits()) == status


def test_prepare_batch_escapes_text_and_keeps_one_line_per_reading():
    message = InboundMessage(
        "t/acme/d/p1/telemetry",
        b'{"ts": 1763900000000, "seq": 3, "metrics": {"note": "a\\tb\\\\c\\nd", "on": false, "t": 2.5}}',
        NOW_US,
    )
    batch = prepare_batch([message], directory("p1"), Limits(), WINDOW, NOW_US)
    assert batch.dead_letters == []
    assert batch.copy_lines == [
        f"{TENANT}\t1\tnote\t1763900000000000\t3\t\\N\t\\N\ta\\tb\\\\c\\nd\n",
        f"{TENANT}\t1\ton\t1763900000000000\t3\t\\N\tf\t\\N\n",
        f"{TENANT}\t1\tt\t1763900000000000\t3\t2.5\t\\N\t\\N\n",
    ]
    assert batch.presence == {(TENANT, 1): Presence(1763900000000000, "online")}


def test_prepare_batch_stamps_a_reading_without_ts_with_its_receive_time():
    message = InboundMessage("t/acme/d/p1/telemetry", b'{"metrics": {"t": 1}}', NOW_US - 42)
    batch = prepare_batch([message], directory("p1"), Limits(), WINDOW, NOW_US)
    assert batch.copy_lines == [f"{TENANT}\t1\tt\t{NOW_US - 42}\t0\t1\t\\N\t\\N\n"]


def test_prepare_batch_dead_letters_unknown_and_disabled_devices_but_keeps_the_rest():
    messages = [
        InboundMessage("t/acme/d/nobody/telemetry", b'{"metrics": {"t": 1}}', NOW_US),
        InboundMessage("t/acme/d/off/telemetry", b'{"metrics": {"t": 1}}', NOW_US),
        InboundMessage("t/acme/d/p1/telemetry", b'{"metrics": {"t": 1}}', NOW_US),
    ]
    batch = prepare_batch(messages, directory("p1", disabled=("off",)), Limits(), WINDOW, NOW_US)
    assert [d.reason for d in batch.dead_letters] == ["unknown_device", "device_disabled"]
    assert batch.dead_letters[1].device is not None
    assert batch.spans == [(2, 0, 1)]


def test_last_status_message_in_a_batch_wins():
    messages = [
        InboundMessage("t/acme/d/p1/telemetry", b'{"ts": 1763899990000, "metrics": {"t": 1}}', NOW_US),
        InboundMessage("t/acme/d/p1/status", b"offline", NOW_US),
    ]
    batch = prepare_batch(messages, directory("p1"), Limits(), WINDOW, NOW_US)
    assert batch.presence[(TENANT, 1)] == Presence(NOW_US, "offline")
