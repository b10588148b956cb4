#!/usr/bin/env python3
"""Benchmarks webhook delivery: the outbox's throughput to a local receiver against the same HTTP calls with no
database work, and a delivery step with nothing due.

    .venv/bin/python scripts/bench/webhooks.py [--tenants 20] [--events 50]

Starts a private PostgreSQL (and the rest of the local stack) in a temporary folder, and a receiver (http.server,
threaded, answering 204) on 127.0.0.1. Each tenant gets one rule with one target and --events open events (inserted
as the owner: the trigger enqueues one delivery each), then times:
  deliver_due   shared.alerts.delivery.deliver_due as the alert_evaluator timer runs it (4 lanes, one per tenant at a
                time): per delivery a claim, the signed POST, the attempt recorded and the delivery settled;
  http only     the same signed POSTs (shared.alerts.delivery.post, same bodies), 4 threads, no database;
  idle          deliver_due with nothing due (median of 20): what the timer pays every minute when all is quiet.
The last line is machine-readable:
webhooks_bench deliveries=<n> deliver_s=<s> deliveries_per_s=<n/s> http_only_per_s=<n/s> idle_ms=<ms>
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import psycopg  # noqa: E402

from localstack import LocalStack  # noqa: E402


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        with Quiet.lock:
            Quiet.received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--events", type=int, default=50, help="open events (deliveries) per tenant")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    server.request_queue_size = 128
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp, LocalStack(tmp) as stack:
        env = stack.create_app_database("bench") | {
            "AUTH_JWT_SECRET": uuid.uuid4().hex * 2,
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
        }
        os.environ.update(env)
        from shared.alerts import delivery
        from shared.core.db import get_pool
        from shared.core.settings import get_settings

        settings = get_settings()
        secret = delivery.new_secret()
        encrypted = delivery.encrypt_secret(settings, secret)
        with psycopg.connect(stack.postgres.superuser_dsn("bench"), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO tenants (slug, name, plan) SELECT 'bench-' || g, 'Bench ' || g, 'industrial'"
                " FROM generate_series(1, %s) g",
                (args.tenants,),
            )
            conn.execute(
                "INSERT INTO devices (tenant_id, name) SELECT t.id, 'd-' || g FROM tenants t, generate_series(1, %s) g",
                (args.events,),
            )
            conn.execute(
                "INSERT INTO alert_rules (tenant_id, name, kind, scope, no_data_minutes)"
                " SELECT id, 'silent', 'no_data', 'all', 10 FROM tenants"
            )
            conn.execute(
                "INSERT INTO alert_webhooks (tenant_id, rule_id, url, secret_encrypted)"
                " SELECT tenant_id, id, %s, %s FROM alert_rules",
                (url, encrypted),
            )
            conn.execute(
                "INSERT INTO alert_events (tenant_id, rule_id, device_id, severity, value)"
                " SELECT r.tenant_id, r.id, d.id, 'warning', 900 FROM alert_rules r"
                " JOIN devices d ON d.tenant_id = r.tenant_id"
            )
            conn.execute("VACUUM ANALYZE")
            payloads = [(str(row[0]), row[1]) for row in conn.execute("SELECT id, payload FROM webhook_deliveries")]
        total = len(payloads)
        print(f"setup: {args.tenants} tenants, {total} deliveries queued", flush=True)

        pool = get_pool()
        pool.wait(30)
        started = time.perf_counter()
        report = delivery.deliver_due(pool, settings, 600)
        deliver_s = time.perf_counter() - started
        assert report.delivered == total, report
        print(f"deliver_due  {total} delivered in {deliver_s:.2f} s: {total / deliver_s:.0f} deliveries/s", flush=True)

        bodies = [delivery.body_of(delivery_id, payload) for delivery_id, payload in payloads]

        def send(index: int) -> None:
            body = bodies[index]
            result = delivery.post(url, body, delivery.signed_headers(secret, payloads[index][0], body), settings)
            assert result.ok, result

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=delivery.WORKERS) as executor:
            list(executor.map(send, range(total)))
        http_s = time.perf_counter() - started
        print(f"http only    {total} POSTs in {http_s:.2f} s: {total / http_s:.0f} requests/s", flush=True)

        idle = []
        for _ in range(20):
            started = time.perf_counter()
            assert delivery.deliver_due(pool, settings, 10).attempted == 0
            idle.append((time.perf_counter() - started) * 1000)
        idle_ms = statistics.median(idle)
        print(f"idle         deliver_due with nothing due: median {idle_ms:.2f} ms", flush=True)
        assert Quiet.received == 2 * total
        pool.close()
    server.shutdown()
    print(
        f"webhooks_bench deliveries={total} deliver_s={deliver_s:.2f} deliveries_per_s={total / deliver_s:.0f}"
        f" http_only_per_s={total / http_s:.0f} idle_ms={idle_ms:.2f}"
    )


if __name__ == "__main__":
    main()
