"""The alert webhooks API through the registered function, against a real database: a target's
secret shown once (creation, rotation) and never listed, audited changes naming only the host, the per-rule
cap, URL refusals, acknowledge and resolve through the API enqueueing deliveries that a real receiver gets and
the deliveries list shows with their attempts, and another tenant's rules and targets out of reach.
Who may call what is tests/functions/test_role_matrix.py's."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.alerts import delivery
from shared.core.settings import get_settings
from tests.support.api import call, close_api_pool, export_api_settings, users_of_each_role
from tests.support.devices import unique_slug
from tests.support.registry import create_device, create_tenant
from tests.support.waiting import query

PROBLEM = "application/problem+json"
RULE = {"name": "Press silent", "kind": "no_data", "no_data_minutes": 10}
TARGET = {"url": "https://hooks.example.com/mqtt-saas?token=abc", "description": "on-call"}


@pytest.fixture
def local_api(monkeypatch, database):
    """The API as scripts/dev runs it: http and private targets allowed."""
    export_api_settings(
        monkeypatch, database, WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE_TARGETS="true", WEBHOOK_TIMEOUT_S="2"
    )
    yield
    close_api_pool()


def tenant_with_users(app_pool) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    tenant = create_tenant(app_pool, unique_slug(), "Hook Works", "industrial")
    return tenant, users_of_each_role(app_pool, tenant)


def new_rule(token: str) -> str:
    reply = call("POST", "/api/alerts/rules", RULE, token=token)
    assert reply.status == 201, reply.body
    return str(reply.json["id"])


def new_target(token: str, rule: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = call("POST", f"/api/alerts/rules/{rule}/webhooks", body or TARGET, token=token)
    assert reply.status == 201, reply.body
    return dict(reply.json)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            got.append(
                {"headers": dict(self.headers.items()), "body": self.rfile.read(int(self.headers["Content-Length"]))}
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()
    server.server_close()


def test_a_targets_secret_is_shown_once_never_listed_and_rotated(app_pool, api, database):
    tenant, users = tenant_with_users(app_pool)
    staff, owner = users["staff"]["token"], users["owner"]["token"]
    rule = new_rule(owner)
    # WHEN staff adds a target THEN the answer holds the secret (whsec_...), once
    created = new_target(staff, rule)
    assert created["secret"].startswith("whsec_") and len(created["secret"]) == 49
    # (hooks.example.com may not resolve where the tests run: then the answer warns so, see below)
    assert (created["url"], created["description"], created["enabled"], created["rule_id"], created["created_by"]) == (
        TARGET["url"],
        "on-call",
        True,
        rule,
        str(users["staff"]["id"]),
    )
    # WHEN the targets are listed THEN the target is there without any secret
    listed = call("GET", f"/api/alerts/rules/{rule}/webhooks", token=owner)
    assert listed.status == 200
    [item] = listed.json["items"]
    assert item["id"] == created["id"] and "secret" not in item and "secret_encrypted" not in item
    assert created["secret"] not in listed.body.decode()

    # WHEN the owner rotates it THEN a new secret is shown once, and the stored one is the new one
    rotated = call("POST", f"/api/alerts/rules/{rule}/webhooks/{created['id']}/rotate-secret", token=owner)
    assert rotated.status == 200, rotated.body
    assert rotated.json["secret"].startswith("whsec_") and rotated.json["secret"] != created["secret"]
    assert rotated.json["secret_rotated_at"] is not None
    [(stored,)] = query(database, "SELECT secret_encrypted FROM alert_webhooks")
    assert delivery.decrypt_secret(get_settings(), stored) == rotated.json["secret"]

    # WHEN it is deleted THEN it is gone (and deleting again is 404)
    path = f"/api/alerts/rules/{rule}/webhooks/{created['id']}"
    assert call("DELETE", path, token=staff).status == 204
    again = call("DELETE", path, token=staff)
    assert (again.status, again.headers["content-type"]) == (404, PROBLEM)
    assert call("GET", f"/api/alerts/rules/{rule}/webhooks", token=owner).json["items"] == []

    # AND every change was audited with the host only: neither the URL's token nor a secret
    rows = query(
        database,
        "SELECT action, actor_user_id::text, detail::text FROM audit_log"
        " WHERE action LIKE 'alert_webhook.%%' ORDER BY id",
    )
    assert [(action, actor) for action, actor, _ in rows] == [
        ("alert_webhook.create", str(users["staff"]["id"])),
        ("alert_webhook.rotate_secret", str(users["owner"]["id"])),
        ("alert_webhook.delete", str(users["staff"]["id"])),
    ]
    assert all(
        '"host": "hooks.example.com"' in detail and "abc" not in detail and "whsec_" not in detail
        for _, _, detail in rows
    )


def test_a_rule_takes_at_most_five_targets(app_pool, api):
    _, users = tenant_with_users(app_pool)
    owner = users["owner"]["token"]
    rule = new_rule(owner)
    for n in range(5):
        new_target(owner, rule, {"url": f"https://hooks.example.com/{n}"})
    sixth = call("POST", f"/api/alerts/rules/{rule}/webhooks", TARGET, token=owner)
    assert (sixth.status, sixth.headers["content-type"], sixth.json["type"]) == (
        409,
        PROBLEM,
        "urn:mqtt-saas:problem:webhook-limit-reached",
    )
    # AND the cap is per rule
    new_target(owner, new_rule(owner))


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://localhost/x",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/x",
        "https://168.63.129.16/",
        "https://[fd00:ec2::254]/latest/meta-data",
        "https://10.0.0.8/x",
        "https://user:pw@hooks.example.com/x",
    ],
)
def test_unsafe_urls_are_refused_with_the_reason(app_pool, api, database, url):
    _, users = tenant_with_users(app_pool)
    owner = users["owner"]["token"]
    rule = new_rule(owner)
    reply = call("POST", f"/api/alerts/rules/{rule}/webhooks", {"url": url}, token=owner)
    assert (reply.status, reply.headers["content-type"], reply.json["type"]) == (
        422,
        PROBLEM,
        "urn:mqtt-saas:problem:webhook-url-refused",
    )
    assert reply.json["detail"].startswith("The webhook URL is refused: ")
    assert query(database, "SELECT count(*) FROM alert_webhooks") == [(0,)]


def test_a_host_that_does_not_resolve_is_accepted_with_a_warning(app_pool, api):
    _, users = tenant_with_users(app_pool)
    owner = users["owner"]["token"]
    created = new_target(owner, new_rule(owner), {"url": "https://hooks.invalid/x"})
    assert len(created["warnings"]) == 1 and "does not resolve" in created["warnings"][0]


def test_viewers_are_refused_and_another_tenants_rules_and_targets_are_not_found(app_pool, api):
    _, users = tenant_with_users(app_pool)
    _, others = tenant_with_users(app_pool)
    owner, viewer, stranger = users["owner"]["token"], users["viewer"]["token"], others["owner"]["token"]
    rule = new_rule(owner)
    target = new_target(owner, rule)
    # viewers: neither targets nor deliveries
    assert call("POST", f"/api/alerts/rules/{rule}/webhooks", TARGET, token=viewer).status == 403
    # (the role and the rule are checked before the URL: no resolving hosts for callers who may not add one)
    assert call("POST", f"/api/alerts/rules/{rule}/webhooks", {"url": "https://127.0.0.1/"}, token=viewer).status == 403
    assert (
        call("POST", f"/api/alerts/rules/{rule}/webhooks", {"url": "https://127.0.0.1/"}, token=stranger).status == 404
    )
    assert call("GET", f"/api/alerts/rules/{rule}/webhooks", token=viewer).status == 403
    assert call("GET", f"/api/alerts/webhooks/{target['id']}/deliveries", token=viewer).status == 403
    # another tenant's owner: 404 for the rule, the target and its deliveries, and nothing changes
    for method, path, body in [
        ("POST", f"/api/alerts/rules/{rule}/webhooks", TARGET),
        ("GET", f"/api/alerts/rules/{rule}/webhooks", None),
        ("DELETE", f"/api/alerts/rules/{rule}/webhooks/{target['id']}", None),
        ("POST", f"/api/alerts/rules/{rule}/webhooks/{target['id']}/rotate-secret", None),
        ("GET", f"/api/alerts/webhooks/{target['id']}/deliveries", None),
    ]:
        reply = call(method, path, body, token=stranger)
        assert (reply.status, reply.headers["content-type"]) == (404, PROBLEM), (method, path)
    # a target named under the wrong rule is not found either
    other_rule = new_rule(owner)
    assert call("DELETE", f"/api/alerts/rules/{other_rule}/webhooks/{target['id']}", token=owner).status == 404
    assert len(call("GET", f"/api/alerts/rules/{rule}/webhooks", token=owner).json["items"]) == 1


def test_acknowledge_and_resolve_through_the_api_are_delivered_and_listed(app_pool, local_api, database, receiver):
    url, got = receiver
    tenant, users = tenant_with_users(app_pool)
    owner, staff = users["owner"]["token"], users["staff"]["token"]
    rule = new_rule(owner)
    target = new_target(owner, rule, {"url": url})
    device = int(create_device(app_pool, str(tenant["id"]), "press-01")["id"])
    # GIVEN an open event of the rule (opened as the evaluator would: a plain insert fires the same trigger)
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO alert_events (tenant_id, rule_id, device_id, severity, value)"
            " VALUES (%s, %s, %s, 'warning', 600) RETURNING id",
            (tenant["id"], rule, device),
        ).fetchone()
    assert row is not None
    event = str(row[0])

    # WHEN staff acknowledges it and the owner resolves it, with comments
    assert call("POST", f"/api/alerts/events/{event}/acknowledge", {"comment": "on it"}, token=staff).status == 200
    assert call("POST", f"/api/alerts/events/{event}/resolve", {"comment": "fixed"}, token=owner).status == 200
    # THEN three deliveries wait, newest first, none attempted yet
    deliveries_path = f"/api/alerts/webhooks/{target['id']}/deliveries"
    pending = call("GET", f"{deliveries_path}?state=pending", token=owner).json["items"]
    assert [(d["kind"], d["attempts"], d["attempt_log"]) for d in pending] == [
        ("alert.resolved", 0, []),
        ("alert.acknowledged", 0, []),
        ("alert.opened", 0, []),
    ]

    # WHEN the deliveries run THEN the receiver gets all three, each signed, with what was true at each change
    report = delivery.deliver_due(app_pool, get_settings(), 10)
    assert report.delivered == 3
    secret = delivery.decrypt_secret(
        get_settings(), query(database, "SELECT secret_encrypted FROM alert_webhooks")[0][0]
    )
    assert secret is not None and all(delivery.verify(secret, r["headers"], r["body"]) for r in got)
    bodies = sorted(
        (json.loads(r["body"]) for r in got),
        key=lambda b: ["alert.opened", "alert.acknowledged", "alert.resolved"].index(b["type"]),
    )
    assert [(b["type"], b["event"]["state"], b["event"]["comment"]) for b in bodies] == [
        ("alert.opened", "open", None),
        ("alert.acknowledged", "acknowledged", "on it"),
        ("alert.resolved", "resolved", "fixed"),
    ]

    # AND the deliveries list shows each with its attempt, a page at a time
    first = call("GET", f"{deliveries_path}?limit=2", token=staff)
    assert first.status == 200 and len(first.json["items"]) == 2 and first.json["next_cursor"]
    rest = call("GET", f"{deliveries_path}?limit=2&cursor={first.json['next_cursor']}", token=staff)
    items = first.json["items"] + rest.json["items"]
    assert rest.json["next_cursor"] is None
    assert [d["kind"] for d in items] == ["alert.resolved", "alert.acknowledged", "alert.opened"]
    for item in items:
        assert (item["state"], item["attempts"], item["last_status_code"], item["next_attempt_at"]) == (
            "delivered",
            1,
            204,
            None,
        )
        [attempt] = item["attempt_log"]
        assert (attempt["attempt"], attempt["status_code"], attempt["error"]) == (1, 204, None)
        assert attempt["duration_ms"] >= 0 and attempt["started_at"]
    assert call("GET", f"{deliveries_path}?state=failed", token=owner).json["items"] == []
