#!/usr/bin/env python3
"""Benchmarks what plan quotas cost the API: the database's quota trigger on device inserts, and
GET /api/usage.

    .venv/bin/python scripts/bench/quotas.py [--devices 1000] [--inserts 200]

Starts a private PostgreSQL, Mosquitto and Azurite in a temporary folder (only PostgreSQL is
used), makes a tenant on a metered plan (its device limit raised out of the way) holding
--devices devices, then times, alternating in rounds so both see the same machine load:
  insert  one device per transaction as the app role (lock the tenant row, count its devices),
          with the trigger and with it disabled;
  bulk    --devices more devices in one INSERT, with and without the trigger;
  usage   GET /api/usage through the registered `api` function (one tenant_transaction: plan,
          counts, this hour's messages).
The last line is machine-readable:
quotas_bench insert_p50_ms=... insert_no_trigger_p50_ms=... bulk_ms=... bulk_no_trigger_ms=... usage_p50_ms=...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import azure.functions as func  # noqa: E402
import psycopg  # noqa: E402

from localstack import LocalStack  # noqa: E402

ROUNDS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--inserts", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-quotas-") as tmp, LocalStack(tmp) as stack:
        env = stack.create_app_database("bench") | {"AUTH_JWT_SECRET": uuid.uuid4().hex * 2}
        os.environ.update(env)
        owner_dsn = stack.postgres.superuser_dsn("bench")
        from function_app import app
        from shared.accounts.auth import open_session
        from shared.accounts.passwords import hash_password
        from shared.core.db import get_pool, tenant_transaction
        from shared.core.settings import get_settings
        from tests.support.registry import create_tenant

        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute("UPDATE plans SET max_devices = 1000000 WHERE name = 'professional'")
        pool = get_pool()
        pool.wait(30)
        tenant = create_tenant(pool, "bench", "Bench Works", "professional")
        tid = str(tenant["id"])
        with tenant_transaction(pool, tid) as conn:
            conn.execute(
                "INSERT INTO devices (tenant_id, name) SELECT %s, 'base-' || g FROM generate_series(1, %s) g",
                (tid, args.devices),
            )
            user = conn.execute(
                "INSERT INTO users (tenant_id, email, role, password_hash) "
                "VALUES (%s, 'viewer@bench.example', 'viewer', %s) RETURNING id",
                (tid, hash_password(uuid.uuid4().hex)),
            ).fetchone()
        assert user is not None
        token = open_session(pool, get_settings(), user["id"], tenant["id"]).access_token
        api = next(f for f in app.get_functions() if f.get_function_name() == "api").get_user_function()

        def set_trigger(enabled: bool) -> None:
            with psycopg.connect(owner_dsn, autocommit=True) as conn:
                conn.execute(f"ALTER TABLE devices {'ENABLE' if enabled else 'DISABLE'} TRIGGER devices_plan_limit")

        inserts: dict[bool, list[float]] = {True: [], False: []}
        bulks: dict[bool, list[float]] = {True: [], False: []}
        serial = 0
        for round_ in range(ROUNDS):
            for enabled in (True, False):
                set_trigger(enabled)
                for _ in range(args.inserts // ROUNDS):
                    serial += 1
                    started = time.perf_counter()
                    with tenant_transaction(pool, tid) as conn:
                        conn.execute("INSERT INTO devices (tenant_id, name) VALUES (%s, %s)", (tid, f"one-{serial}"))
                    inserts[enabled].append(time.perf_counter() - started)
                started = time.perf_counter()
                with tenant_transaction(pool, tid) as conn:
                    conn.execute(
                        "INSERT INTO devices (tenant_id, name) SELECT %s, %s || g FROM generate_series(1, %s) g",
                        (tid, f"bulk-{round_}-{enabled}-", args.devices),
                    )
                bulks[enabled].append(time.perf_counter() - started)
        set_trigger(True)

        usage_ms = []
        for _ in range(100):
            request = func.HttpRequest(
                "GET",
                "http://localhost/api/usage",
                body=b"",
                headers={"Authorization": f"Bearer {token}"},
                route_params={"route": "usage"},
            )
            started = time.perf_counter()
            response = asyncio.run(api(request, None))
            usage_ms.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.get_body()

        p50 = {k: statistics.median(v) * 1000 for k, v in inserts.items()}
        bulk = {k: statistics.median(v) * 1000 for k, v in bulks.items()}
        print(
            f"insert one device (tenant of {args.devices}+): p50 {p50[True]:.2f} ms with the trigger, "
            f"{p50[False]:.2f} ms without"
        )
        print(f"insert {args.devices} devices in one statement: {bulk[True]:.1f} ms with, {bulk[False]:.1f} ms without")
        print(f"GET /api/usage: p50 {statistics.median(usage_ms):.2f} ms")
        print(
            f"quotas_bench insert_p50_ms={p50[True]:.2f} insert_no_trigger_p50_ms={p50[False]:.2f} "
            f"bulk_ms={bulk[True]:.1f} bulk_no_trigger_ms={bulk[False]:.1f} "
            f"usage_p50_ms={statistics.median(usage_ms):.2f}"
        )


if __name__ == "__main__":
    main()
