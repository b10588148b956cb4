"""The alerts API through the registered function, against a real database: rule CRUD with
validation, the unseen-metric warning and the plan's limit; events listed, filtered and paged, acknowledged and
resolved with a comment (audited); evaluation on demand; and another tenant's rules and events out of reach.
Who may call what is tests/functions/test_role_matrix.py's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from shared.core.db import tenant_transaction
from tests.support.api import (
    Reply,
    call,
    mint_token,
    new_user,
    users_of_each_role,
)
from tests.support.devices import unique_slug
from tests.support.registry import create_device, create_tenant
from tests.support.waiting import query

PROBLEM = "application/problem+json"
HOT = {
    "name": "Boiler too hot",
    "kind": "threshold",
    "metric": "temperature",
    "aggregation": "last",
    "window_s": 300,
    "operator": ">",
    "value": 80,
    "clear_value": 70,
    "severity": "critical",
}


def tenant_with_users(app_pool, plan: str = "industrial") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    tenant = create_tenant(app_pool, unique_slug(), "Alert Works", plan)
    return tenant, users_of_each_role(app_pool, tenant)


@pytest.fixture
def acme(app_pool, api):
    return tenant_with_users(app_pool)


def created(token: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = call("POST", "/api/alerts/rules", body, token=token)
    assert reply.status == 201, reply.body
    return dict(reply.json)


def hot_device(app_pool, tenant, name: str = "boiler-01", value: float = 95.0) -> int:
    device = int(create_device(app_pool, str(tenant["id"]), name)["id"])
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, %s, %s, %s)",
            (tenant["id"], device, datetime.now(UTC), "temperature", value),
        )
    return device


def test_rule_crud_with_the_unseen_metric_warning_and_audit(acme, app_pool, database):
    tenant, users = acme
    owner, staff = users["owner"]["token"], users["staff"]["token"]
    # GIVEN a threshold rule created by staff on a metric no device sent yet
    rule = created(staff, HOT)
    # THEN it is stored as sent, with a warning, clear_value kept, N defaulting to 1
    assert rule["warnings"] and "temperature" in rule["warnings"][0]
    assert (rule["kind"], rule["scope"], rule["value"], rule["clear_value"], rule["consecutive"], rule["enabled"]) == (
        "threshold",
        "all",
        80.0,
        70.0,
        1,
        True,
    )
    assert rule["created_by"] == str(users["staff"]["id"])

    # WHEN every role reads it THEN they see it
    listed = call("GET", "/api/alerts/rules", token=users["viewer"]["token"])
    assert [r["id"] for r in listed.json["items"]] == [rule["id"]]
    assert call("GET", f"/api/alerts/rules/{rule['id']}", token=users["viewer"]["token"]).json["name"] == HOT["name"]

    # WHEN the owner replaces it with a no-data rule on one device THEN it changes, without a warning
    device = int(create_device(app_pool, str(tenant["id"]), "press-01")["id"])
    replaced = call(
        "PUT",
        f"/api/alerts/rules/{rule['id']}",
        {"name": "Press silent", "kind": "no_data", "scope": "device", "device_id": device, "no_data_minutes": 5},
        token=owner,
    )
    assert replaced.status == 200, replaced.body
    assert (replaced.json["kind"], replaced.json["device_id"], replaced.json["metric"], replaced.json["warnings"]) == (
        "no_data",
        device,
        None,
        [],
    )

    # WHEN it is deleted THEN it is gone
    assert call("DELETE", f"/api/alerts/rules/{rule['id']}", token=owner).status == 204
    gone = call("GET", f"/api/alerts/rules/{rule['id']}", token=owner)
    assert (gone.status, gone.headers["content-type"]) == (404, PROBLEM)

    # AND each change wrote an audit row naming the actor
    assert query(
        database, "SELECT action, actor_user_id::text FROM audit_log WHERE action LIKE 'alert_rule.%%' ORDER BY id"
    ) == [
        ("alert_rule.create", str(users["staff"]["id"])),
        ("alert_rule.update", str(users["owner"]["id"])),
        ("alert_rule.delete", str(users["owner"]["id"])),
    ]


def test_anomaly_rule_takes_the_defaults_and_its_baseline_starts_from_history(acme, app_pool):
    tenant, users = acme
    # GIVEN a device with two hours of steady one-minute readings
    device = int(create_device(app_pool, str(tenant["id"]), "press-01")["id"])
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.cursor().executemany(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, %s, 'temperature', %s)",
            [(tenant["id"], device, start + timedelta(minutes=i, seconds=30), 40 + (i % 3) * 0.1) for i in range(120)],
        )

    # WHEN staff create an anomaly rule naming only its metric
    rule = created(users["staff"]["token"], {"name": "Press unusual", "kind": "anomaly", "metric": "temperature"})
    # THEN the defaults are filled in, clear_value half the sensitivity
    assert {
        key: rule[key]
        for key in (
            "window_s",
            "sensitivity",
            "baseline_buckets",
            "warmup_buckets",
            "clear_value",
            "aggregation",
            "operator",
            "value",
        )
    } == {
        "window_s": 60,
        "sensitivity": 4.0,
        "baseline_buckets": 60,
        "warmup_buckets": 60,
        "clear_value": 2.0,
        "aggregation": None,
        "operator": None,
        "value": None,
    }

    # WHEN it is evaluated through the API THEN the baseline learned the last hour at once, and nothing fired
    reply = call("POST", "/api/alerts/evaluate", token=users["staff"]["token"])
    assert (reply.status, reply.json["evaluated"], reply.json["opened"]) == (200, 1, 0)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        state = conn.execute("SELECT samples, ewma_mean FROM alert_rule_state").fetchone()
    assert state is not None and state["samples"] >= 58
    assert state["ewma_mean"] == pytest.approx(40.1, abs=0.05)


def test_a_metric_a_device_sent_has_no_warning(acme, app_pool, database):
    tenant, users = acme
    # GIVEN a device whose temperature the drain has seen (device_metrics, kept by the drain)
    device = hot_device(app_pool, tenant)
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO device_metrics (tenant_id, device_id, metric, last_ts, last_value)"
            " VALUES (%s, %s, 'temperature', now(), 95)",
            (tenant["id"], device),
        )
    # WHEN a rule on it is created THEN no warning
    assert created(users["owner"]["token"], HOT)["warnings"] == []


@pytest.mark.parametrize(
    "body",
    [
        {**HOT, "value": None},  # threshold without its value
        {**HOT, "clear_value": 90},  # clear past the threshold (> 80)
        {**HOT, "operator": "<", "clear_value": 70},  # clear below a < threshold
        {**HOT, "scope": "device"},  # device scope without device_id
        {**HOT, "tag": "hall-b"},  # a tag without tag scope
        {**HOT, "kind": "anomaly"},  # anomaly takes no threshold
        {**HOT, "sensitivity": 3},  # sensitivity on a threshold rule
        {"name": "Odd", "kind": "anomaly", "metric": "t", "sensitivity": 3, "clear_value": 3},  # clear not below
        {"name": "Odd", "kind": "anomaly", "metric": "t", "window_s": 30},  # bucket under a minute
        {"name": "Odd", "kind": "anomaly"},  # anomaly without its metric
        {"name": "Silent", "kind": "no_data"},  # no_data without minutes
        {"name": "Silent", "kind": "no_data", "no_data_minutes": 5, "metric": "temperature"},
        {**HOT, "window_s": 5},
        {**HOT, "name": "bad\x00name"},
        {**HOT, "metric": "no spaces"},
        {**HOT, "unknown": 1},
    ],
)
def test_invalid_rules_are_422(acme, body):
    _, users = acme
    reply = call("POST", "/api/alerts/rules", body, token=users["owner"]["token"])
    assert (reply.status, reply.headers["content-type"]) == (422, PROBLEM), reply.body


def test_a_device_of_another_tenant_is_422(acme, app_pool):
    _, users = acme
    other, _ = tenant_with_users(app_pool)
    foreign = int(create_device(app_pool, str(other["id"]), "theirs")["id"])
    reply = call(
        "POST",
        "/api/alerts/rules",
        {"name": "Silent", "kind": "no_data", "no_data_minutes": 5, "scope": "device", "device_id": foreign},
        token=users["owner"]["token"],
    )
    assert (reply.status, reply.json["type"]) == (422, "urn:mqtt-saas:problem:alert-device-not-found")


def test_the_plans_rule_limit_is_402(app_pool, api):
    # GIVEN a tenant on the free plan (5 alert rules)
    tenant = create_tenant(app_pool, unique_slug(), "Small Works", "free")
    owner = mint_token(new_user(app_pool, tenant, "owner"))
    for _ in range(5):
        created(owner, HOT)
    # WHEN a sixth is created THEN 402, and /api/usage counts the five
    reply = call("POST", "/api/alerts/rules", HOT, token=owner)
    assert (reply.status, reply.headers["content-type"]) == (402, PROBLEM), reply.body
    usage = call("GET", "/api/usage", token=owner).json
    assert (usage["quotas"]["alert_rules"]["used"], usage["quotas"]["alert_rules"]["limit"]) == (5, 5)


def test_evaluate_then_list_filter_acknowledge_and_resolve_events(acme, app_pool, database):
    tenant, users = acme
    owner, staff, viewer = (users[role]["token"] for role in ("owner", "staff", "viewer"))
    # GIVEN two hot devices and a critical rule that fires at once
    first, second = hot_device(app_pool, tenant, "boiler-01"), hot_device(app_pool, tenant, "boiler-02")
    created(owner, HOT)

    # WHEN staff evaluate now THEN two events open; a second evaluation opens none
    reply = call("POST", "/api/alerts/evaluate", token=staff)
    assert reply.status == 200, reply.body
    assert reply.json == {"evaluated": 2, "opened": 2, "resolved": 0, "skipped": False}
    assert call("POST", "/api/alerts/evaluate", token=staff).json["opened"] == 0

    # THEN every role lists them newest first, paged, and filters by device, state and severity
    page = call("GET", "/api/alerts/events?limit=1", token=viewer).json
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = call("GET", f"/api/alerts/events?limit=1&cursor={page['next_cursor']}", token=viewer).json
    assert rest["next_cursor"] is None
    assert {page["items"][0]["device_id"], rest["items"][0]["device_id"]} == {first, second}
    event = call("GET", f"/api/alerts/events?device_id={first}", token=viewer).json["items"][0]
    assert (event["state"], event["severity"], event["value"], event["rule_name"], event["device_name"]) == (
        "open",
        "critical",
        95.0,
        HOT["name"],
        "boiler-01",
    )
    assert call("GET", "/api/alerts/events?severity=info", token=viewer).json["items"] == []

    # WHEN staff acknowledge it with a comment THEN it is acknowledged, by them
    acked = call("POST", f"/api/alerts/events/{event['id']}/acknowledge", {"comment": "on my way"}, token=staff)
    assert acked.status == 200, acked.body
    assert (acked.json["state"], acked.json["acknowledged_by"], acked.json["comment"]) == (
        "acknowledged",
        str(users["staff"]["id"]),
        "on my way",
    )
    assert [e["id"] for e in call("GET", "/api/alerts/events?state=acknowledged", token=viewer).json["items"]] == [
        event["id"]
    ]

    # WHEN the owner resolves it THEN it is resolved by them; resolving again is 409
    resolved = call("POST", f"/api/alerts/events/{event['id']}/resolve", {"comment": "valve replaced"}, token=owner)
    assert (resolved.json["state"], resolved.json["resolved_by"], resolved.json["comment"]) == (
        "resolved",
        str(users["owner"]["id"]),
        "valve replaced",
    )
    again = call("POST", f"/api/alerts/events/{event['id']}/resolve", token=owner)
    assert (again.status, again.headers["content-type"]) == (409, PROBLEM)
    assert call("POST", f"/api/alerts/events/{event['id']}/acknowledge", token=owner).status == 409

    # AND the still-hot device gets a new event only at the next evaluation (N = 1 breach counted afresh)
    assert call("POST", "/api/alerts/evaluate", token=staff).json["opened"] == 1

    # AND both changes are audited with their comment
    assert query(
        database, "SELECT action, detail->>'comment' FROM audit_log WHERE action LIKE 'alert_event.%%' ORDER BY id"
    ) == [("alert_event.acknowledge", "on my way"), ("alert_event.resolve", "valve replaced")]


def test_another_tenants_rules_and_events_are_404(acme, app_pool):
    tenant, users = acme
    hot_device(app_pool, tenant)
    rule = created(users["owner"]["token"], HOT)
    call("POST", "/api/alerts/evaluate", token=users["owner"]["token"])
    [event] = call("GET", "/api/alerts/events", token=users["owner"]["token"]).json["items"]

    # GIVEN the owner of another tenant
    _, others = tenant_with_users(app_pool)
    stranger = others["owner"]["token"]
    # WHEN they reach for the first tenant's rule and event THEN 404, and their lists are empty
    replies: list[Reply] = [
        call("GET", f"/api/alerts/rules/{rule['id']}", token=stranger),
        call("PUT", f"/api/alerts/rules/{rule['id']}", HOT, token=stranger),
        call("DELETE", f"/api/alerts/rules/{rule['id']}", token=stranger),
        call("POST", f"/api/alerts/events/{event['id']}/acknowledge", token=stranger),
        call("POST", f"/api/alerts/events/{event['id']}/resolve", token=stranger),
    ]
    assert [r.status for r in replies] == [404] * 5
    assert call("GET", "/api/alerts/rules", token=stranger).json["items"] == []
    assert call("GET", "/api/alerts/events", token=stranger).json["items"] == []
    # AND their evaluation touches nothing of the first tenant
    assert call("POST", "/api/alerts/evaluate", token=stranger).json["evaluated"] == 0
    assert call("GET", "/api/alerts/events", token=users["owner"]["token"]).json["items"][0]["state"] == "open"
