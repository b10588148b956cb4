"""Reads for dashboards through the registered api function, against a real
database: latest values with units, the fleet overview, bucketed series, /api/admin/ingest."""

from __future__ import annotations

import base64
import json
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from shared.core.db import tenant_transaction
from shared.core.settings import Settings
from shared.ingest.batch import prepare_batch, topic_keys
from shared.ingest.messages import InboundMessage, TimeWindow
from shared.ingest.store import DeviceDirectory, IngestStore
from shared.ingest.validation import Limits
from shared.telemetry.retention import maintenance_connection
from shared.telemetry.rollups import roll_up
from tests.support.api import ROLES, call, new_tenant, users_of_each_role
from tests.support.registry import create_device

ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def acme(api, app_pool):
    """A tenant with a user of each role and one device."""
    tenant = new_tenant(app_pool)
    users = users_of_each_role(app_pool, tenant)
    device = create_device(app_pool, str(tenant["id"]), "press-01")
    return tenant, users, device


def message(topic: str, payload: object) -> InboundMessage:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return InboundMessage(topic, raw, time.time_ns() // 1000)


def drain(database, messages: Sequence[InboundMessage]) -> None:
    """One batch through the drain's pipeline (validation, COPY, metadata) as the ingest role."""
    store = IngestStore(database.ingest_dsn)
    assert store.connect()
    try:
        directory = DeviceDirectory()
        directory.resolve(store._session, directory.missing(topic_keys(messages)))
        store._session.commit()
        window = TimeWindow(max_past_s=30 * 86400, max_future_s=300)
        store.write(messages, prepare_batch(messages, directory, Limits(), window, time.time_ns() // 1000))
    finally:
        store.close()


def insert_readings(app_pool, tenant, device_id: int, metric: str, readings: list[tuple[datetime, float]]) -> None:
    with tenant_transaction(app_pool, str(tenant["id"])) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry (tenant_id, device_id, metric, ts, value) VALUES (%s, %s, %s, %s, %s)",
            [(tenant["id"], device_id, metric, ts, value) for ts, value in readings],
        )


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def series_url(device_id: int, metric: str, start: datetime, end: datetime, **extra: object) -> str:
    query = "&".join(
        [f"metric={metric}", f"from={iso(start)}", f"to={iso(end)}", *(f"{k}={v}" for k, v in extra.items())]
    )
    return f"/api/devices/{device_id}/series?{query}"


# --------------------------------------------------------------------------- latest


def test_latest_gives_each_metric_its_newest_value_type_and_unit_to_every_role(database, acme):
    # GIVEN a device that sent a /state reading with a unit, then telemetry of every type
    tenant, users, device = acme
    prefix, t0 = f"t/{tenant['slug']}/d/press-01", time.time_ns() // 1_000_000 - 60_000
    drain(database, [message(f"{prefix}/temp/state", {"value": 85.5, "unit": "C", "timestamp": t0})])
    drain(
        database,
        [
            message(
                f"{prefix}/telemetry",
                [
                    {"ts": t0 + 2000, "metrics": {"temp": 86.0, "door": True, "mode": "auto"}},
                    {"ts": t0 + 1000, "metrics": {"temp": 99.0, "mode": "manual"}},
                ],
            ),
        ],
    )
    # WHEN each role asks for the latest values
    for role in ROLES:
        reply = call("GET", f"/api/devices/{device['id']}/latest", token=users[role]["token"])
        # THEN every role gets the newest value per metric, typed, with the unit kept
        assert reply.status == 200, reply.body
        metrics = {m["metric"]: m for m in reply.json["metrics"]}
        assert {k: (m["value"], m["type"], m["unit"]) for k, m in metrics.items()} == {
            "door": (True, "boolean", None),
            "mode": ("auto", "text", None),
            "temp": (86.0, "number", "C"),
        }
        assert datetime.fromisoformat(metrics["temp"]["ts"]) == datetime.fromtimestamp((t0 + 2000) / 1000, UTC)


def test_latest_of_a_device_without_readings_is_empty(acme):
    tenant, users, device = acme
    reply = call("GET", f"/api/devices/{device['id']}/latest", token=users["viewer"]["token"])
    assert (reply.status, reply.json) == (200, {"device_id": device["id"], "metrics": []})


# --------------------------------------------------------------------------- fleet


def test_fleet_counts_each_status_of_the_callers_tenant_only(database, app_pool, acme):
    # GIVEN devices in every state, and another tenant's online device
    tenant, users, _ = acme  # press-01: never seen
    states = {
        "a": ("online", True),
        "b": ("online", True),
        "c": ("offline", True),
        "d": ("online", False),
        "e": ("never_seen", False),
    }
    for name in states:
        create_device(app_pool, str(tenant["id"]), name)
    other = new_tenant(app_pool)
    create_device(app_pool, str(other["id"]), "x")
    with psycopg.connect(database.owner_dsn) as conn:
        for name, (status, enabled) in states.items():
            conn.execute(
                "UPDATE devices SET status = %s, enabled = %s WHERE tenant_id = %s AND name = %s",
                (status, enabled, tenant["id"], name),
            )
        conn.execute("UPDATE devices SET status = 'online' WHERE tenant_id = %s", (other["id"],))
    # WHEN a viewer asks
    reply = call("GET", "/api/fleet", token=users["viewer"]["token"])
    # THEN a disabled device counts as disabled whatever its status, and only this tenant counts
    assert (reply.status, reply.json) == (200, {"online": 2, "offline": 1, "never_seen": 1, "disabled": 2, "total": 6})


# --------------------------------------------------------------------------- series


def expected_buckets(
    readings: list[tuple[datetime, float]], start: datetime, end: datetime, width_s: int
) -> list[dict]:
    """From scratch: bucket k holds [ORIGIN + k * width, + width)."""
    buckets: dict[int, list[float]] = {}
    for ts, value in readings:
        if start <= ts < end:
            buckets.setdefault(math.floor((ts - ORIGIN).total_seconds() / width_s), []).append(value)
    return [
        {
            "ts": ORIGIN + timedelta(seconds=k * width_s),
            "avg": sum(v) / len(v),
            "min": min(v),
            "max": max(v),
            "count": len(v),
        }
        for k, v in sorted(buckets.items())
    ]


def test_series_buckets_equal_a_from_scratch_computation_within_the_cap(app_pool, acme):
    # GIVEN three hours of irregular readings of one metric, plus another metric and another device
    tenant, users, device = acme
    rng = random.Random(12)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    readings, ts = [], base
    while ts < base + timedelta(hours=3):
        readings.append((ts, round(rng.uniform(-50, 150), 3)))
        ts += timedelta(seconds=rng.randint(1, 40), microseconds=rng.randint(0, 999_999))
    insert_readings(app_pool, tenant, device["id"], "temp", readings)
    insert_readings(app_pool, tenant, device["id"], "rpm", [(base + timedelta(minutes=1), 1e6)])
    other = create_device(app_pool, str(tenant["id"]), "press-02")
    insert_readings(app_pool, tenant, other["id"], "temp", [(base + timedelta(minutes=2), 1e6)])
    start, end = base + timedelta(minutes=7, seconds=13), base + timedelta(hours=2, minutes=51)
    for max_points, bucket in [(2, None), (7, None), (50, None), (500, None), (5000, None), (50, 600)]:
        extra = {"max_points": max_points} | ({"bucket": bucket} if bucket else {})
        # WHEN the series is asked for with that cap (and a bucket width)
        reply = call("GET", series_url(device["id"], "temp", start, end, **extra), token=users["viewer"]["token"])
        assert reply.status == 200, reply.body
        body = reply.json
        # THEN the points fit the cap, and equal a computation in Python with the width it chose
        width = body["bucket_s"]
        assert len(body["points"]) <= max_points
        assert width >= (bucket or 1)
        expected = expected_buckets(readings, start, end, width)
        got = [{**p, "ts": datetime.fromisoformat(p["ts"])} for p in body["points"]]
        assert [(p["ts"], p["count"], p["min"], p["max"]) for p in got] == [
            (p["ts"], p["count"], p["min"], p["max"]) for p in expected
        ]
        assert all(
            math.isclose(g["avg"], e["avg"], rel_tol=1e-9, abs_tol=1e-9) for g, e in zip(got, expected, strict=True)
        )
        assert sum(p["count"] for p in got) == sum(1 for ts, _ in readings if start <= ts < end)


def test_series_of_an_empty_range_is_an_empty_list(acme):
    tenant, users, device = acme
    end = datetime.now(UTC) - timedelta(days=2)
    reply = call("GET", series_url(device["id"], "temp", end - timedelta(hours=1), end), token=users["staff"]["token"])
    assert reply.status == 200, reply.body
    assert reply.json["points"] == [] and reply.json["bucket_s"] == 10


def test_series_refuses_bad_ranges_and_text_metrics_with_422(database, acme):
    tenant, users, device = acme
    token = users["owner"]["token"]
    now = datetime.now(UTC)
    drain(database, [message(f"t/{tenant['slug']}/d/press-01/telemetry", {"metrics": {"mode": "auto"}})])
    path = f"/api/devices/{device['id']}/series"
    cases = {
        "from after to": series_url(device["id"], "temp", now, now - timedelta(hours=1)),
        "empty": series_url(device["id"], "temp", now, now),
        "over 400 days": series_url(device["id"], "temp", now - timedelta(days=401), now),
        "to at year 1": f"{path}?metric=temp&to=0001-01-01T00:00:00Z",
        "year 1 to 9999": f"{path}?metric=temp&from=0001-01-01T00:00:00Z&to=9999-12-31T00:00:00Z",
        "no zone": f"{path}?metric=temp&from=2026-01-01T00:00:00&to=2026-01-02T00:00:00",
        "too many points": series_url(device["id"], "temp", now - timedelta(hours=1), now, max_points=5001),
        "one point": series_url(device["id"], "temp", now - timedelta(hours=1), now, max_points=1),
        "bad metric": f"{path}?metric=te%20mp",
        "no metric": path,
        "text metric": series_url(device["id"], "mode", now - timedelta(hours=1), now),
    }
    for case, url in cases.items():
        reply = call("GET", url, token=token)
        assert reply.status == 422, (case, reply.body)
        assert reply.headers["content-type"].startswith("application/problem+json"), case
    assert "metric-not-numeric" in call("GET", cases["text metric"], token=token).json["type"]


# --------------------------------------------------------------------------- cross-tenant


def test_another_tenants_device_is_404_and_its_readings_never_appear(database, app_pool, acme):
    # GIVEN another tenant whose device has readings, and the caller's own device
    tenant, users, device = acme
    other = new_tenant(app_pool)
    theirs = create_device(app_pool, str(other["id"]), "press-01")
    drain(
        database,
        [
            message(f"t/{other['slug']}/d/press-01/temp/state", {"value": 1.0, "unit": "bar"}),
            message(f"t/{other['slug']}/d/press-01/telemetry", b"\xff\xfe"),
        ],
    )
    insert_readings(app_pool, other, theirs["id"], "temp", [(datetime.now(UTC) - timedelta(minutes=5), 7.0)])
    now = datetime.now(UTC)
    # WHEN every role of the caller's tenant asks for the other tenant's device
    for role in ROLES:
        token = users[role]["token"]
        for url in (
            f"/api/devices/{theirs['id']}/latest",
            series_url(theirs["id"], "temp", now - timedelta(hours=1), now),
        ):
            # THEN 404 (when the ids differ), and never the other tenant's readings
            reply = call("GET", url, token=token)
            if theirs["id"] != device["id"]:
                assert reply.status == 404, reply.body
            else:
                assert reply.status == 200 and reply.json.get("metrics", reply.json.get("points")) == []
    overview = call("GET", "/api/admin/ingest", token=users["owner"]["token"]).json
    assert overview["dead_letters"]["items"] == [] and overview["messages_per_minute"] == []


def test_a_device_id_that_does_not_exist_is_404(acme):
    tenant, users, device = acme
    for url in ("/api/devices/999999/latest", "/api/devices/999999/series?metric=temp"):
        assert call("GET", url, token=users["viewer"]["token"]).status == 404


# --------------------------------------------------------------------------- /api/admin/ingest


def test_admin_ingest_shows_the_callers_dead_letters_by_reason_with_payloads_rendered_safely(database, app_pool, acme):
    # GIVEN the caller's device sending good data and junk, and another tenant's junk
    tenant, users, device = acme
    prefix = f"t/{tenant['slug']}/d/press-01"
    other = new_tenant(app_pool)
    create_device(app_pool, str(other["id"]), "lathe")
    nasty = b'{"metrics": \x00\x1b[31m\xff\xfe \\x41 \xe2\x80\xae}'
    drain(
        database,
        [
            message(f"{prefix}/telemetry", {"metrics": {"temp": 20.0}}),
            message(f"{prefix}/telemetry", nasty),
            message(f"{prefix}/telemetry", {"ts": 1700000000, "metrics": {"temp": 1.0}}),
            message(f"{prefix}/telemetry", {"metrics": {"temp": "x" * 300}}),
            message(f"t/{other['slug']}/d/lathe/telemetry", b"junk of the other tenant"),
        ],
    )
    drain(database, [message(f"{prefix}/telemetry", b"more junk \x07")])
    # WHEN a staff member asks (a viewer may not)
    assert call("GET", "/api/admin/ingest", token=users["viewer"]["token"]).status == 403
    reply = call("GET", "/api/admin/ingest?limit=2", token=users["staff"]["token"])
    # THEN only this tenant's dead letters show, counted by reason, newest first, paged
    assert reply.status == 200, reply.body
    body = reply.json
    reasons = {r["reason"]: r["count"] for r in body["dead_letters_by_reason"]}
    assert sum(reasons.values()) == 4 and reasons.get("ts_too_old") == 1, reasons
    first = body["dead_letters"]["items"]
    rest = call(
        "GET", f"/api/admin/ingest?limit=2&cursor={body['dead_letters']['next_cursor']}", token=users["staff"]["token"]
    ).json["dead_letters"]
    items = first + rest["items"]
    assert rest["next_cursor"] is None and len(items) == 4
    assert [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)
    assert all(i["device_name"] == "press-01" and "other tenant" not in i["payload_preview"] for i in items)
    # AND a payload with binary and control bytes shows exactly in base64, escaped in the preview
    shown = next(i for i in items if base64.b64decode(i["payload_base64"]) == nasty)
    assert shown["payload_preview"] == '{"metrics": \\x00\\x1b[31m\\xff\\xfe \\\\x41 \\u202e}'
    assert shown["payload_bytes"] == len(nasty) and not shown["payload_truncated"]
    assert all(ch.isprintable() for i in items for ch in i["payload_preview"])
    # AND the per-minute counts and the drain runs are there, the runs without traffic figures
    assert sum(m["messages"] for m in body["messages_per_minute"]) == 1
    assert sum(m["dead_lettered"] for m in body["messages_per_minute"]) == 4
    assert all(
        set(run) == {"started_at", "finished_at", "status", "max_lag_ms", "duration_ms"} for run in body["recent_runs"]
    )


def test_admin_ingest_lists_enabled_devices_that_sent_nothing_valid_lately(database, app_pool, acme):
    # GIVEN a device seen long ago, one never seen but dead-lettered, one never seen at all,
    # a disabled one seen long ago and one seen just now
    tenant, users, _ = acme  # press-01: never seen, nothing sent
    for name in ("old", "junk", "off", "fresh"):
        create_device(app_pool, str(tenant["id"]), name)
    with psycopg.connect(database.owner_dsn) as conn:
        conn.execute(
            "UPDATE devices SET last_seen = now() - interval '3 hours', status = 'online' "
            "WHERE tenant_id = %s AND name IN ('old', 'off')",
            (tenant["id"],),
        )
        conn.execute("UPDATE devices SET enabled = false WHERE tenant_id = %s AND name = 'off'", (tenant["id"],))
    prefix = f"t/{tenant['slug']}/d"
    drain(
        database,
        [
            message(f"{prefix}/junk/telemetry", b"not json"),
            message(f"{prefix}/fresh/telemetry", {"metrics": {"temp": 1.0}}),
        ],
    )
    # WHEN an owner asks with a one-hour window
    reply = call("GET", "/api/admin/ingest?quiet_minutes=60", token=users["owner"]["token"])
    # THEN the old and the dead-lettered devices show, with the reason
    assert reply.status == 200, reply.body
    quiet = {d["name"]: d for d in reply.json["quiet_devices"]}
    assert set(quiet) == {"old", "junk"}
    assert (quiet["junk"]["dead_letters"], quiet["junk"]["last_reason"]) == (1, "invalid_json")


def test_admin_ingest_refuses_a_cursor_it_did_not_issue(acme):
    tenant, users, _ = acme
    reply = call("GET", "/api/admin/ingest?cursor=bm9wZQ", token=users["owner"]["token"])
    assert reply.status == 400


# --------------------------------------------------------------------------- series from the rollups


def roll_up_as_of(settings: Settings, now: datetime | None = None) -> None:
    """One rollup run (60 s lag); now: a later clock, to take what arrived within the lag."""
    with maintenance_connection(settings) as conn:
        assert roll_up(conn, lag_s=60, chunk_s=40 * 86400, max_past_days=31, time_budget_s=60, now=now).caught_up


def insert_received(app_pool, tenant, device_id: int, readings: list[tuple[datetime, float]]) -> None:
    """Readings as an online device's arrive: each received 2 s after its ts."""
    with tenant_transaction(app_pool, str(tenant["id"])) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO telemetry (tenant_id, device_id, metric, ts, value, received_at) "
            "VALUES (%s, %s, 'temp', %s, %s, %s)",
            [(tenant["id"], device_id, ts, value, ts + timedelta(seconds=2)) for ts, value in readings],
        )


def assert_series_is(reply, readings: list[tuple[datetime, float]], start: datetime, end: datetime) -> None:
    assert reply.status == 200, reply.body
    width = reply.json["bucket_s"]
    expected = expected_buckets(readings, start, end, width)
    got = [{**p, "ts": datetime.fromisoformat(p["ts"])} for p in reply.json["points"]]
    assert [(p["ts"], p["count"], p["min"], p["max"]) for p in got] == [
        (p["ts"], p["count"], p["min"], p["max"]) for p in expected
    ]
    assert all(math.isclose(g["avg"], e["avg"], rel_tol=1e-9, abs_tol=1e-9) for g, e in zip(got, expected, strict=True))


def test_series_from_rollups_equals_raw_through_the_api_with_late_data_and_other_tenants(
    app_pool, acme, maintenance_settings
):
    # GIVEN a month of readings every 5 minutes, another tenant's device with readings at the same
    # times, and the rollup run over all of it
    tenant, users, device = acme
    rng = random.Random(14)
    now = datetime.now(UTC).replace(microsecond=0)
    readings = [
        (
            now - timedelta(days=30, minutes=5) + timedelta(seconds=300 * i + rng.randint(0, 299)),
            round(rng.uniform(-50, 150), 3),
        )
        for i in range(30 * 288)
    ]
    insert_received(app_pool, tenant, device["id"], readings)
    other = new_tenant(app_pool)
    theirs = create_device(app_pool, str(other["id"]), "press-01")
    insert_received(app_pool, other, theirs["id"], [(ts, 1e6) for ts, _ in readings[::7]])
    roll_up_as_of(maintenance_settings)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        assert conn.execute("SELECT count(*) AS n FROM telemetry_rollup_1h").fetchone()["n"] > 0  # type: ignore[index]

    # AND late data received now (after the watermark), with old timestamps inside rolled-up buckets
    late = [(now - timedelta(days=d, seconds=31), 999.5) for d in (1, 6, 29)]
    insert_readings(app_pool, tenant, device["id"], "temp", late)

    # WHEN each role reads 1 h, 1 d, 7 d and 30 d THEN every bucket equals raw, late data included
    end = now + timedelta(seconds=1)
    for span in (timedelta(hours=1), timedelta(days=1), timedelta(days=7), timedelta(days=30)):
        start = end - span + timedelta(seconds=11)
        for role in ROLES:
            reply = call("GET", series_url(device["id"], "temp", start, end), token=users[role]["token"])
            assert_series_is(reply, readings + late, start, end)

    # AND the other tenant's device stays 404, its rolled-up readings never in the caller's series
    reply = call("GET", series_url(theirs["id"], "temp", end - timedelta(days=30), end), token=users["owner"]["token"])
    assert reply.status == 404 or theirs["id"] == device["id"]

    # WHEN the next run rolls the late data up THEN the series is still exactly raw
    roll_up_as_of(maintenance_settings, datetime.now(UTC) + timedelta(minutes=2))
    start = end - timedelta(days=30)
    assert_series_is(
        call("GET", series_url(device["id"], "temp", start, end), token=users["viewer"]["token"]),
        readings + late,
        start,
        end,
    )
