"""The alert evaluator against a real database, as the app role under RLS: scripted
telemetry series produce exactly the expected events (opens after N, stays open without new events,
clears with hysteresis), no-data fires and clears, overlapping runs never duplicate, and one
tenant's rules never see another's devices."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from shared.alerts.evaluator import evaluate_rules, evaluate_tenant
from shared.core.db import tenant_transaction
from tests.support.api import new_tenant
from tests.support.registry import create_device

THRESHOLD = {
    "kind": "threshold",
    "scope": "all",
    "metric": "temperature",
    "aggregation": "last",
    "window_s": 300,
    "operator": ">",
    "value": 80.0,
    "clear_value": 70.0,
    "consecutive": 2,
}
NO_DATA = {"kind": "no_data", "scope": "all", "no_data_minutes": 10, "consecutive": 1}


def add_rule(app_pool, tenant, **fields: Any) -> str:
    values = {
        "name": "rule",
        "scope": "all",
        "consecutive": 1,
        "severity": "warning",
        "device_id": None,
        "tag": None,
        "device_type": None,
        "metric": None,
        "aggregation": None,
        "window_s": None,
        "operator": None,
        "value": None,
        "clear_value": None,
        "no_data_minutes": None,
        **fields,
    }
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        row = conn.execute(
            "INSERT INTO alert_rules (tenant_id, name, kind, scope, device_id, tag, device_type, metric, aggregation,"
            " window_s, operator, value, clear_value, consecutive, no_data_minutes, severity)"
            " VALUES (%(tenant_id)s, %(name)s, %(kind)s, %(scope)s, %(device_id)s, %(tag)s, %(device_type)s,"
            " %(metric)s, %(aggregation)s, %(window_s)s, %(operator)s, %(value)s, %(clear_value)s,"
            " %(consecutive)s, %(no_data_minutes)s, %(severity)s) RETURNING id",
            {**values, "tenant_id": tenant["id"]},
        ).fetchone()
    assert row is not None
    return str(row["id"])


def read(app_pool, tenant, device_id: int, value: float, *, metric: str = "temperature") -> None:
    """One reading stamped now (later than every earlier one), and the device seen now, as the drain would."""
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, %s, %s, %s)",
            (tenant["id"], device_id, datetime.now(UTC), metric, value),
        )
        conn.execute("UPDATE devices SET last_seen = now(), status = 'online' WHERE id = %s", (device_id,))


def events(app_pool, tenant) -> list[dict[str, Any]]:
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        return conn.execute("SELECT * FROM alert_events ORDER BY opened_at, id").fetchall()


def evaluate(app_pool, tenant) -> None:
    assert not evaluate_tenant(app_pool, str(tenant["id"])).skipped


@pytest.fixture
def plant(app_pool):
    tenant = new_tenant(app_pool)
    device = create_device(app_pool, str(tenant["id"]), "boiler-01")
    return tenant, int(device["id"])


def test_threshold_opens_after_n_stays_open_and_clears_with_hysteresis(app_pool, plant):
    # GIVEN a rule: last temperature > 80 for 2 evaluations opens, back to 70 or below clears
    tenant, device = plant
    add_rule(app_pool, tenant, **THRESHOLD)

    # WHEN the temperature breaches for one evaluation THEN nothing opens yet
    read(app_pool, tenant, device, 85.0)
    evaluate(app_pool, tenant)
    assert events(app_pool, tenant) == []

    # WHEN it breaches a second time THEN one event opens, with the value
    evaluate(app_pool, tenant)
    [event] = events(app_pool, tenant)
    assert (event["state"], event["device_id"], event["value"], event["severity"]) == ("open", device, 85.0, "warning")

    # WHEN it keeps breaching, then sits between clear_value and value THEN the same event stays open, alone
    evaluate(app_pool, tenant)
    read(app_pool, tenant, device, 75.0)
    evaluate(app_pool, tenant)
    evaluate(app_pool, tenant)
    assert [(e["id"], e["state"]) for e in events(app_pool, tenant)] == [(event["id"], "open")]

    # WHEN it drops to the clear value THEN the event resolves, by the evaluator (no user)
    read(app_pool, tenant, device, 70.0)
    evaluate(app_pool, tenant)
    [resolved] = events(app_pool, tenant)
    assert (resolved["state"], resolved["resolved_by"]) == ("resolved", None)
    assert resolved["resolved_at"] is not None

    # WHEN it breaches again THEN a new event opens only after 2 more breaching evaluations
    read(app_pool, tenant, device, 90.0)
    evaluate(app_pool, tenant)
    assert len(events(app_pool, tenant)) == 1
    evaluate(app_pool, tenant)
    assert [e["state"] for e in events(app_pool, tenant)] == ["resolved", "open"]


@pytest.mark.parametrize(
    ("aggregation", "operator", "value", "clear", "series", "breaching"),
    [
        ("avg", ">", 50.0, 40.0, [40.0, 70.0], True),  # avg 55
        ("avg", ">", 60.0, 40.0, [40.0, 70.0], False),  # avg 55
        ("min", "<", 10.0, 12.0, [30.0, 5.0, 20.0], True),
        ("max", ">=", 30.0, 30.0, [30.0, 5.0], True),
        ("count", ">", 2.0, 2.0, [1.0, 1.0], False),
        ("count", ">", 2.0, 2.0, [1.0, 1.0, 1.0], True),
    ],
)
def test_each_aggregation_over_the_window(app_pool, plant, aggregation, operator, value, clear, series, breaching):
    # GIVEN a rule with the aggregation, N = 1, and readings in its window
    tenant, device = plant
    add_rule(
        app_pool,
        tenant,
        **{
            **THRESHOLD,
            "aggregation": aggregation,
            "operator": operator,
            "value": value,
            "clear_value": clear,
            "consecutive": 1,
        },
    )
    for reading in series:
        read(app_pool, tenant, device, reading)
    # WHEN evaluated THEN an event opens exactly when the aggregate breaches
    evaluate(app_pool, tenant)
    assert len(events(app_pool, tenant)) == (1 if breaching else 0)


def test_readings_outside_the_window_and_other_metrics_do_not_count(app_pool, plant):
    # GIVEN a hot reading older than the window, and a hot reading of another metric
    tenant, device = plant
    add_rule(app_pool, tenant, **{**THRESHOLD, "consecutive": 1, "window_s": 60})
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, %s, %s, %s)",
            (tenant["id"], device, datetime.now(UTC) - timedelta(minutes=5), "temperature", 99.0),
        )
    read(app_pool, tenant, device, 99.0, metric="pressure")
    # WHEN evaluated THEN nothing opens
    evaluate(app_pool, tenant)
    assert events(app_pool, tenant) == []


def test_no_data_fires_for_a_silent_or_offline_device_and_clears_when_it_is_back(app_pool, plant):
    # GIVEN a no-data rule of 10 minutes, and the device last seen 20 minutes ago
    tenant, device = plant
    add_rule(app_pool, tenant, **NO_DATA)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("UPDATE devices SET last_seen = now() - interval '20 minutes', status = 'online'")

    # WHEN evaluated THEN an event opens, its value the seconds of silence
    evaluate(app_pool, tenant)
    [event] = events(app_pool, tenant)
    assert event["state"] == "open" and event["value"] >= 1200

    # WHEN the device reports again THEN the event resolves
    read(app_pool, tenant, device, 20.0)
    evaluate(app_pool, tenant)
    assert [e["state"] for e in events(app_pool, tenant)] == ["resolved"]

    # WHEN its status topic says offline, though it sent data just now THEN a new event opens
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("UPDATE devices SET status = 'offline'")
    evaluate(app_pool, tenant)
    assert [e["state"] for e in events(app_pool, tenant)] == ["resolved", "open"]


def test_scope_by_tag_type_and_device(app_pool):
    # GIVEN four devices, all hot, and rules scoped to a tag, a type and one device
    tenant = new_tenant(app_pool)
    ids = {name: int(create_device(app_pool, str(tenant["id"]), name)["id"]) for name in ("a", "b", "c", "d")}
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("UPDATE devices SET tags = '{hall-b}' WHERE name = 'a'")
        conn.execute("UPDATE devices SET type = 'press' WHERE name = 'b'")
    for device in ids.values():
        read(app_pool, tenant, device, 99.0)
    rule = {**THRESHOLD, "consecutive": 1}
    by_tag = add_rule(app_pool, tenant, **{**rule, "scope": "tag", "tag": "hall-b"})
    by_type = add_rule(app_pool, tenant, **{**rule, "scope": "type", "device_type": "press"})
    by_device = add_rule(app_pool, tenant, **{**rule, "scope": "device", "device_id": ids["c"]})
    # WHEN evaluated THEN each rule fires for exactly its devices
    evaluate(app_pool, tenant)
    fired = {(str(e["rule_id"]), e["device_id"]) for e in events(app_pool, tenant)}
    assert fired == {(by_tag, ids["a"]), (by_type, ids["b"]), (by_device, ids["c"])}


def test_disabled_rules_and_devices_are_not_evaluated(app_pool, plant):
    tenant, device = plant
    rule = add_rule(app_pool, tenant, **{**THRESHOLD, "consecutive": 1})
    read(app_pool, tenant, device, 99.0)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("UPDATE alert_rules SET enabled = false WHERE id = %s", (rule,))
    evaluate(app_pool, tenant)
    assert events(app_pool, tenant) == []
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("UPDATE alert_rules SET enabled = true")
        conn.execute("UPDATE devices SET enabled = false")
    evaluate(app_pool, tenant)
    assert events(app_pool, tenant) == []


def test_overlapping_runs_never_duplicate_events(app_pool):
    # GIVEN a tenant of 30 hot devices and a rule that fires at once
    tenant = new_tenant(app_pool)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute(
            "INSERT INTO devices (tenant_id, name) SELECT %s, 'm-' || g FROM generate_series(1, 20) g", (tenant["id"],)
        )
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value)"
            " SELECT tenant_id, id, now() - interval '1 second', 'temperature', 99 FROM devices"
        )
    add_rule(app_pool, tenant, **{**THRESHOLD, "consecutive": 1})

    # WHEN four runs start at once, three times over
    for _ in range(3):
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def run(barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
            try:
                barrier.wait(timeout=10)
                evaluate_rules(app_pool)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []

    # THEN each device has exactly one event
    rows = events(app_pool, tenant)
    assert len(rows) == 20 and len({e["device_id"] for e in rows}) == 20


def test_at_most_one_unresolved_event_per_rule_and_device_is_a_constraint(database, app_pool, plant):
    # GIVEN an open event
    tenant, device = plant
    rule = add_rule(app_pool, tenant, **NO_DATA)
    insert = "INSERT INTO alert_events (tenant_id, rule_id, device_id, severity) VALUES (%s, %s, %s, 'info')"
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute(insert, (tenant["id"], rule, device))
        # WHEN a second unresolved one is written THEN the database refuses it
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, (tenant["id"], rule, device))
        # AND once the first is resolved, a new one may open
        conn.execute("UPDATE alert_events SET state = 'resolved', resolved_at = now()")
        conn.execute(insert, (tenant["id"], rule, device))


def test_a_tenants_rules_never_see_another_tenants_devices(app_pool, plant):
    # GIVEN tenant A's hot device, and tenant B with an all-devices rule and no devices
    tenant_a, device = plant
    read(app_pool, tenant_a, device, 99.0)
    tenant_b = new_tenant(app_pool)
    add_rule(app_pool, tenant_b, **{**THRESHOLD, "consecutive": 1})
    # WHEN every tenant is evaluated THEN B has no event, and A (no rules) none either
    report = evaluate_rules(app_pool)
    assert report.failed == []
    assert events(app_pool, tenant_b) == [] and events(app_pool, tenant_a) == []


def test_the_registered_alert_evaluator_timer_runs_every_tenant(monkeypatch, database, app_pool, plant):
    # GIVEN a hot device and a rule that fires at once, and the app's settings for this database
    import azure.functions as func

    from tests.support.api import close_api_pool, export_api_settings
    from tests.support.devices import registered_functions

    tenant, device = plant
    add_rule(app_pool, tenant, **{**THRESHOLD, "consecutive": 1})
    read(app_pool, tenant, device, 99.0)
    export_api_settings(monkeypatch, database)
    try:
        # WHEN the registered timer function runs, as the host would call it
        function = registered_functions()["alert_evaluator"]
        function.get_user_function()(func.timer.TimerRequest(past_due=False))
    finally:
        close_api_pool()
    # THEN the event is open, and the binding is the configured schedule, never on startup
    assert [e["state"] for e in events(app_pool, tenant)] == ["open"]
    [binding] = json.loads(function.get_function_json())["bindings"]
    assert binding == {
        "type": "timerTrigger",
        "direction": "IN",
        "name": "timer",
        "schedule": "%ALERT_SCHEDULE%",
        "runOnStartup": False,
        "useMonitor": True,
    }
