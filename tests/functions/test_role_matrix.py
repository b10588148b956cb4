"""The role matrix: every route of the app's OpenAPI document, called by each role
(owner, staff, viewer), by a platform operator and with no token, through the registered function
against a real database and the real broker (devices get live credentials, commands are
published), each answer's status asserted. A route the app serves with no row here fails
test_every_route_has_a_row: adding a route means saying who may call it.

Each row builds a valid request (a real target in the caller's tenant), so a refusal is the role's
doing, not a 404 or a 422. Targets a request destroys are made fresh for each call."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from shared.devices.commands import close_commander_connection
from shared.http.app import api
from tests.support.api import (
    PASSWORD,
    PASSWORD_HASH,
    Reply,
    call,
    close_api_pool,
    export_api_settings,
    login,
    new_user,
    users_of_each_role,
)
from tests.support.devices import unique_slug
from tests.support.registry import create_tenant

CALLERS = ("owner", "staff", "viewer", "operator", "anonymous")
OPERATOR_EMAIL = "matrix-ops@example.com"


@dataclass
class Context:
    """A tenant with one user of each role (the callers), and what requests need to target."""

    pool: Any
    database: Any
    tenant: dict[str, Any]
    users: dict[str, dict[str, Any]]
    tokens: dict[str, str | None] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def new_viewer(self) -> dict[str, Any]:
        return new_user(self.pool, self.tenant, "viewer")

    def refresh_token(self) -> str:
        reply = login(self.new_viewer())
        assert reply.status == 200, reply.body
        return str(reply.json["refresh_token"])

    def new_device(self) -> int:
        reply = call("POST", "/api/devices", {"name": f"m-{uuid.uuid4().hex[:10]}"}, token=self.tokens["owner"])
        assert reply.status == 201, reply.body
        return int(reply.json["id"])

    def device(self) -> int:
        """One device shared by the requests that leave it usable."""
        if "device" not in self.cache:
            self.cache["device"] = self.new_device()
        return int(self.cache["device"])


@dataclass(frozen=True)
class Request:
    path: str
    body: Any = None
    headers: dict[str, str] | None = None
    raw: bytes | None = None


@dataclass(frozen=True)
class Row:
    """Who gets which status, and how to build a valid request for the route."""

    expect: dict[str, int]
    request: Callable[[Context], Request]
    xfail: str | None = None
    # A route written but not yet included in the app: its row waits (skipped) until it is served.
    pending: str | None = None


def allowed(*roles: str, ok: int = 200, denied: int = 403) -> dict[str, int]:
    """A tenant route: the roles named get ok, the others denied; an operator's token and no token 401."""
    return {
        "owner": ok if "owner" in roles else denied,
        "staff": ok if "staff" in roles else denied,
        "viewer": ok if "viewer" in roles else denied,
        "operator": 401,
        "anonymous": 401,
    }


def operator_only(ok: int = 200) -> dict[str, int]:
    """A platform route: only an operator's token; every tenant token, and none, 401."""
    return {**dict.fromkeys(CALLERS, 401), "operator": ok}


def anyone(status: int) -> dict[str, int]:
    return dict.fromkeys(CALLERS, status)


NO_DATA_RULE = {"name": "Silent", "kind": "no_data", "no_data_minutes": 10}


def _new_alert_rule(c: Context) -> str:
    reply = call("POST", "/api/alerts/rules", NO_DATA_RULE, token=c.tokens["owner"])
    assert reply.status == 201, reply.body
    return str(reply.json["id"])


def _alert_rule(c: Context) -> str:
    if "alert_rule" not in c.cache:
        c.cache["alert_rule"] = _new_alert_rule(c)
    return str(c.cache["alert_rule"])


def _new_alert_event(c: Context) -> str:
    """An open event (written as the owner: the evaluator's own events are tests/integration's)."""
    with psycopg.connect(c.database.owner_dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO alert_events (tenant_id, rule_id, device_id, severity) "
            "VALUES (%s, %s, %s, 'warning') RETURNING id",
            (c.tenant["id"], _new_alert_rule(c), c.new_device()),
        ).fetchone()
    assert row is not None
    return str(row[0])


def _alert_event(c: Context) -> str:
    if "alert_event" not in c.cache:
        c.cache["alert_event"] = _new_alert_event(c)
    return str(c.cache["alert_event"])


OWNER = ("owner",)
WEBHOOK = {"url": "https://hooks.example.com/mqtt-saas", "description": "on-call"}


def _new_webhook(c: Context) -> tuple[str, str]:
    """A fresh rule with one webhook target (a rule takes at most 5): (rule id, webhook id)."""
    rule = _new_alert_rule(c)
    reply = call("POST", f"/api/alerts/rules/{rule}/webhooks", WEBHOOK, token=c.tokens["owner"])
    assert reply.status == 201, reply.body
    return rule, str(reply.json["id"])


def _webhook(c: Context) -> tuple[str, str]:
    if "webhook" not in c.cache:
        c.cache["webhook"] = _new_webhook(c)
    rule, webhook = c.cache["webhook"]
    return str(rule), str(webhook)


PROFILE_SPEC = {"forms": [{"topic": "plc/line1", "metrics": [{"path": "speed", "name": "speed"}]}]}


def _new_profile(c: Context) -> str:
    name = f"p-{uuid.uuid4().hex[:10]}"
    reply = call("POST", "/api/profiles", {"name": name, "spec": PROFILE_SPEC}, token=c.tokens["owner"])
    assert reply.status == 201, reply.body
    return name


def _profile(c: Context) -> str:
    if "profile" not in c.cache:
        c.cache["profile"] = _new_profile(c)
    return str(c.cache["profile"])


STAFF_UP = ("owner", "staff")
EVERY_ROLE = ("owner", "staff", "viewer")

# (method, route path as declared) -> row
ROWS: dict[tuple[str, str], Row] = {
    # --- auth: no token needed; the body is what counts
    ("POST", "/api/auth/login"): Row(
        anyone(200),
        lambda c: Request(
            "/api/auth/login",
            {"tenant": c.tenant["slug"], "email": c.new_viewer()["email"], "password": PASSWORD},
            {"X-Forwarded-For": "198.51.100.20"},
        ),
    ),
    ("POST", "/api/auth/refresh"): Row(
        anyone(200), lambda c: Request("/api/auth/refresh", {"refresh_token": c.refresh_token()})
    ),
    ("POST", "/api/auth/logout"): Row(
        anyone(204), lambda c: Request("/api/auth/logout", {"refresh_token": c.refresh_token()})
    ),
    # --- users
    ("GET", "/api/me"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/me")),
    ("GET", "/api/users"): Row(allowed(*OWNER), lambda c: Request("/api/users")),
    ("POST", "/api/users"): Row(
        allowed(*OWNER, ok=201),
        lambda c: Request("/api/users", {"email": f"new-{c.new_viewer()['id']}@example.com", "role": "viewer"}),
    ),
    ("GET", "/api/users/{user_id}"): Row(allowed(*OWNER), lambda c: Request(f"/api/users/{c.new_viewer()['id']}")),
    ("PATCH", "/api/users/{user_id}"): Row(
        allowed(*OWNER), lambda c: Request(f"/api/users/{c.new_viewer()['id']}", {"role": "staff"})
    ),
    ("DELETE", "/api/users/{user_id}"): Row(
        allowed(*OWNER, ok=204), lambda c: Request(f"/api/users/{c.new_viewer()['id']}")
    ),
    # --- devices: staff and owners change, every role reads
    ("POST", "/api/devices"): Row(
        allowed(*STAFF_UP, ok=201),
        lambda c: Request("/api/devices", {"name": f"m-{uuid.uuid4().hex[:10]}", "display_name": "Press"}),
    ),
    ("GET", "/api/devices"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/devices")),
    ("POST", "/api/devices/bulk"): Row(
        allowed(*STAFF_UP, ok=201),
        lambda c: Request(
            "/api/devices/bulk",
            headers={"Content-Type": "text/csv"},
            raw=f"name,display_name\nb-{uuid.uuid4().hex[:10]},Bulk one\n".encode(),
        ),
    ),
    ("GET", "/api/devices/{device_id}"): Row(allowed(*EVERY_ROLE), lambda c: Request(f"/api/devices/{c.device()}")),
    ("PATCH", "/api/devices/{device_id}"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/devices/{c.device()}", {"location": "Hall B"})
    ),
    ("DELETE", "/api/devices/{device_id}"): Row(
        allowed(*STAFF_UP, ok=204), lambda c: Request(f"/api/devices/{c.new_device()}")
    ),
    ("POST", "/api/devices/{device_id}/disable"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/devices/{c.new_device()}/disable")
    ),
    ("POST", "/api/devices/{device_id}/enable"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/devices/{c.device()}/enable")
    ),
    ("POST", "/api/devices/{device_id}/credentials/rotate"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/devices/{c.new_device()}/credentials/rotate", {"overlap_s": 0})
    ),
    ("POST", "/api/devices/{device_id}/credentials/revoke"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/devices/{c.new_device()}/credentials/revoke")
    ),
    # --- device profiles: every role reads, staff and owners change; a device's profile and its dead letters
    ("GET", "/api/profiles"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/profiles")),
    ("GET", "/api/profiles/{name}"): Row(allowed(*EVERY_ROLE), lambda c: Request(f"/api/profiles/{_profile(c)}")),
    ("POST", "/api/profiles"): Row(
        allowed(*STAFF_UP, ok=201),
        lambda c: Request("/api/profiles", {"name": f"p-{uuid.uuid4().hex[:10]}", "spec": PROFILE_SPEC}),
    ),
    ("PUT", "/api/profiles/{name}"): Row(
        allowed(*STAFF_UP),
        lambda c: Request(f"/api/profiles/{_profile(c)}", {"description": "line 1", "spec": PROFILE_SPEC}),
    ),
    ("DELETE", "/api/profiles/{name}"): Row(
        allowed(*STAFF_UP, ok=204), lambda c: Request(f"/api/profiles/{_new_profile(c)}")
    ),
    ("PUT", "/api/devices/{device_id}/profile"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/devices/{c.device()}/profile", {"profile": "native"})
    ),
    ("POST", "/api/devices/{device_id}/dead-letters/dry-run"): Row(
        allowed(*STAFF_UP),
        lambda c: Request(f"/api/devices/{c.device()}/dead-letters/dry-run", {"profile": "tasmota"}),
    ),
    ("POST", "/api/devices/{device_id}/dead-letters/replay"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/devices/{c.device()}/dead-letters/replay")
    ),
    ("GET", "/api/devices/{device_id}/decoder-events"): Row(
        allowed(*EVERY_ROLE), lambda c: Request(f"/api/devices/{c.device()}/decoder-events")
    ),
    # --- commands: staff and owners send, every role lists
    ("POST", "/api/devices/{device_id}/commands"): Row(
        allowed(*STAFF_UP, ok=202),
        lambda c: Request(f"/api/devices/{c.device()}/commands", {"name": "set_point", "args": {"value": 72.5}}),
    ),
    ("GET", "/api/devices/{device_id}/commands"): Row(
        allowed(*EVERY_ROLE), lambda c: Request(f"/api/devices/{c.device()}/commands")
    ),
    # --- reads
    ("GET", "/api/devices/{device_id}/latest"): Row(
        allowed(*EVERY_ROLE), lambda c: Request(f"/api/devices/{c.device()}/latest")
    ),
    ("GET", "/api/devices/{device_id}/status-history"): Row(
        allowed(*EVERY_ROLE), lambda c: Request(f"/api/devices/{c.device()}/status-history")
    ),
    ("GET", "/api/devices/{device_id}/series"): Row(
        allowed(*EVERY_ROLE), lambda c: Request(f"/api/devices/{c.device()}/series?metric=temperature")
    ),
    ("GET", "/api/fleet"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/fleet")),
    ("GET", "/api/admin/ingest"): Row(allowed(*STAFF_UP), lambda c: Request("/api/admin/ingest")),
    # --- plans, usage, audit
    ("GET", "/api/usage"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/usage")),
    ("GET", "/api/plans"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/plans")),
    ("GET", "/api/audit"): Row(allowed(*OWNER), lambda c: Request("/api/audit")),
    # --- exports: owners and staff
    ("POST", "/api/exports"): Row(
        allowed(*STAFF_UP, ok=201),
        lambda c: Request(
            "/api/exports", {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z", "format": "csv"}
        ),
    ),
    # --- alerts: staff and owners write, every role reads
    ("GET", "/api/alerts/rules"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/alerts/rules")),
    ("POST", "/api/alerts/rules"): Row(
        allowed(*STAFF_UP, ok=201),
        lambda c: Request(
            "/api/alerts/rules",
            {
                "name": "Too hot",
                "kind": "threshold",
                "metric": "temperature",
                "aggregation": "avg",
                "window_s": 300,
                "operator": ">",
                "value": 80,
                "clear_value": 75,
            },
        ),
    ),
    ("GET", "/api/alerts/rules/{rule_id}"): Row(
        allowed(*EVERY_ROLE), lambda c: Request(f"/api/alerts/rules/{_alert_rule(c)}")
    ),
    ("PUT", "/api/alerts/rules/{rule_id}"): Row(
        allowed(*STAFF_UP),
        lambda c: Request(f"/api/alerts/rules/{_alert_rule(c)}", {**NO_DATA_RULE, "severity": "critical"}),
    ),
    ("DELETE", "/api/alerts/rules/{rule_id}"): Row(
        allowed(*STAFF_UP, ok=204), lambda c: Request(f"/api/alerts/rules/{_new_alert_rule(c)}")
    ),
    ("GET", "/api/alerts/events"): Row(allowed(*EVERY_ROLE), lambda c: Request("/api/alerts/events?state=open")),
    ("POST", "/api/alerts/events/{event_id}/acknowledge"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/alerts/events/{_alert_event(c)}/acknowledge", {"comment": "on it"})
    ),
    ("POST", "/api/alerts/events/{event_id}/resolve"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/alerts/events/{_new_alert_event(c)}/resolve", {"comment": "fixed"})
    ),
    ("POST", "/api/alerts/evaluate"): Row(allowed(*STAFF_UP), lambda c: Request("/api/alerts/evaluate")),
    # --- alert webhooks: staff and owners only (a target's URL often carries the receiver's credential)
    ("POST", "/api/alerts/rules/{rule_id}/webhooks"): Row(
        allowed(*STAFF_UP, ok=201), lambda c: Request(f"/api/alerts/rules/{_new_alert_rule(c)}/webhooks", WEBHOOK)
    ),
    ("GET", "/api/alerts/rules/{rule_id}/webhooks"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/alerts/rules/{_webhook(c)[0]}/webhooks")
    ),
    ("DELETE", "/api/alerts/rules/{rule_id}/webhooks/{webhook_id}"): Row(
        allowed(*STAFF_UP, ok=204), lambda c: Request("/api/alerts/rules/{}/webhooks/{}".format(*_new_webhook(c)))
    ),
    ("POST", "/api/alerts/rules/{rule_id}/webhooks/{webhook_id}/rotate-secret"): Row(
        allowed(*STAFF_UP), lambda c: Request("/api/alerts/rules/{}/webhooks/{}/rotate-secret".format(*_webhook(c)))
    ),
    ("GET", "/api/alerts/webhooks/{webhook_id}/deliveries"): Row(
        allowed(*STAFF_UP), lambda c: Request(f"/api/alerts/webhooks/{_webhook(c)[1]}/deliveries?state=pending")
    ),
    # --- the platform operator: only an operator's token
    ("POST", "/api/platform/auth/login"): Row(
        anyone(200),
        lambda c: Request(
            "/api/platform/auth/login",
            {"email": OPERATOR_EMAIL, "password": PASSWORD},
            {"X-Forwarded-For": "198.51.100.21"},
        ),
    ),
    ("GET", "/api/platform/tenants"): Row(operator_only(), lambda c: Request("/api/platform/tenants")),
    ("POST", "/api/platform/tenants"): Row(
        operator_only(201),
        lambda c: Request(
            "/api/platform/tenants",
            {"slug": unique_slug("new"), "name": "New Works", "plan": "free", "owner_email": "boss@example.com"},
        ),
    ),
    ("PATCH", "/api/platform/tenants/{tenant_id}"): Row(
        operator_only(), lambda c: Request(f"/api/platform/tenants/{c.tenant['id']}", {"plan": "industrial"})
    ),
}


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every operation in the app's OpenAPI document (what /api/openapi.json
    serves; FastAPI nests included routers, so the document is the one complete list)."""
    return {
        (method.upper(), path)
        for path, item in api.openapi()["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    }


def test_every_route_has_a_row():
    missing = sorted(served_routes() - set(ROWS))
    assert not missing, f"routes with no row in the role matrix (say who may call them): {missing}"


def test_every_row_is_a_route():
    stale = sorted(key for key in set(ROWS) - served_routes() if not ROWS[key].pending)
    assert not stale, f"rows for routes the app no longer serves: {stale}"


@pytest.fixture
def context(monkeypatch, database, app_pool, settings, mosquitto_broker, azurite_server) -> Any:
    """The API with this test's database, live broker (commands with the stack's commander
    credential) and Azurite (exports), an unmetered tenant with a user of each role, and a platform
    operator."""
    export_api_settings(
        monkeypatch,
        database,
        MQTT_COMMANDER_USERNAME=mosquitto_broker.commander.username,
        MQTT_COMMANDER_PASSWORD=mosquitto_broker.commander.password,
        STORAGE_CONNECTION_STRING=azurite_server.connection_string,
        EXPORT_CONTAINER=f"exports-{uuid.uuid4().hex[:12]}",
    )
    tenant = create_tenant(app_pool, unique_slug(), "Matrix Works", "industrial")
    users = users_of_each_role(app_pool, tenant)
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO platform_operators (email, password_hash) VALUES (%s, %s)", (OPERATOR_EMAIL, PASSWORD_HASH)
        )
    reply = call("POST", "/api/platform/auth/login", {"email": OPERATOR_EMAIL, "password": PASSWORD})
    assert reply.status == 200, reply.body
    tokens: dict[str, str | None] = {role: user["token"] for role, user in users.items()}
    tokens.update(operator=reply.json["access_token"], anonymous=None)
    yield Context(app_pool, database, tenant, users, tokens)
    close_commander_connection()
    close_api_pool()


def _params() -> list[Any]:
    return [
        pytest.param(
            key, id=f"{key[0]} {key[1]}", marks=[pytest.mark.xfail(reason=row.xfail, strict=False)] if row.xfail else []
        )
        for key, row in sorted(ROWS.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


@pytest.mark.parametrize("route", _params())
def test_role_matrix(context, route):
    # GIVEN the route's row, and a caller of each role (or none)
    method, _ = route
    row = ROWS[route]
    if row.pending and route not in served_routes():
        pytest.skip(row.pending)
    got: dict[str, int] = {}
    for caller in CALLERS:
        request = row.request(context)
        # WHEN the caller sends a valid request
        reply: Reply = call(
            method, request.path, request.body, token=context.tokens[caller], headers=request.headers, raw=request.raw
        )
        got[caller] = reply.status
        if reply.status >= 400:
            assert reply.headers["content-type"].startswith("application/problem+json"), (caller, reply.body)
        # AND no answer may be cached (tokens, passwords, secrets and SAS links are among them) or
        # sniffed into something other than its type, whoever called and whatever the status
        assert reply.headers.get("cache-control") == "no-store", (caller, reply.status)
        assert reply.headers.get("x-content-type-options") == "nosniff", (caller, reply.status)
    # THEN each gets the status the matrix says
    assert got == row.expect
