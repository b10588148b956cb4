"""Store-and-forward under the faults a shop floor sees: the Internet link down, the gateway killed mid-publish,
the broker SIGKILLed right after acknowledging, the buffer full, a meter that hangs or answers garbage. Each ends
with every reading the gateway made stored exactly once (or dropped by the stated policy, visibly)."""

from __future__ import annotations

import functools
import os
import signal
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.gateway.harness import HEALTH_DEVICE, assert_every_reading_stored_once
from tests.gateway.servers import GarbageDevice, LinkProxy, SilentDevice
from tests.support.devices import Device
from tests.support.waiting import query, wait_for


@pytest.fixture
def link(settings):
    proxy = LinkProxy(settings.mqtt_host, settings.mqtt_port)
    yield proxy
    proxy.close()


def meter_config(meter, device: str = "meter-01", interval: float = 0.05, points: int = 3) -> dict:
    return {
        "device": device,
        "host": "127.0.0.1",
        "port": meter.port,
        "poll_interval_s": interval,
        "timeout_s": 3.0,
        "points": [{"metric": f"r{i}", "address": i, "unit": "A" if i == 0 else None} for i in range(points)],
    }


def _without_none(source: dict) -> dict:
    source["points"] = [{k: v for k, v in p.items() if v is not None} for p in source["points"]]
    return source


def drain_everything(shop, gw) -> None:
    """Waits for the gateway to publish all it has, stops it (SIGTERM), and drains until the broker is empty."""
    for _ in range(3):
        wait_for(lambda: gw.pending() == 0, 30, "the gateway's buffer to empty")
        assert gw.stop() == 0
        if gw.pending() == 0:
            break
        # A reading taken just before SIGTERM may still wait for its PUBACK when the gateway's 3 s close wait
        # ends (seen on a loaded machine): it stays buffered and goes again at the next start, free of
        # duplicates through the dedup key. Start it once more, as systemd would.
        gw.start()
    assert gw.pending() == 0
    shop.drain()
    shop.drain()


def test_link_cut_for_a_while_then_restored_stores_every_reading_once(site, gateway, modbus_meter, link, database):
    # GIVEN a gateway publishing a meter's readings 20 times a second through the shop's Internet link
    shop = site("meter-01")
    meter = modbus_meter()
    gw = gateway(
        shop.config(broker_port=link.port, broker={"reconnect_max_s": 0.5}, modbus=[_without_none(meter_config(meter))])
    ).start()
    shop.drain_until(lambda: shop.rows("meter-01", "r1"), 20, "the first readings")

    # WHEN the link goes down (connections dropped, then refused) while the meter keeps being read
    accepted = link.accepted
    cut_ms = int(time.time() * 1000)
    link.cut()
    wait_for(lambda: gw.pending() >= 40, 20, "a backlog in the buffer")
    assert link.accepted == accepted  # the reconnects were refused meanwhile
    # AND comes back
    restored_ms = int(time.time() * 1000)
    link.restore()

    # THEN the backlog is published, the readings acknowledged just before the cut are sent again, and every
    # reading the gateway made is stored exactly once
    drain_everything(shop, gw)
    assert_every_reading_stored_once(shop, gw)
    reconnects = gw.events("uplink.connected")
    assert any(e["device"] == "meter-01" and e["resent"] > 0 for e in reconnects[2:])
    [(duplicates,)] = query(database, "SELECT sum(duplicates) FROM ingest_runs")
    assert duplicates > 0  # the re-sent copies, absorbed by the dedup key
    during_the_cut = [r for r in shop.rows("meter-01", "r1") if cut_ms < r[3] < restored_ms]
    assert len(during_the_cut) >= 0.5 * (restored_ms - cut_ms) / 50  # read at 20 Hz while the link was down


def test_gateway_sigkilled_mid_publish_loses_and_doubles_nothing(site, gateway, modbus_meter, link):
    # GIVEN a backlog built up while the link was down, published in small messages over a slow link
    shop = site("meter-01", "meter-02")
    meters = [modbus_meter(), modbus_meter()]
    config = shop.config(
        broker_port=link.port,
        broker={"reconnect_max_s": 0.3},
        publish={"max_records": 5, "max_in_flight": 1},
        modbus=[_without_none(meter_config(m, f"meter-0{i + 1}", 0.02)) for i, m in enumerate(meters)],
    )
    link.cut()
    gw = gateway(config).start()
    backlog = wait_for(lambda: (n := gw.pending()) >= 200 and n, 30, "a backlog")
    link.delay_s = 0.01
    link.restore()

    # WHEN the gateway is SIGKILLed while it works through it (some messages acknowledged, others in flight)
    wait_for(
        lambda: gw.buffer("SELECT count(*) FROM readings WHERE acked_at IS NOT NULL")[0][0] >= 20,
        30,
        "the first acknowledged messages",
    )
    gw.kill()
    pending_at_kill = gw.pending()
    assert pending_at_kill > 0

    # AND started again on the same buffer
    link.delay_s = 0.0
    gw.start()

    # THEN nothing is lost and nothing doubled
    drain_everything(shop, gw)
    assert backlog < gw.highest_seq()
    assert_every_reading_stored_once(shop, gw)
    assert gw.events("gateway.started")[1]["pending"] > 0  # the second run found the first one's backlog


def test_broker_sigkilled_right_after_pubacks_loses_nothing_the_gateway_sent(
    site, gateway, modbus_meter, mosquitto_broker, settings
):
    # GIVEN a gateway publishing 20 readings a second, and a device publishing directly, as a control
    shop = site("meter-01", "direct-01")
    meter = modbus_meter()
    config = shop.config(broker={"reconnect_max_s": 0.5}, modbus=[_without_none(meter_config(meter))])
    config["devices"].pop("direct-01")
    gw = gateway(config).start()
    shop.drain_until(lambda: shop.rows("meter-01", "r1"), 20, "the first readings")
    direct = Device(settings, shop.credentials["direct-01"])

    # WHEN the broker takes a snapshot, acknowledges more readings, and is SIGKILLed before its next one
    snapshot = mosquitto_broker.base_dir / "mosquitto.db"

    def saved_ns() -> int:
        return snapshot.stat().st_mtime_ns if snapshot.exists() else 0

    def save() -> int:
        before = saved_ns()
        os.kill(mosquitto_broker.pid, signal.SIGUSR1)  # Mosquitto saves at once on SIGUSR1
        wait_for(lambda: saved_ns() != before, 10, "the broker's snapshot", interval=0.005)
        return saved_ns()

    def acked_since(saved_ns: int) -> int:
        return int(
            gw.buffer(f"SELECT count(*) FROM readings WHERE device = 'meter-01' AND acked_at > {saved_ns / 1e9}")[0][0]
        )

    for attempt in range(5):  # each attempt's direct readings have a metric of their own
        saved_at = save()
        mids = [
            direct.publish("telemetry", {"ts": int(time.time() * 1000), "seq": i, "metrics": {f"x{attempt}": i}})
            for i in range(1, 51)
        ]
        assert set(direct.wait_acked(mids).values()) == {0}
        wait_for(
            functools.partial(lambda ns: acked_since(ns) >= 3, saved_at), 10, "gateway readings acknowledged since"
        )
        if saved_ns() == saved_at:  # no autosave came in between: kill now
            mosquitto_broker.kill()
            break
    else:
        pytest.fail("an autosave came between every snapshot and the kill")
    direct.close()
    mosquitto_broker.start()

    # THEN the broker lost what it had acknowledged since its snapshot: the direct device's readings are gone
    shop.drain()
    shop.drain()
    assert len(shop.rows("direct-01", f"x{attempt}")) < 50
    # AND the gateway, reconnected, sent its acknowledged readings of the window again: none of its are lost
    wait_for(lambda: any(e["resent"] > 0 for e in gw.events("uplink.connected")[2:]), 20, "the re-send")
    drain_everything(shop, gw)
    assert_every_reading_stored_once(shop, gw)


def test_buffer_full_drops_the_oldest_readings_counted_logged_and_reported(site, gateway, modbus_meter, link, database):
    # GIVEN a small buffer and the link down from the start
    shop = site("meter-01")
    meter = modbus_meter()
    link.cut()
    gw = gateway(
        shop.config(
            broker_port=link.port,
            broker={"reconnect_max_s": 0.3},
            buffer={"max_mb": 0.08, "when_full": "drop_oldest"},
            modbus=[_without_none(meter_config(meter, interval=0.01, points=40))],
        )
    ).start()

    # WHEN it fills up
    wait_for(lambda: len(gw.events("buffer.full")) >= 3, 30, "the buffer to fill")
    wait_for(
        lambda: len(gw.events("gateway.health")) >= 3 and gw.events("gateway.health")[-1]["buffer_dropped"],
        20,
        "a health report of the drops",
    )

    # THEN it dropped the oldest readings to keep the newest, said so in its log, and stayed within its bound
    full = gw.events("buffer.full")
    assert {e["policy"] for e in full} == {"drop_oldest"} and all(e["dropped"] > 0 for e in full)
    assert gw.buffer("PRAGMA page_count")[0][0] * 4096 < 0.08 * 2**20 * 2

    # WHEN the link comes back
    link.restore()
    drain_everything(shop, gw)

    # THEN what was not dropped is stored once, the drops are accounted for exactly, and the health telemetry says
    # how many were dropped
    [[dropped_total]] = gw.buffer("SELECT value FROM counters WHERE name = 'dropped_total'")
    assert dropped_total > 0
    assert_every_reading_stored_once(shop, gw, dropped=dropped_total)
    reported = shop.rows(HEALTH_DEVICE, "buffer_dropped")
    assert 0 < sum(value for value, *_ in reported) <= dropped_total
    assert max(value for value, *_ in shop.rows(HEALTH_DEVICE, "buffer_dropped_total")) <= dropped_total
    stored = [seq for *_, seq in shop.rows("meter-01", "r1")]
    assert min(stored) > dropped_total // 2  # the oldest went, not a random sample
    # the unit's /state reading is never dropped
    assert query(
        database, "SELECT unit FROM device_metrics WHERE tenant_id = %(t)s AND metric = 'r0'", {"t": shop.tenant["id"]}
    ) == [("A",)]


def test_buffer_full_drop_newest_refuses_new_readings_and_keeps_the_oldest(site, gateway, modbus_meter, link):
    shop = site("meter-01")
    meter = modbus_meter()
    link.cut()
    gw = gateway(
        shop.config(
            broker_port=link.port,
            broker={"reconnect_max_s": 0.3},
            buffer={"max_mb": 0.08, "when_full": "drop_newest"},
            modbus=[_without_none(meter_config(meter, interval=0.01, points=40))],
        )
    ).start()
    wait_for(lambda: len(gw.events("buffer.full")) >= 3, 30, "the buffer to fill")
    first_seq = gw.buffer("SELECT min(seq) FROM readings WHERE device = 'meter-01' AND kind = 0")[0][0]
    link.restore()
    drain_everything(shop, gw)
    [[dropped_total]] = gw.buffer("SELECT value FROM counters WHERE name = 'dropped_total'")
    assert {e["policy"] for e in gw.events("buffer.full")} == {"drop_newest"}
    assert dropped_total >= sum(e["dropped"] for e in gw.events("buffer.full")) > 0
    # a refused reading never got a seq: every seq given is stored
    assert_every_reading_stored_once(shop, gw)
    assert min(seq for *_, seq in shop.rows("meter-01", "r1")) == first_seq  # the oldest were kept


def test_a_meter_that_hangs_or_answers_garbage_does_not_hold_up_the_others(site, gateway, modbus_meter, database):
    # GIVEN a good meter, one that never answers and one that answers garbage
    shop = site("meter-01", "hung-01", "noise-01")
    good = modbus_meter()
    silent, garbage = SilentDevice(), GarbageDevice()
    try:
        sources = [
            _without_none(meter_config(good, interval=0.1)),
            {
                "device": "hung-01",
                "host": "127.0.0.1",
                "port": silent.port,
                "poll_interval_s": 0.1,
                "timeout_s": 0.3,
                "points": [{"metric": "r0", "address": 0}],
            },
            {
                "device": "noise-01",
                "host": "127.0.0.1",
                "port": garbage.port,
                "poll_interval_s": 0.1,
                "timeout_s": 0.3,
                "points": [{"metric": "r0", "address": 0}],
            },
        ]
        gw = gateway(shop.config(modbus=sources)).start()

        # WHEN it runs until the hung meter has timed out a dozen times (no drain meanwhile: the good meter answers
        # from this test's process, and a drain loop here would starve it rather than the gateway)
        def hung_errors() -> int:
            return sum(e.get("read_errors.hung-01", 0) for e in gw.events("gateway.health"))

        wait_for(lambda: hung_errors() >= 12, 30, "a dozen timeouts of the hung meter")
        counted_until_ms = int(time.time() * 1000)
        statuses_while_running = shop.drain_until(
            lambda: (s := _statuses(database, shop)).get("hung-01") == "offline" and s, 20, "the hung meter offline"
        )
        assert gw.stop() == 0
        shop.drain()

        # THEN the good meter was read all along: polled every 0.1 s it gave several readings for each 0.3 s the
        # gateway waited on the hung one (a gateway polling its sources in turn would give at most one), and the bad
        # meters are read errors, not readings
        reports = [r for r in shop.rows(HEALTH_DEVICE, "read_errors.hung-01") if r[3] <= counted_until_ms]
        timeouts = sum(value for value, *_ in reports)
        assert timeouts >= 10
        assert len([r for r in shop.rows("meter-01", "r1") if r[3] <= reports[-1][3]]) >= 2 * timeouts
        assert not shop.rows("hung-01", "r0") and not shop.rows("noise-01", "r0")
        assert sum(value for value, *_ in shop.rows(HEALTH_DEVICE, "read_errors.noise-01")) > 0
        assert sum(value for value, *_ in shop.rows(HEALTH_DEVICE, "read_errors.meter-01")) == 0
        logged = {e["device"] for e in gw.events("source.read_error")}
        assert {"hung-01", "noise-01"} <= logged and "meter-01" not in logged
        # AND the dashboard showed which machines answer
        assert statuses_while_running["meter-01"] == "online" and statuses_while_running["noise-01"] == "offline"
    finally:
        silent.close()
        garbage.close()


def _statuses(database, shop) -> dict[str, str]:
    return dict(query(database, "SELECT name, status FROM devices WHERE tenant_id = %(t)s", {"t": shop.tenant["id"]}))


def test_lan_payload_that_cannot_be_read_is_a_read_error(site, gateway, lan_broker):
    shop = site("esp-07")
    gw = gateway(
        shop.config(
            mqtt_lan=[
                {
                    "host": "127.0.0.1",
                    "port": lan_broker.port,
                    "topics": [{"topic": f"{shop.slug}/esp-07/env", "device": "esp-07", "format": "json"}],
                }
            ]
        )
    ).start()
    wait_for(lambda: gw.events("source.connected"), 20, "the LAN subscription")
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", lan_broker.port)
    client.loop_start()
    client.publish(f"{shop.slug}/esp-07/env", "{not json", qos=1).wait_for_publish(5)
    client.publish(f"{shop.slug}/esp-07/env", '{"t": 20.5, "bad name!": 1, "nested": [1]}', qos=1).wait_for_publish(5)
    shop.drain_until(lambda: shop.rows("esp-07", "t"), 20, "the readable reading")
    errors = shop.drain_until(
        lambda: sum(r[0] for r in shop.rows(HEALTH_DEVICE, "read_errors.esp-07")) >= 3, 20, "three read errors reported"
    )
    assert errors
    assert any(e["device"] == "esp-07" for e in gw.events("source.read_error"))
    client.disconnect()
    client.loop_stop()
    assert gw.stop() == 0
