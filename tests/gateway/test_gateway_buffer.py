"""The store-and-forward buffer (gateway/buffer.py) on a real SQLite file. No servers."""

from __future__ import annotations

import logging
import sqlite3

from gateway.buffer import STATE, TELEMETRY, Buffer, Record

WINDOW = 15.0


def records(device: str, count: int, start_ts: int = 1_700_000_000_000, width: int = 1) -> list[Record]:
    return [Record(device, start_ts + i, TELEMETRY, {f"m{k}": i for k in range(width)}) for i in range(count)]


def test_a_seq_is_given_once_for_good_even_after_its_row_is_gone(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3", 2**30)
    buffer.append(records("a", 3))
    assert [r.seq for r in buffer.pending("a", 0, 10)] == [1, 2, 3]
    buffer.mark_acked("a", [1, 2, 3], 100.0, WINDOW)
    buffer.mark_acked("a", [], 200.0, WINDOW)  # a later ack: those three are past the window and go
    assert buffer.stats().pending == 0 and buffer.highest_seq() == 3
    buffer.close()
    reopened = Buffer(tmp_path / "b.sqlite3", 2**30)
    reopened.append(records("a", 1))
    assert [r.seq for r in reopened.pending("a", 0, 10)] == [4]
    # and the file is in WAL mode, so the gateway's writes never block a reader (and survive a SIGKILL)
    with sqlite3.connect(tmp_path / "b.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_acknowledged_rows_stay_for_the_window_and_a_reconnect_sends_them_again(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3", 2**30)
    buffer.append(records("a", 4) + records("b", 1))
    buffer.mark_acked("a", [1, 2], 1000.0, WINDOW)
    buffer.mark_acked("a", [3], 1010.0, WINDOW)  # 10 s later: 1 and 2 may still be unsaved on the broker
    assert [r.seq for r in buffer.pending("a", 0, 10)] == [4]
    # WHEN the device reconnects: what was acknowledged within the window is pending again, first in line
    assert buffer.requeue_acknowledged("a") == 3
    assert [r.seq for r in buffer.pending("a", 0, 10)] == [1, 2, 3, 4]
    assert [r.seq for r in buffer.pending("b", 0, 10)] == [5]  # another device's rows are its own
    # and once a later ack comes more than the window after them, they are gone for good
    buffer.mark_acked("a", [1, 2, 3], 2000.0, WINDOW)
    buffer.mark_acked("a", [4], 2016.0, WINDOW)
    assert buffer.requeue_acknowledged("a") == 1


def test_drop_oldest_keeps_the_bound_the_newest_readings_units_and_health(tmp_path, caplog):
    buffer = Buffer(tmp_path / "b.sqlite3", 256 * 1024, "drop_oldest", exempt=["gw"])
    buffer.append([Record("meter", 1, STATE, {"metric": "m0", "value": 1, "unit": "kWh"}), *records("gw", 5)])
    with caplog.at_level(logging.WARNING, logger="gateway.buffer"):
        for start in range(0, 40_000, 1000):
            buffer.append(records("meter", 1000, start_ts=1_700_000_000_000 + start, width=5))
    stats = buffer.stats()
    assert stats.used_bytes <= 256 * 1024
    assert stats.dropped_total > 0 and stats.dropped_total + stats.pending == 40_000 + 6
    kept = buffer.pending("meter", 0, 100_000)
    assert kept[0].kind == STATE  # the unit's reading stays
    telemetry = [r.seq for r in kept if r.kind == TELEMETRY]
    assert telemetry == list(range(telemetry[0], 40_000 + 7))  # the newest, without a gap
    assert len(buffer.pending("gw", 0, 10)) == 5
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("buffer.full ")]
    assert lines and '"policy":"drop_oldest"' in lines[0]


def test_drop_newest_refuses_what_does_not_fit_and_counts_it(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3", 128 * 1024, "drop_newest", exempt=["gw"])
    refused = 0
    for start in range(0, 20_000, 1000):
        refused += buffer.append(records("meter", 1000, start_ts=1_700_000_000_000 + start, width=5)).dropped
    buffer.append(records("gw", 2))
    stats = buffer.stats()
    assert refused > 0 and stats.dropped_total == refused
    assert [r.seq for r in buffer.pending("meter", 0, 5)] == [1, 2, 3, 4, 5]  # the oldest stay
    assert len(buffer.pending("gw", 0, 10)) == 2  # health still gets in


def test_a_command_is_recorded_once_with_its_ack(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3", 2**30)
    ack = Record("meter", 5, TELEMETRY, {"cmd_ack": "c-1", "cmd_result": "applied"})
    assert buffer.record_command("c-1", "meter", "applied", ack)
    assert not buffer.record_command("c-1", "meter", "applied", ack)
    assert buffer.command_result("c-1") == "applied" and buffer.command_result("c-2") is None
    assert len(buffer.pending("meter", 0, 10)) == 1


def test_readings_too_old_for_the_drain_expire_counted(tmp_path):
    buffer = Buffer(tmp_path / "b.sqlite3", 2**30)
    buffer.append(records("meter", 10, start_ts=1000))
    assert buffer.expire(1005) == 5
    assert buffer.counter("expired_total") == 5 and buffer.stats().pending == 5
