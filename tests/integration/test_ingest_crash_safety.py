"""The drain loses nothing and duplicates nothing when things fail at the worst moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.devices import Device, new_tenant_with_devices, prime_drain_session, run_mqtt_ingest
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
METRICS = 2


def readings(database) -> tuple[int, int]:
    """(rows, distinct seqs) in telemetry."""
    with psycopg.connect(database.owner_dsn) as conn:
        return conn.execute("SELECT count(*), count(DISTINCT seq) FROM telemetry").fetchone()


def publish_backlog(settings, device: Device, count: int) -> None:
    """count QoS 1 messages, each with METRICS readings and a unique seq; waits for every PUBACK."""
    ts = int(time.time() * 1000) - 600_000
    mids = [
        device.publish("telemetry", f'{{"ts":{ts + i},"seq":{i},"metrics":{{"a":{i},"b":true}}}}') for i in range(count)
    ]
    assert set(device.wait_acked(mids, timeout=120).values()) == {0}


def drain_until_idle(database, expected_rows: int) -> None:
    """Runs the drain until every expected row is there (a run ends on its time budget or when idle)."""
    for _ in range(5):
        run_mqtt_ingest()
        if readings(database)[0] >= expected_rows:
            return


def start_drain() -> tuple[threading.Thread, list[BaseException]]:
    """Runs the registered drain in a thread; what it raises lands in the returned list."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_mqtt_ingest()
        except BaseException as exc:  # noqa: BLE001 - the test asserts on it
            errors.append(exc)

    drain = threading.Thread(target=run)
    drain.start()
    return drain, errors


@pytest.fixture
def backlog_settings(make_settings, settings_env):
    settings = settings_env(make_settings(INGEST_BATCH_SIZE=1000))
    prime_drain_session(settings)
    return settings


@pytest.fixture
def device(backlog_settings, app_pool):
    _, creds = new_tenant_with_devices(app_pool, backlog_settings, ["cnc-1"])
    device = Device(backlog_settings, creds["cnc-1"])
    yield device
    device.close()


def test_drain_killed_mid_run_then_rerun_stores_every_message_once(backlog_settings, device, database):
    # GIVEN a backlog larger than one batch waiting on the drain's session
    count = 20_000
    publish_backlog(backlog_settings, device, count)

    # WHEN a drain process is SIGKILLed after some batches committed but before it finished
    drain = subprocess.Popen(
        [sys.executable, "-c", "from tests.support.devices import run_mqtt_ingest; run_mqtt_ingest()"],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stored_at_kill = wait_for(lambda: readings(database)[0], 60, "a first committed batch")
    drain.send_signal(signal.SIGKILL)
    drain.wait(10)
    assert stored_at_kill < count * METRICS, "the drain finished before it could be killed: grow the backlog"

    # AND the drain runs again
    drain_until_idle(database, count * METRICS)

    # THEN every message is stored exactly once
    assert readings(database) == (count * METRICS, count)
    with psycopg.connect(database.owner_dsn) as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM ingest_runs ORDER BY id")]
    assert statuses[0] == "running"  # the killed run: never finished, visible to operators
    assert "ok" in statuses[1:]


def test_broker_restart_between_runs_keeps_the_queued_messages(backlog_settings, device, database, mosquitto_broker):
    # GIVEN messages queued for the offline drain
    publish_backlog(backlog_settings, device, 2_000)
    device.close()

    # WHEN the broker restarts gracefully before the next run
    mosquitto_broker.restart()
    drain_until_idle(database, 2_000 * METRICS)

    # THEN all of them arrive
    assert readings(database) == (2_000 * METRICS, 2_000)


def test_postgres_down_during_a_run_loses_and_duplicates_nothing(backlog_settings, device, database, postgres_server):
    # GIVEN a drain working through a backlog
    count = 20_000
    publish_backlog(backlog_settings, device, count)
    drain, errors = start_drain()
    wait_for(lambda: readings(database)[0], 60, "a first committed batch")

    # WHEN PostgreSQL stops in the middle of it and comes back a moment later
    postgres_server.stop(mode="fast")
    stopped_mid_run = drain.is_alive()
    postgres_server.start()
    drain.join(120)

    # THEN the run retried through the outage, and everything is stored exactly once
    assert stopped_mid_run
    assert not drain.is_alive() and errors == []
    assert readings(database) == (count * METRICS, count)
    # and the batches committed late, after the outage, were acknowledged: the connection was
    # kept serviced while the store thread retried, so the next run is sent nothing again
    run_mqtt_ingest()
    with psycopg.connect(database.owner_dsn) as conn:
        assert conn.execute("SELECT status, messages FROM ingest_runs ORDER BY id DESC LIMIT 1").fetchone() == ("ok", 0)


def test_two_drains_started_at_once_one_works_the_other_leaves(backlog_settings, device, database):
    # GIVEN a backlog
    count = 5_000
    publish_backlog(backlog_settings, device, count)

    # WHEN two drains start at the same instant (a timer's lost lease)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            run_mqtt_ingest()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    # THEN one drained everything, the other recorded that it skipped, and nothing doubled
    assert errors == []
    with psycopg.connect(database.owner_dsn) as conn:
        statuses = sorted(s for (s,) in conn.execute("SELECT status FROM ingest_runs"))
    assert statuses == ["ok", "skipped"]
    assert readings(database) == (count * METRICS, count)


def test_backlog_beyond_mosquittos_default_queue_limit_all_arrives(backlog_settings, device, database):
    # GIVEN five times Mosquitto's default max_queued_messages (1000) queued while the drain is offline
    publish_backlog(backlog_settings, device, 5_000)

    # WHEN the drain runs
    drain_until_idle(database, 5_000 * METRICS)

    # THEN every message arrived
    assert readings(database) == (5_000 * METRICS, 5_000)


def test_batches_are_committed_and_acked_while_a_run_is_still_reading_its_backlog(backlog_settings, device, database):
    # GIVEN a backlog of twenty batches
    count = 20_000
    publish_backlog(backlog_settings, device, count)

    # WHEN a run works through it
    drain, errors = start_drain()

    # THEN readings are committed while the run goes on, not all at its end, and the run ends as
    # soon as the backlog is stored
    wait_for(lambda: readings(database)[0] > 0, 60, "a first committed batch")
    assert drain.is_alive(), "nothing was committed before the run ended"
    drain.join(120)
    assert errors == []
    assert readings(database) == (count * METRICS, count)
    with psycopg.connect(database.owner_dsn) as conn:
        assert conn.execute("SELECT status, batches >= 20 FROM ingest_runs").fetchall() == [("ok", True)]


def test_database_down_longer_than_the_retry_window_fails_the_run_without_acking(
    make_settings, settings_env, app_pool, database, postgres_server
):
    # GIVEN a drain that gives database errors 1 s of retries, working through a backlog
    settings = settings_env(make_settings(INGEST_BATCH_SIZE=1000, INGEST_DB_RETRY_S=1))
    prime_drain_session(settings)
    _, creds = new_tenant_with_devices(app_pool, settings, ["cnc-9"])
    device = Device(settings, creds["cnc-9"])
    count = 20_000
    publish_backlog(settings, device, count)
    drain, errors = start_drain()
    wait_for(lambda: readings(database)[0], 60, "a first committed batch")

    # WHEN PostgreSQL stays down past the retry window
    postgres_server.stop(mode="fast")
    drain.join(60)
    postgres_server.start()

    # THEN the run failed and acked nothing it had not committed; the next runs store it all once
    assert not drain.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError)
    drain_until_idle(database, count * METRICS)
    assert readings(database) == (count * METRICS, count)
    device.close()
