"""Metric metadata kept by the drain: device_metrics (unit, newest reading) and the
per-minute ingest counts, written with the batch, by the ingest role, against a real database."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import psycopg
import pytest

from shared.core.db import tenant_transaction
from shared.ingest.batch import prepare_batch, topic_keys
from shared.ingest.messages import InboundMessage, TimeWindow
from shared.ingest.store import DeviceDirectory, IngestStore
from shared.ingest.validation import Limits
from tests.support.api import new_tenant
from tests.support.registry import create_device

WINDOW = TimeWindow(max_past_s=30 * 86400, max_future_s=300)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def message(topic: str, payload: object) -> InboundMessage:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return InboundMessage(topic, raw, time.time_ns() // 1000)


def store(database, messages: Sequence[InboundMessage]) -> None:
    """One batch through the drain's own pipeline (validation, COPY, metadata), as the ingest role."""
    ingest = IngestStore(database.ingest_dsn)
    assert ingest.connect()
    try:
        directory = DeviceDirectory()
        directory.resolve(ingest._session, directory.missing(topic_keys(messages)))
        ingest._session.commit()
        batch = prepare_batch(messages, directory, Limits(), WINDOW, time.time_ns() // 1000)
        ingest.write(messages, batch)
    finally:
        ingest.close()


def metrics_of(app_pool, tenant, device_id: int) -> dict[str, dict]:
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        rows = conn.execute("SELECT * FROM device_metrics WHERE device_id = %s", (device_id,)).fetchall()
    return {row["metric"]: row for row in rows}


@pytest.fixture
def press(app_pool):
    tenant = new_tenant(app_pool)
    device = create_device(app_pool, str(tenant["id"]), "press-01")
    return tenant, device, f"t/{tenant['slug']}/d/press-01"


def test_state_unit_is_stored_and_a_changed_unit_replaces_it(database, app_pool, press):
    # GIVEN a device that reports its temperature on a /state topic with a unit
    tenant, device, prefix = press
    t0 = now_ms() - 10_000
    store(database, [message(f"{prefix}/temp/state", {"value": 85.5, "unit": "C", "timestamp": t0})])
    assert metrics_of(app_pool, tenant, device["id"])["temp"]["unit"] == "C"
    # WHEN it switches to Fahrenheit, and a plain telemetry reading (no unit) follows
    store(database, [message(f"{prefix}/temp/state", {"value": 185.9, "unit": "F", "timestamp": t0 + 1000})])
    store(database, [message(f"{prefix}/telemetry", {"ts": t0 + 2000, "metrics": {"temp": 186.0}})])
    # THEN the unit is the newest one given, kept by the unit-less reading
    row = metrics_of(app_pool, tenant, device["id"])["temp"]
    assert (row["unit"], row["last_value"]) == ("F", 186.0)


def test_an_older_state_redelivered_later_changes_neither_unit_nor_latest(database, app_pool, press):
    # GIVEN a newest reading in F
    tenant, device, prefix = press
    t0 = now_ms() - 10_000
    store(database, [message(f"{prefix}/temp/state", {"value": 185.9, "unit": "F", "timestamp": t0 + 1000})])
    # WHEN an older reading in C arrives afterwards (a redelivery, a device's backlog)
    store(database, [message(f"{prefix}/temp/state", {"value": 85.5, "unit": "C", "timestamp": t0})])
    # THEN the newest reading and its unit stand
    row = metrics_of(app_pool, tenant, device["id"])["temp"]
    assert (row["unit"], row["last_value"]) == ("F", 185.9)


def test_one_batch_keeps_the_newest_reading_of_each_metric_by_ts_then_seq(database, app_pool, press):
    # GIVEN one batch with readings out of order, two at the same ts told apart by seq, and every type
    tenant, device, prefix = press
    t0 = now_ms() - 60_000
    store(
        database,
        [
            message(
                f"{prefix}/telemetry",
                [
                    {"ts": t0 + 3000, "seq": 1, "metrics": {"rpm": 1200, "mode": "auto", "door": True}},
                    {"ts": t0 + 1000, "metrics": {"rpm": 900, "mode": "manual", "door": False}},
                    {"ts": t0 + 3000, "seq": 2, "metrics": {"rpm": 1250}},
                ],
            ),
            message(f"{prefix}/telemetry", {"ts": t0 + 2000, "metrics": {"rpm": 1000, "mode": "off"}}),
        ],
    )
    # THEN each metric's row holds its newest reading, in the column of its type
    rows = metrics_of(app_pool, tenant, device["id"])
    assert (rows["rpm"]["last_value"], rows["rpm"]["last_seq"]) == (1250.0, 2)
    assert rows["mode"]["last_value_text"] == "auto"
    assert rows["door"]["last_value_bool"] is True
    assert all(row["unit"] is None for row in rows.values())


def test_a_unit_longer_than_the_cap_is_cut_and_the_reading_kept(database, app_pool, press):
    tenant, device, prefix = press
    store(database, [message(f"{prefix}/flow/state", {"value": 3.2, "unit": "litres per minute at 20 °C, nominal"})])
    assert metrics_of(app_pool, tenant, device["id"])["flow"]["unit"] == "litres per minute at 20 °C, nominal"[:32]


def test_minute_counts_count_stored_messages_readings_and_dead_letters_per_tenant(database, app_pool, press):
    # GIVEN two tenants' devices
    tenant, device, prefix = press
    other = new_tenant(app_pool)
    create_device(app_pool, str(other["id"]), "lathe")
    t0 = now_ms() - 5000
    # WHEN a batch holds 2 good messages (3 readings) and 1 bad one of the first, 1 of the other
    store(
        database,
        [
            message(f"{prefix}/telemetry", {"ts": t0, "metrics": {"a": 1, "b": 2}}),
            message(f"{prefix}/telemetry", {"ts": t0 + 1, "metrics": {"a": 3}}),
            message(f"{prefix}/telemetry", b"\x00not json"),
            message(f"t/{other['slug']}/d/lathe/telemetry", {"ts": t0, "metrics": {"x": 1}}),
        ],
    )
    # THEN each tenant sees its own counts only
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        mine = conn.execute("SELECT messages, readings, dead_lettered FROM ingest_minute_counts").fetchall()
    with tenant_transaction(app_pool, str(other["id"])) as conn:
        theirs = conn.execute("SELECT messages, readings, dead_lettered FROM ingest_minute_counts").fetchall()
    assert mine == [{"messages": 2, "readings": 3, "dead_lettered": 1}]
    assert theirs == [{"messages": 1, "readings": 1, "dead_lettered": 0}]


def test_the_ingest_role_cannot_read_stored_values(database, app_pool, press):
    # GIVEN stored metadata
    tenant, device, prefix = press
    store(database, [message(f"{prefix}/telemetry", {"metrics": {"temp": 20.5}})])
    # THEN the drain's role may compare timestamps but read no value, and the app role cannot write
    with psycopg.connect(database.ingest_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM device_metrics WHERE last_ts IS NOT NULL").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT last_value FROM device_metrics")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM device_metrics")
    with psycopg.connect(database.app_dsn, autocommit=True) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (str(tenant["id"]),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE device_metrics SET unit = 'x'")


def test_deleting_a_device_deletes_its_metric_metadata(database, app_pool, press):
    tenant, device, prefix = press
    store(database, [message(f"{prefix}/telemetry", {"metrics": {"temp": 20.5}})])
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("DELETE FROM telemetry WHERE device_id = %s", (device["id"],))
        conn.execute("DELETE FROM devices WHERE id = %s", (device["id"],))
    with psycopg.connect(database.owner_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM device_metrics").fetchone() == (0,)


def test_a_unit_published_over_mqtt_is_returned_by_latest(monkeypatch, settings, app_pool, database):
    from tests.support.api import call, close_api_pool, export_api_settings, mint_token, new_user
    from tests.support.devices import Device, new_tenant_with_devices, run_mqtt_ingest

    # GIVEN a provisioned device that publishes its spindle temperature with a unit, over TLS
    tenant, creds = new_tenant_with_devices(app_pool, settings, ["press-01"])
    device = Device(settings, creds["press-01"])
    t0 = now_ms() - 5000
    mids = [
        device.publish("spindle/state", {"value": 85.5, "unit": "C", "timestamp": t0}),
        device.publish("telemetry", {"ts": t0 + 1000, "metrics": {"spindle": 86.0, "rpm": 1200}}),
    ]
    assert set(device.wait_acked(mids).values()) == {0}
    device.close()
    # WHEN the registered drain runs and a viewer reads the latest values through the API
    run_mqtt_ingest()
    export_api_settings(monkeypatch, database)
    try:
        token = mint_token(new_user(app_pool, tenant, "viewer"))
        with tenant_transaction(app_pool, str(tenant["id"])) as conn:
            device_id = conn.execute("SELECT id FROM devices WHERE name = 'press-01'").fetchone()["id"]
        reply = call("GET", f"/api/devices/{device_id}/latest", token=token)
    finally:
        close_api_pool()
    # THEN the unit the /state payload gave is there, kept by the newer unit-less telemetry reading
    assert reply.status == 200, reply.body
    assert {m["metric"]: (m["value"], m["unit"]) for m in reply.json["metrics"]} == {
        "spindle": (86.0, "C"),
        "rpm": (1200.0, None),
    }


def test_a_unit_the_database_would_refuse_is_dropped_and_no_reading_lost(database, app_pool, press):
    # GIVEN /state payloads whose units hold a NUL or a lone surrogate, beside a good reading
    tenant, device, prefix = press
    t0 = now_ms() - 10_000
    store(
        database,
        [
            message(f"{prefix}/a/state", b'{"value": 1, "unit": "\\u0000C", "ts": %d}' % t0),
            message(f"{prefix}/b/state", b'{"value": 2, "unit": "\\ud800", "ts": %d}' % t0),
            message(f"{prefix}/c/state", {"value": 3, "unit": "bar", "ts": t0}),
        ],
    )
    # THEN the batch is stored: the NUL is gone from the unit, the lone surrogate's message is a dead
    # letter of validation (never a failed batch), and the good reading keeps its unit
    rows = metrics_of(app_pool, tenant, device["id"])
    assert {name: (row["last_value"], row["unit"]) for name, row in rows.items()} == {
        "a": (1.0, "C"),
        "c": (3.0, "bar"),
    }
    with psycopg.connect(database.owner_dsn) as conn:
        assert conn.execute("SELECT topic FROM dead_letters").fetchall() == [(f"{prefix}/b/state",)]
