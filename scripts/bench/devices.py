#!/usr/bin/env python3
"""Benchmarks device creation through the admin API, broker sync included.

    .venv/bin/python scripts/bench/devices.py [--creates 50] [--bulk-rows 500] [--bulk-runs 3]

Starts a private PostgreSQL, Mosquitto (TLS + dynamic security) and Azurite in a temporary folder,
then drives the app's registered `api` function as the Functions host would (the ASGI adapter and
the FastAPI app as deployed):
  create  POST /api/devices, one device at a time: the transaction (device, credential, outbox,
          audit), then the commands applied to the live broker before the answer (role + client);
  bulk    POST /api/devices/bulk with a CSV of --bulk-rows devices: one INSERT, then every
          device's commands applied before the answer.
Each answer is checked (201, broker_synced). The last line is machine-readable:
devices_bench create_median_ms=... create_p90_ms=... bulk_rows=... bulk_median_s=... bulk_per_device_ms=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import azure.functions as func  # noqa: E402

from localstack import LocalStack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--bulk-rows", type=int, default=500)
    parser.add_argument("--bulk-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-devices-") as tmp, LocalStack(tmp) as stack:
        env = stack.create_app_database("bench") | {"AUTH_JWT_SECRET": uuid.uuid4().hex * 2}
        os.environ.update(env)
        from function_app import app
        from shared.accounts.auth import open_session
        from shared.accounts.passwords import hash_password
        from shared.core.db import get_pool, tenant_transaction
        from shared.core.settings import get_settings
        from tests.support.registry import create_tenant

        api = next(f for f in app.get_functions() if f.get_function_name() == "api").get_user_function()
        pool = get_pool()
        pool.wait(30)
        tenant = create_tenant(pool, "bench", "Bench Works", "industrial")
        with tenant_transaction(pool, str(tenant["id"])) as conn:
            user = conn.execute(
                "INSERT INTO users (tenant_id, email, role, password_hash) "
                "VALUES (%s, 'owner@bench.example', 'owner', %s) RETURNING id",
                (tenant["id"], hash_password(uuid.uuid4().hex)),
            ).fetchone()
        assert user is not None
        token = open_session(pool, get_settings(), user["id"], tenant["id"]).access_token

        def call(path: str, body: bytes, content_type: str) -> tuple[int, Any]:
            request = func.HttpRequest(
                "POST",
                f"http://localhost{path}",
                body=body,
                headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
                route_params={"route": path.removeprefix("/api/")},
            )
            response = asyncio.run(api(request, None))
            return response.status_code, json.loads(response.get_body())

        call("/api/devices", json.dumps({"name": "warm-up"}).encode(), "application/json")
        create_ms = []
        for i in range(args.creates):
            started = time.perf_counter()
            status, body = call("/api/devices", json.dumps({"name": f"single-{i}"}).encode(), "application/json")
            create_ms.append((time.perf_counter() - started) * 1000)
            assert status == 201 and body["credential"]["broker_synced"], body
        bulk_s = []
        for run in range(args.bulk_runs):
            csv = "name,type,tags\n" + "".join(f"bulk-{run}-{i},sensor,line-{i % 5}\n" for i in range(args.bulk_rows))
            started = time.perf_counter()
            status, body = call("/api/devices/bulk", csv.encode(), "text/csv")
            bulk_s.append(time.perf_counter() - started)
            assert status == 201 and len(body["items"]) == args.bulk_rows, body
            assert all(item["credential"]["broker_synced"] for item in body["items"])
        pool.close()
    create_median = statistics.median(create_ms)
    create_p90 = statistics.quantiles(create_ms, n=10)[-1] if len(create_ms) >= 2 else create_median
    bulk_median = statistics.median(bulk_s)
    print(
        f"create through the API incl. broker sync: median {create_median:.1f} ms, p90 {create_p90:.1f} ms "
        f"({args.creates} creates)"
    )
    print(
        f"bulk CSV of {args.bulk_rows}: median {bulk_median:.2f} s over {args.bulk_runs} runs "
        f"({bulk_median / args.bulk_rows * 1000:.1f} ms per device); each run: "
        + ", ".join(f"{s:.2f} s" for s in bulk_s)
        + " (the broker grows by --bulk-rows clients per run: Mosquitto's "
        "plugin rewrites its whole config file after every change, so a command costs more as the broker grows)"
    )
    print(
        f"devices_bench create_median_ms={create_median:.1f} create_p90_ms={create_p90:.1f} "
        f"bulk_rows={args.bulk_rows} bulk_median_s={bulk_median:.2f} "
        f"bulk_per_device_ms={bulk_median / args.bulk_rows * 1000:.1f}"
    )


if __name__ == "__main__":
    main()
