"""The plans' messages-per-hour quota in the drain, end to end: a device on TLS, the real broker,
the registered mqtt_ingest function, real PostgreSQL. Over the quota, exactly the excess becomes
dead letters with reason `quota` (never dropped silently), the rest is stored, and usage is
counted per tenant and UTC hour; a bigger plan lifts the quota for the next run."""

from __future__ import annotations

import time

import psycopg

from tests.support.devices import Device, new_tenant_with_devices, run_mqtt_ingest
from tests.support.waiting import query

NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


def _set_rate(database, plan: str, per_hour: int | None) -> None:
    # Plans are platform data (owner only); a test's private database may shrink one.
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute("UPDATE plans SET messages_per_hour = %s WHERE name = %s", (per_hour, plan))


def _publish(device: Device, first_seq: int, count: int) -> None:
    ts = NOW_MS() - 60_000
    acks = device.wait_acked(
        [
            device.publish("telemetry", {"ts": ts + seq, "seq": seq, "metrics": {"v": seq}})
            for seq in range(first_seq, first_seq + count)
        ]
    )
    assert set(acks.values()) == {0}


def test_drain_dead_letters_exactly_the_messages_over_the_hourly_quota(settings, app_pool, database):
    # GIVEN a tenant on a plan allowing 5 messages per hour, and another tenant without a limit
    _set_rate(database, "free", 5)
    tenant, creds = new_tenant_with_devices(app_pool, settings, ["press-01"], plan="free")
    other, other_creds = new_tenant_with_devices(app_pool, settings, ["lathe-01"], plan="industrial")
    device, other_device = Device(settings, creds["press-01"]), Device(settings, other_creds["lathe-01"])

    # WHEN the first publishes 8 messages (and a status message, which is not metered) and the
    # other 8, and the drain runs
    _publish(device, 0, 8)
    device.wait_acked([device.publish("status", "online")])
    _publish(other_device, 0, 8)
    run_mqtt_ingest()

    # THEN the first 5 are stored, exactly the 3 later ones are dead letters with reason quota
    stored = query(database, "SELECT seq FROM telemetry WHERE tenant_id = %(t)s ORDER BY seq", {"t": tenant["id"]})
    assert stored == [(seq,) for seq in range(5)]
    dead = query(
        database,
        "SELECT reason, tenant_id, convert_from(payload, 'UTF8')::jsonb ->> 'seq', detail"
        " FROM dead_letters ORDER BY id",
    )
    assert [(reason, tid, seq) for reason, tid, seq, _ in dead] == [("quota", tenant["id"], str(s)) for s in (5, 6, 7)]
    assert "5 messages per hour" in dead[0][3] and "free" in dead[0][3]
    # the unlimited tenant lost nothing; each tenant's hour is counted
    assert query(database, "SELECT count(*) FROM telemetry WHERE tenant_id = %(t)s", {"t": other["id"]}) == [(8,)]
    usage = query(
        database,
        "SELECT tenant_id, hour = date_trunc('hour', now(), 'UTC'), messages, over_quota"
        " FROM usage_hourly ORDER BY messages",
    )
    assert usage == [(tenant["id"], True, 5, 3), (other["id"], True, 8, 0)]
    [(run_dead,)] = query(database, "SELECT dead_lettered FROM ingest_runs")
    assert run_dead == 3

    # WHEN a new run gets 2 more: the hour's use is read back from the database, so they are over too
    _publish(device, 8, 2)
    run_mqtt_ingest()
    assert query(database, "SELECT count(*) FROM dead_letters WHERE reason = 'quota'") == [(5,)]
    assert query(
        database, "SELECT messages, over_quota FROM usage_hourly WHERE tenant_id = %(t)s", {"t": tenant["id"]}
    ) == [(5, 5)]

    # WHEN the tenant moves to a plan without the limit: the next run stores again
    with psycopg.connect(database.owner_dsn, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET plan = 'industrial' WHERE id = %s", (tenant["id"],))
    _publish(device, 10, 3)
    run_mqtt_ingest()
    assert query(
        database, "SELECT count(*) FROM telemetry WHERE tenant_id = %(t)s AND seq >= 10", {"t": tenant["id"]}
    ) == [(3,)]
    assert query(
        database, "SELECT messages, over_quota FROM usage_hourly WHERE tenant_id = %(t)s", {"t": tenant["id"]}
    ) == [(8, 5)]
    device.close()
    other_device.close()


def test_quota_is_counted_once_per_batch_inside_one_run(settings, app_pool, database):
    # GIVEN a tenant allowed 30 messages per hour whose messages arrive in several batches of one run
    _set_rate(database, "starter", 30)
    tenant, creds = new_tenant_with_devices(app_pool, settings, ["press-01", "press-02"], plan="starter")
    devices = [Device(settings, creds[name]) for name in ("press-01", "press-02")]

    # WHEN two devices publish 25 messages each
    for device in devices:
        _publish(device, 0, 25)
    run_mqtt_ingest()

    # THEN exactly 30 are stored and 20 are quota dead letters, however the run batched them
    assert query(database, "SELECT count(DISTINCT (device_id, seq)) FROM telemetry") == [(30,)]
    assert query(database, "SELECT count(*) FROM dead_letters WHERE reason = 'quota'") == [(20,)]
    assert query(
        database, "SELECT messages, over_quota FROM usage_hourly WHERE tenant_id = %(t)s", {"t": tenant["id"]}
    ) == [(30, 20)]
    for device in devices:
        device.close()
