"""Alert webhooks against a real database and real HTTP receivers (http.server on
127.0.0.1, one with TLS): the trigger enqueues one delivery per target for each event change, the
payloads arrive signed (checked with docs/webhooks.md's own example), retries back off and are
recorded, overlapping runs send each delivery once, a hanging receiver is cut at the timeout without
holding up another tenant, targets on private addresses are refused at creation and at delivery,
and the signing secret is stored only encrypted."""

from __future__ import annotations

import http.server
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.alerts import delivery as webhooks
from shared.alerts.evaluator import evaluate_tenant
from shared.core.db import tenant_transaction
from shared.core.exceptions import UnsafeTarget
from shared.core.settings import Settings, settings_from
from tests.support.api import new_tenant
from tests.support.registry import create_device
from tests.support.waiting import query

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
JWT_SECRET = secrets.token_hex(32)


def readme_verify() -> Callable[..., bool]:
    """The verification example of docs/webhooks.md, run as written."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # noqa: S102 - the repository's own documentation
    return namespace["verify"]  # type: ignore[no-any-return]


# -- a real receiver -------------------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (then `then`), or hangs while `hang` is set."""

    url: str
    requests: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    then: int = 200
    hang: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.requests.append(Received(dict(self.headers.items()), body, time.time()))
            if receiver.hang.is_set():
                receiver.release.wait(30)  # the sender must give up long before
                return
            status = receiver.script.pop(0) if receiver.script else receiver.then
            answer = json.dumps({"status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return Handler


@pytest.fixture
def receive() -> Iterator[Callable[..., Receiver]]:
    servers: list[tuple[http.server.ThreadingHTTPServer, Receiver]] = []

    def start(tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> Receiver:
        receiver = Receiver(url="")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
        server.daemon_threads = True
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        receiver.url = f"{'https' if tls else 'http'}://{host}:{server.server_address[1]}/hooks/alerts?src=mqtt-saas"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, receiver))
        return receiver

    yield start
    for server, receiver in servers:
        receiver.release.set()
        server.shutdown()
        server.server_close()


# -- the database side -----------------------------------------------------------------------------------------


def settings_for(database: Any, **overrides: str) -> Settings:
    return settings_from(
        {
            "DATABASE_URL": database.app_dsn,
            "INGEST_DATABASE_URL": database.ingest_dsn,
            "AUTH_JWT_SECRET": JWT_SECRET,
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            "WEBHOOK_TIMEOUT_S": "1",
            **overrides,
        }
    )


@pytest.fixture
def local(database) -> Settings:
    return settings_for(database)


def add_rule(app_pool, tenant: dict[str, Any], name: str = "Boiler too hot") -> str:
    """A threshold rule that opens an event at the first evaluation over 80."""
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        row = conn.execute(
            "INSERT INTO alert_rules (tenant_id, name, kind, scope, metric, aggregation, window_s, operator, value,"
            " clear_value, severity) VALUES (%s, %s, 'threshold', 'all', 'temperature', 'last', 300, '>', 80, 70,"
            " 'critical') RETURNING id",
            (tenant["id"], name),
        ).fetchone()
    assert row is not None
    return str(row["id"])


def add_target(app_pool, settings: Settings, tenant: dict[str, Any], rule_id: str, url: str) -> tuple[str, str]:
    """A target as the API stores it: (its id, its plaintext secret)."""
    secret = webhooks.new_secret()
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        row = conn.execute(
            "INSERT INTO alert_webhooks (tenant_id, rule_id, url, secret_encrypted)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (tenant["id"], rule_id, url, webhooks.encrypt_secret(settings, secret)),
        ).fetchone()
    assert row is not None
    return str(row["id"]), secret


def hot(app_pool, tenant: dict[str, Any], name: str = "boiler-01", value: float = 95.0) -> int:
    device = int(create_device(app_pool, str(tenant["id"]), name)["id"])
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, %s, %s, %s)",
            (tenant["id"], device, datetime.now(UTC), "temperature", value),
        )
    return device


def deliveries(app_pool, tenant: dict[str, Any]) -> list[dict[str, Any]]:
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        return conn.execute("SELECT * FROM webhook_deliveries ORDER BY created_at, id").fetchall()


def attempts(app_pool, tenant: dict[str, Any], delivery_id: Any) -> list[dict[str, Any]]:
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        return conn.execute(
            "SELECT * FROM webhook_attempts WHERE delivery_id = %s ORDER BY attempt", (delivery_id,)
        ).fetchall()


def make_due(database: Any) -> None:
    """Time passes: every pending delivery's backoff is over (the owner moves next_attempt_at, no sleeping)."""
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE state = 'pending'")


@pytest.fixture
def plant(app_pool, local):
    """A tenant with a rule that fires on its hot boiler."""
    tenant = new_tenant(app_pool)
    return tenant, add_rule(app_pool, tenant)


# -- tests -----------------------------------------------------------------------------------------------------


def test_an_opened_event_reaches_every_target_signed_and_verifiable(app_pool, local, plant, receive):
    tenant, rule = plant
    first, second = receive(), receive()
    _, first_secret = add_target(app_pool, local, tenant, rule, first.url)
    _, second_secret = add_target(app_pool, local, tenant, rule, second.url)
    device = hot(app_pool, tenant)

    # WHEN the evaluator opens an event
    assert evaluate_tenant(app_pool, str(tenant["id"])).opened == 1
    # THEN exactly one delivery per target was enqueued with it, in its transaction
    queued = deliveries(app_pool, tenant)
    assert sorted((d["kind"], d["state"], d["attempts"]) for d in queued) == [("alert.opened", "pending", 0)] * 2

    # WHEN the due deliveries are sent
    report = webhooks.deliver_due(app_pool, local, 10)
    assert (report.delivered, report.attempted) == (2, 2)
    # THEN each receiver got one request that docs/webhooks.md's example verifies with that target's secret
    verify = readme_verify()
    for receiver, secret, other in ((first, first_secret, second_secret), (second, second_secret, first_secret)):
        [request] = receiver.requests
        assert verify(secret, request.headers, request.body)
        assert webhooks.verify(secret, request.headers, request.body)
        assert not verify(other, request.headers, request.body)
        assert request.headers["Content-Type"] == "application/json"
        body = json.loads(request.body)
        assert body["id"] == request.headers["Webhook-Id"]
        assert (
            body["type"],
            body["tenant"],
            body["event"]["state"],
            body["event"]["severity"],
            body["event"]["value"],
            body["rule"]["id"],
            body["rule"]["name"],
            body["device"]["id"],
            body["device"]["name"],
        ) == ("alert.opened", tenant["slug"], "open", "critical", 95.0, rule, "Boiler too hot", device, "boiler-01")
        # AND a tampered body, or the same request replayed later, fails verification
        tampered = request.body.replace(b'"value":95', b'"value":15')
        assert tampered != request.body
        assert not verify(secret, request.headers, tampered)
        assert not webhooks.verify(secret, request.headers, tampered)
        assert not webhooks.verify(secret, request.headers, request.body, now=time.time() + 301)
        old = int(request.headers["Webhook-Timestamp"]) - 600
        replayed = {**request.headers, **webhooks.signed_headers(secret, body["id"], request.body, now=old)}
        assert webhooks.verify(secret, replayed, request.body, now=old)  # genuinely signed, then...
        assert not verify(secret, replayed, request.body)  # ...refused as too old
    assert {d["state"] for d in deliveries(app_pool, tenant)} == {"delivered"}

    # WHEN the evaluator runs again with the event still open THEN nothing more is enqueued or sent
    evaluate_tenant(app_pool, str(tenant["id"]))
    assert webhooks.deliver_due(app_pool, local, 10).attempted == 0
    assert len(deliveries(app_pool, tenant)) == 2


def test_failing_receiver_is_retried_with_backoff_until_it_answers(app_pool, database, local, plant, receive):
    tenant, rule = plant
    receiver = receive()
    receiver.script = [500, 500]  # then 200
    _, secret = add_target(app_pool, local, tenant, rule, receiver.url)
    hot(app_pool, tenant)
    evaluate_tenant(app_pool, str(tenant["id"]))

    # WHEN the first attempt gets a 500
    assert webhooks.deliver_due(app_pool, local, 10).retrying == 1
    [delivery] = deliveries(app_pool, tenant)
    [first] = attempts(app_pool, tenant, delivery["id"])
    # THEN it is pending again, due 30 s (+-20 %) after the attempt, and a run before then sends nothing
    assert (delivery["state"], delivery["attempts"], delivery["last_status_code"]) == ("pending", 1, 500)
    assert 24 <= (delivery["next_attempt_at"] - first["started_at"]).total_seconds() <= 37
    assert webhooks.deliver_due(app_pool, local, 10).attempted == 0
    assert len(receiver.requests) == 1

    # WHEN its backoff is over THEN the second attempt (500 again) backs off about twice as long
    make_due(database)
    assert webhooks.deliver_due(app_pool, local, 10).retrying == 1
    [delivery] = deliveries(app_pool, tenant)
    second = attempts(app_pool, tenant, delivery["id"])[1]
    assert 48 <= (delivery["next_attempt_at"] - second["started_at"]).total_seconds() <= 73

    # WHEN the third attempt is due THEN it delivers
    make_due(database)
    assert webhooks.deliver_due(app_pool, local, 10).delivered == 1
    [delivery] = deliveries(app_pool, tenant)
    assert (delivery["state"], delivery["attempts"], delivery["last_error"]) == ("delivered", 3, None)
    recorded = attempts(app_pool, tenant, delivery["id"])
    assert [(a["attempt"], a["status_code"]) for a in recorded] == [(1, 500), (2, 500), (3, 200)]
    assert [a["error"] for a in recorded] == ["HTTP 500", "HTTP 500", None]
    assert recorded[2]["response_excerpt"] == '{"status": 200}'
    assert all(a["duration_ms"] >= 0 for a in recorded)
    # AND the three requests carried the same Webhook-Id and body, each with its own fresh, valid signature
    assert len({r.headers["Webhook-Id"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    stamps = [int(r.headers["Webhook-Timestamp"]) for r in receiver.requests]
    assert stamps == sorted(stamps) and all(
        abs(r.at - int(r.headers["Webhook-Timestamp"])) < 2 for r in receiver.requests
    )
    assert all(webhooks.verify(secret, r.headers, r.body) for r in receiver.requests)


def test_a_delivery_is_given_up_after_the_last_attempt(app_pool, database, plant, receive):
    tenant, rule = plant
    settings = settings_for(database, WEBHOOK_MAX_ATTEMPTS="2")
    receiver = receive()
    receiver.then = 503
    add_target(app_pool, settings, tenant, rule, receiver.url)
    hot(app_pool, tenant)
    evaluate_tenant(app_pool, str(tenant["id"]))
    assert webhooks.deliver_due(app_pool, settings, 10).retrying == 1
    make_due(database)
    # WHEN the second (last) attempt fails THEN the delivery is failed for good
    assert webhooks.deliver_due(app_pool, settings, 10).failed == 1
    [delivery] = deliveries(app_pool, tenant)
    assert (delivery["state"], delivery["attempts"], delivery["last_status_code"]) == ("failed", 2, 503)
    make_due(database)
    assert webhooks.deliver_due(app_pool, settings, 10).attempted == 0


def test_a_410_gone_disables_the_target(app_pool, local, plant, receive):
    tenant, rule = plant
    receiver = receive()
    receiver.then = 410
    webhook, _ = add_target(app_pool, local, tenant, rule, receiver.url)
    hot(app_pool, tenant)
    evaluate_tenant(app_pool, str(tenant["id"]))
    webhooks.deliver_due(app_pool, local, 10)
    [delivery] = deliveries(app_pool, tenant)
    assert delivery["state"] == "failed"
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        target = conn.execute(
            "SELECT enabled, disabled_reason FROM alert_webhooks WHERE id = %s", (webhook,)
        ).fetchone()
        # AND the event's next change enqueues nothing for it
        conn.execute("UPDATE alert_events SET state = 'resolved', resolved_at = now()")
    assert target == {"enabled": False, "disabled_reason": "the receiver answered 410 Gone"}
    assert len(deliveries(app_pool, tenant)) == 1


def test_each_state_change_enqueues_once_and_a_rolled_back_change_nothing(app_pool, local, plant, receive):
    tenant, rule = plant
    add_target(app_pool, local, tenant, rule, receive().url)
    hot(app_pool, tenant)
    evaluate_tenant(app_pool, str(tenant["id"]))
    tenant_id = str(tenant["id"])

    # WHEN the event is acknowledged twice (the second only updates who and when), and a resolve rolls back
    for _ in range(2):
        with tenant_transaction(app_pool, tenant_id) as conn:
            conn.execute("UPDATE alert_events SET state = 'acknowledged', acknowledged_at = now()")
    with pytest.raises(RuntimeError), tenant_transaction(app_pool, tenant_id) as conn:
        conn.execute("UPDATE alert_events SET state = 'resolved', resolved_at = now()")
        raise RuntimeError("the request failed after the change")
    # THEN one opened and one acknowledged delivery exist, with the payload as it was at each change
    queued = deliveries(app_pool, tenant)
    assert [(d["kind"], d["payload"]["event"]["state"]) for d in queued] == [
        ("alert.opened", "open"),
        ("alert.acknowledged", "acknowledged"),
    ]

    # WHEN the evaluator resolves it (the condition cleared) THEN alert.resolved follows
    with tenant_transaction(app_pool, tenant_id) as conn:
        conn.execute(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value)"
            " SELECT tenant_id, id, now(), 'temperature', 20 FROM devices"
        )
    assert evaluate_tenant(app_pool, tenant_id).resolved == 1
    assert [d["kind"] for d in deliveries(app_pool, tenant)][-1] == "alert.resolved"


def test_overlapping_runs_send_each_delivery_once(app_pool, local, plant, receive):
    tenant, rule = plant
    receiver = receive()
    for _ in range(2):
        add_target(app_pool, local, tenant, rule, receiver.url)
    for n in range(4):
        hot(app_pool, tenant, name=f"boiler-{n}")
    evaluate_tenant(app_pool, str(tenant["id"]))
    assert len(deliveries(app_pool, tenant)) == 8

    # WHEN three runs deliver at once
    reports: list[webhooks.DeliveryReport] = []
    runs = [
        threading.Thread(target=lambda: reports.append(webhooks.deliver_due(app_pool, local, 10))) for _ in range(3)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(30)
    # THEN every delivery was sent exactly once
    assert sum(r.delivered for r in reports) == 8
    ids = [r.headers["Webhook-Id"] for r in receiver.requests]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert {(d["state"], d["attempts"]) for d in deliveries(app_pool, tenant)} == {("delivered", 1)}


def test_a_hanging_receiver_is_cut_and_another_tenant_still_gets_its_delivery(app_pool, local, receive):
    # GIVEN tenant A whose receiver never answers (three events for it), and tenant B with a healthy one
    slow_tenant, fast_tenant = new_tenant(app_pool), new_tenant(app_pool)
    slow, fast = receive(), receive()
    slow.hang.set()
    add_target(app_pool, local, slow_tenant, add_rule(app_pool, slow_tenant), slow.url)
    add_target(app_pool, local, fast_tenant, add_rule(app_pool, fast_tenant), fast.url)
    for n in range(3):
        hot(app_pool, slow_tenant, name=f"boiler-{n}")
    hot(app_pool, fast_tenant)
    for tenant in (slow_tenant, fast_tenant):
        evaluate_tenant(app_pool, str(tenant["id"]))

    # WHEN one run delivers (timeout 1 s)
    report = webhooks.deliver_due(app_pool, local, 10, workers=2)
    # THEN B's delivery arrived, A's attempt was cut at the timeout and recorded, and A's other two
    # deliveries were left for a later run instead of each waiting out the timeout
    assert len(fast.requests) == 1 and deliveries(app_pool, fast_tenant)[0]["state"] == "delivered"
    assert (report.delivered, report.retrying) == (1, 1)
    slow_deliveries = deliveries(app_pool, slow_tenant)
    [tried] = [d for d in slow_deliveries if d["attempts"]]
    [attempt] = attempts(app_pool, slow_tenant, tried["id"])
    assert (attempt["status_code"], attempt["error"]) == (None, "no answer within 1 s")
    assert 900 <= attempt["duration_ms"] < 5000
    assert sorted(d["attempts"] for d in slow_deliveries) == [0, 0, 1]


def test_https_target_is_reached_at_the_checked_address_with_the_certificate_checked_for_its_name(
    app_pool, database, local, plant, receive, mosquitto_broker
):
    # GIVEN a TLS receiver with the local CA's certificate for localhost (the broker's), at https://localhost
    tenant, rule = plant
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base = Path(mosquitto_broker.ca_file).parent
    tls.load_cert_chain(base / "server.crt", base / "server.key")
    receiver = receive(tls=tls, host="localhost")
    _, secret = add_target(app_pool, local, tenant, rule, receiver.url)
    hot(app_pool, tenant)
    evaluate_tenant(app_pool, str(tenant["id"]))

    # WHEN delivered trusting the system's CAs only THEN the certificate is refused, and that is recorded
    assert webhooks.deliver_due(app_pool, local, 10).retrying == 1
    [delivery] = deliveries(app_pool, tenant)
    assert delivery["last_error"].startswith("TLS certificate not valid"), delivery["last_error"]
    assert not receiver.requests

    # WHEN delivered trusting the local CA THEN it arrives (SNI and verification used the name, the
    # connection the checked address), the Host header naming the URL's host and port
    make_due(database)
    assert webhooks.deliver_due(app_pool, local, 10, ca_file=str(mosquitto_broker.ca_file)).delivered == 1
    [request] = receiver.requests
    assert request.headers["Host"] == receiver.url.split("/")[2]
    assert webhooks.verify(secret, request.headers, request.body)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/alerts",  # plain http
        "https://127.0.0.1/alerts",  # loopback
        "https://10.1.2.3/alerts",  # RFC 1918
        "https://192.168.0.10/alerts",
        "https://169.254.169.254/latest/meta-data",  # the cloud metadata endpoint (link-local)
        "https://100.64.0.1/alerts",  # CGNAT
        "https://[::1]/alerts",  # IPv6 loopback
        "https://[fd00::1]/alerts",  # IPv6 unique local
        "https://[::ffff:127.0.0.1]/alerts",  # IPv4-mapped loopback
        "https://[64:ff9b::a00:1]/alerts",  # NAT64 of 10.0.0.1
        "https://168.63.129.16/",  # Azure's platform address (WireServer), "global" to ipaddress
        "https://168.63.129.16:32526/machine",
        "https://[::ffff:168.63.129.16]/",  # the same, IPv4-mapped
        "https://[64:ff9b::a83f:8110]/",  # the same, NAT64
        "https://2822734096/",  # the same as one decimal number
        "https://[fd00:ec2::254]/latest/meta-data",  # AWS metadata over IPv6
        "https://[fd20:ce::254]/computeMetadata/v1",  # Google Cloud metadata over IPv6
        "https://100.100.100.200/latest/meta-data",  # Alibaba Cloud metadata
        "https://169.254.170.2/v2/credentials",  # AWS ECS task credentials
        "https://0.0.0.0/alerts",
        "https://localhost/alerts",  # a name that resolves to loopback
        "https://2130706433/alerts",  # 127.0.0.1 as one decimal number
        "https://user:pass@hooks.example.com/alerts",
        "https://hooks.example.com/alerts#frag",
        "ftp://hooks.example.com/alerts",
        "https:///alerts",
        "https://hooks.example.com:99999/alerts",
        "https://hooks.example.com/" + "a" * 2048,
    ],
)
def test_unsafe_targets_are_refused_where_private_targets_are_not_allowed(url):
    strict = settings_from({"DATABASE_URL": "postgresql://x", "INGEST_DATABASE_URL": "postgresql://x"})
    with pytest.raises(UnsafeTarget):
        webhooks.check_target(url, strict)


def test_public_targets_are_accepted_and_an_unresolvable_host_with_a_warning():
    strict = settings_from({"DATABASE_URL": "postgresql://x", "INGEST_DATABASE_URL": "postgresql://x"})
    assert webhooks.check_target("https://93.184.215.14/alerts?token=abc", strict) == []
    assert webhooks.check_target("https://[2606:4700::1111]/alerts", strict) == []
    [warning] = webhooks.check_target("https://no-such-host.invalid/alerts", strict)
    assert "does not resolve" in warning
    # AND locally (both allowed) plain http to loopback is fine
    local = settings_from(
        {
            "DATABASE_URL": "postgresql://x",
            "INGEST_DATABASE_URL": "postgresql://x",
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        }
    )
    assert webhooks.check_target("http://localhost:8080/alerts", local) == []


def test_the_address_is_checked_again_at_delivery(app_pool, database, plant, receive):
    # GIVEN a target on loopback stored while private targets were allowed, and a deployment that now refuses them
    tenant, rule = plant
    receiver = receive(host="localhost")
    add_target(app_pool, settings_for(database), tenant, rule, receiver.url)
    hot(app_pool, tenant)
    evaluate_tenant(app_pool, str(tenant["id"]))
    strict = settings_for(database, WEBHOOK_ALLOW_PRIVATE_TARGETS="false")
    # WHEN delivered THEN nothing reaches the receiver, and the attempt says why
    assert webhooks.deliver_due(app_pool, strict, 10).retrying == 1
    [delivery] = deliveries(app_pool, tenant)
    assert delivery["last_error"].startswith("refused: ") and "private" in delivery["last_error"]
    assert not receiver.requests


def test_the_secret_is_stored_only_encrypted(app_pool, database, local, plant):
    tenant, rule = plant
    webhook, secret = add_target(app_pool, local, tenant, rule, "https://hooks.example.com/alerts")
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", secret)
    # WHEN the app role reads everything it may of the target THEN the plaintext is nowhere in it
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        row = conn.execute(
            "SELECT row_to_json(w)::text AS text, w.secret_encrypted FROM alert_webhooks w WHERE id = %s", (webhook,)
        ).fetchone()
    assert row is not None and secret not in row["text"] and secret.removeprefix("whsec_") not in row["text"]
    # AND nothing in the database holds it (the owner sees every row)
    assert query(
        database,
        "SELECT count(*) FROM alert_webhooks w WHERE row_to_json(w)::text LIKE %(s)s",
        {"s": f"%{secret.removeprefix('whsec_')}%"},
    ) == [(0,)]
    # AND only the app's key opens it: another JWT secret derives another key
    assert webhooks.decrypt_secret(local, row["secret_encrypted"]) == secret
    assert (
        webhooks.decrypt_secret(settings_for(database, AUTH_JWT_SECRET=secrets.token_hex(32)), row["secret_encrypted"])
        is None
    )


def test_nothing_due_ends_at_once(app_pool, local):
    new_tenant(app_pool)
    report = webhooks.deliver_due(app_pool, local, 10)
    assert (report.tenants, report.attempted) == (0, 0)


def test_a_tenant_with_a_backlog_takes_turns_with_the_others(app_pool, local, receive):
    # GIVEN tenant A with 12 deliveries queued and tenant B with one, one worker, turns of 4 deliveries
    busy, quiet = new_tenant(app_pool), new_tenant(app_pool)
    receiver = receive()
    add_target(app_pool, local, busy, add_rule(app_pool, busy), receiver.url)
    add_target(app_pool, local, quiet, add_rule(app_pool, quiet), receiver.url)
    for n in range(12):
        hot(app_pool, busy, name=f"boiler-{n}")
    hot(app_pool, quiet)
    for tenant in (busy, quiet):
        evaluate_tenant(app_pool, str(tenant["id"]))
    # WHEN one run delivers THEN everything is sent, and B's delivery went out within A's first turn or before it
    report = webhooks.deliver_due(app_pool, local, 30, workers=1, batch=4)
    assert (report.tenants, report.delivered) == (2, 13)
    order = [json.loads(r.body)["tenant"] for r in receiver.requests]
    assert order.index(quiet["slug"]) <= 4


def test_the_registered_alert_evaluator_timer_delivers_what_its_evaluation_opened(
    monkeypatch, database, app_pool, receive
):
    import azure.functions as func

    from tests.support.api import close_api_pool, export_api_settings
    from tests.support.devices import registered_functions

    # GIVEN a rule with a target and a hot device, and the app's settings (http and loopback allowed, as locally)
    tenant = new_tenant(app_pool)
    receiver = receive()
    export_api_settings(monkeypatch, database, WEBHOOK_ALLOW_HTTP="true", WEBHOOK_ALLOW_PRIVATE_TARGETS="true")
    from shared.core.settings import get_settings

    _, secret = add_target(app_pool, get_settings(), tenant, add_rule(app_pool, tenant), receiver.url)
    hot(app_pool, tenant)
    try:
        # WHEN the registered timer runs once, as the host would call it
        registered_functions()["alert_evaluator"].get_user_function()(func.timer.TimerRequest(past_due=False))
    finally:
        close_api_pool()
    # THEN the event it opened was delivered in the same run, signed
    [request] = receiver.requests
    assert json.loads(request.body)["type"] == "alert.opened"
    assert webhooks.verify(secret, request.headers, request.body)
    assert [d["state"] for d in deliveries(app_pool, tenant)] == ["delivered"]


def test_settled_deliveries_are_pruned_after_the_retention_and_pending_ones_kept(
    app_pool, database, local, plant, receive
):
    # GIVEN two events' deliveries: one delivered, one pending (its receiver failed), both older than the retention
    tenant, rule = plant
    receiver = receive()
    receiver.script = [200, 500]
    add_target(app_pool, local, tenant, rule, receiver.url)
    for n in range(2):
        hot(app_pool, tenant, name=f"boiler-{n}")
    evaluate_tenant(app_pool, str(tenant["id"]))
    webhooks.deliver_due(app_pool, local, 10, workers=1, batch=1)  # one a turn: both tried in this run
    assert sorted(d["state"] for d in deliveries(app_pool, tenant)) == ["delivered", "pending"]
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE webhook_deliveries SET created_at = now() - make_interval(days => %s),"
            " next_attempt_at = now() + interval '1 hour'",
            (webhooks.RETENTION_DAYS + 1,),
        )
    # WHEN a delivery run ends THEN the delivered one is gone with its attempt, the pending one stays
    assert webhooks.deliver_due(app_pool, local, 10).pruned == 1
    assert [d["state"] for d in deliveries(app_pool, tenant)] == ["pending"]
    assert query(database, "SELECT count(*) FROM webhook_attempts") == [(1,)]
