"""The dashboard's device profiles in a real browser against the real stack: the profiles view (the
built-ins readable, a tenant profile created from one, changed and deleted), the profile picker on the
device page with exactly what to type into each device's own settings page (screenshots for
docs/profiles.md), the dry run of a device's real dead letters, the fix applied and the replay storing
each reading once, what a viewer sees, the profiles quota and the languages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.broker.contract import SPARKPLUG_HOST_ID
from tests.browser.conftest import api_offers, off_loop, sign_in
from tests.support.api import call, token_for
from tests.support.devices import Device, run_mqtt_ingest
from tests.support.waiting import query

pytestmark = pytest.mark.usefixtures("profiles_deployed")
BUILTINS = ["native", "tasmota", "shelly-gen2", "homeassistant-discovery", "sparkplug-b"]


@pytest.fixture
def profiles_deployed() -> None:
    if not api_offers("GET", "/api/profiles"):
        pytest.skip("the profiles API is not deployed in this tree")


def api(method: str, path: str, token: str, body: Any = None) -> Any:
    reply = off_loop(call, method, path, body, token=token)
    assert reply.status < 300, reply.body
    return reply.json if reply.body else None


def press_id(stack: dict[str, Any]) -> int:
    token = off_loop(token_for, stack["users"]["owner"])
    return int(next(d["id"] for d in api("GET", "/api/devices", token)["items"] if d["name"] == "press-01"))


def open_device(page, device_id: int) -> None:
    page.goto(f"/api/dashboard/#/device/{device_id}")
    page.locator("[data-section=profile] [data-field=profile]").wait_for()


def setup_values(page) -> dict[str, str]:
    return page.locator("[data-section=profile] [data-setup]").evaluate_all(
        "nodes => Object.fromEntries(nodes.map((n) => [n.dataset.setup, n.textContent]))"
    )


def pick(page, profile: str) -> None:
    card = page.locator("[data-section=profile]")
    card.locator("select[name=profile]").select_option(profile)
    card.locator("[data-action=assign-profile]").click()
    card.locator(".ok", has_text=f"now uses {profile}").wait_for()
    card.locator(f".setup[data-profile='{profile}']").wait_for()


def test_owner_reads_the_built_ins_and_makes_changes_and_deletes_a_profile_of_their_own(
    stack, page_for, screenshots, database
):
    owner = stack["users"]["owner"]
    page = page_for()
    sign_in(page, owner)
    # WHEN the owner opens Profiles THEN the five built-ins are listed, each as built in, used by the device
    page.locator("#nav a", has_text="Profiles").click()
    page.locator("tr[data-profile=sparkplug-b]").wait_for()
    assert page.locator("tr[data-profile]").evaluate_all("rows => rows.map((r) => r.dataset.profile)") == BUILTINS
    assert "Built-in" in page.locator("tr[data-profile=tasmota]").inner_text()
    assert page.locator("tr[data-profile=native] td").last.inner_text() == "1"
    page.screenshot(path=str(screenshots / "profiles.png"), full_page=True)

    # WHEN tasmota is opened THEN its topics and spec are shown, read only, and it can be copied
    page.locator("tr[data-profile=tasmota] a").click()
    page.locator("h1", has_text="tasmota").wait_for()
    assert "tele/SENSOR" in page.locator("dl.kv").inner_text() and "cmnd/#" in page.locator("dl.kv").inner_text()
    spec = json.loads(page.locator("pre.spec").inner_text())
    assert spec["forms"][0]["topic"] == "tele/LWT"
    assert page.locator("textarea[name=spec], [data-action=delete], [data-action=save]").count() == 0
    page.locator("[data-action=copy]").click()

    # THEN the new profile's form starts from tasmota's spec; the plant's time zone is typed in
    form = page.locator("form.profile-form")
    form.locator("input[name=name]").fill("plugs-jkt")
    assert form.locator("select[name=from]").input_value() == "tasmota"
    assert json.loads(form.locator("textarea[name=spec]").input_value()) == spec
    form.locator("input[name=description]").fill("Hall B plugs, Jakarta time")
    form.locator("textarea[name=spec]").fill(json.dumps({**spec, "timezone": "Asia/Jakarta"}, indent=2))
    form.locator("button[type=submit]").click()
    # THEN it is created and shown as the tenant's own, editable
    page.locator("h1", has_text="plugs-jkt").wait_for()
    assert "Your own" in page.locator("h1").inner_text()
    assert query(database, "SELECT name, description, spec->>'timezone' FROM device_profiles") == [
        ("plugs-jkt", "Hall B plugs, Jakarta time", "Asia/Jakarta")
    ]

    # WHEN the spec is not JSON, or a form the API refuses THEN each reason is shown, nothing is saved
    editor = page.locator("form.profile-form")
    editor.locator("textarea[name=spec]").fill("{forms: [")
    editor.locator("[data-action=save]").click()
    editor.locator(".error", has_text="must be a JSON object").wait_for()
    bad = {"forms": [{"topic": "cmd/x", "metrics": [{"path": "a", "name": "a"}]}]}
    editor.locator("textarea[name=spec]").fill(json.dumps(bad))
    editor.locator("[data-action=save]").click()
    editor.locator(".error", has_text="may not start with 'cmd'").wait_for()
    assert editor.locator(".error").inner_text().startswith("The spec is not valid:")
    # WHEN a valid change is saved THEN it is stored and the page says the broker took it
    plc = {"forms": [{"topic": "plc/line1", "metrics": [{"path": "speed", "name": "speed", "unit": "rpm"}]}]}
    editor.locator("textarea[name=spec]").fill(json.dumps(plc))
    editor.locator("[data-action=save]").click()
    page.locator(".message .ok", has_text="Saved").wait_for()
    assert "plc/line1" in page.locator("dl.kv").inner_text()
    page.screenshot(path=str(screenshots / "profile.png"), full_page=True)
    assert query(database, "SELECT publish_forms FROM device_profiles") == [(["plc/line1"],)]

    # AND the ingest page's quota bars count it against the plan (starter: 20)
    page.locator("#nav a", has_text="Ingest").click()
    page.locator("[data-quota=profiles] .quota-n", has_text="1 / 20").wait_for()

    # WHEN it is deleted, after an inline confirmation THEN the list no longer has it
    page.go_back()
    page.locator("h1", has_text="plugs-jkt").wait_for()
    page.locator("[data-action=delete]").click()
    page.locator(".confirm [data-action=confirm]").click()
    page.locator("tr[data-profile=native]").wait_for()
    assert page.locator("tr[data-profile=plugs-jkt]").count() == 0
    assert query(database, "SELECT count(*) FROM device_profiles") == [(0,)]
    assert [
        a for (a,) in query(database, "SELECT action FROM audit_log WHERE action LIKE 'profile.%%' ORDER BY id")
    ] == [
        "profile.create",
        "profile.update",
        "profile.delete",
    ]
    assert page.errors == [] and page.dialogs == []


def test_the_device_page_gives_each_profile_and_says_what_to_type_into_the_device(
    stack, page_for, screenshots, database
):
    # GIVEN a deployment whose broker devices reach as mqtt.example.com:8883 (config.json says where: its
    # MQTT_HOST and MQTT_PORT, test_dashboard_assets.py); the screenshots then show what a plant types
    slug, host, port = stack["tenant"]["slug"], "mqtt.example.com", 8883
    device_id = press_id(stack)
    page = page_for()

    def public_broker(route) -> None:
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "broker_host": host, "broker_port": port})

    page.route("**/config.json", public_broker)
    sign_in(page, stack["users"]["staff"])
    open_device(page, device_id)
    # GIVEN the native profile: the host and the telemetry topic
    native = setup_values(page)
    assert (native["host"], native["port"], native["topic_prefix"]) == (host, str(port), f"t/{slug}/d/press-01")
    assert f"t/{slug}/d/press-01/telemetry" in page.locator("[data-setup=topics]").inner_text()
    card = page.locator("[data-section=profile]")

    # WHEN staff give press-01 the tasmota profile THEN the broker lets the connected device publish
    # tele/SENSOR at once, and the page shows Tasmota's Configure MQTT fields with their values
    plug = Device(stack["settings"], stack["credentials"]["press-01"])
    try:
        assert list(plug.wait_acked([plug.publish("tele/SENSOR", {"ENERGY": {"Power": 1}})]).values()) == [135]
        pick(page, "tasmota")
        assert list(plug.wait_acked([plug.publish("tele/SENSOR", {"ENERGY": {"Power": 1}})]).values()) == [0]
    finally:
        plug.close()
    tasmota = setup_values(page)
    assert {k: tasmota[k] for k in ("host", "port", "client", "user", "topic", "full_topic")} == {
        "host": host,
        "port": str(port),
        "client": f"{slug}.press-01",
        "user": f"{slug}.press-01",
        "topic": "press-01",
        "full_topic": f"t/{slug}/d/%topic%/%prefix%/",
    }
    assert "SetOption52 1" in card.locator("pre.code").inner_text()
    card.screenshot(path=str(screenshots / "profile-tasmota.png"))
    assert query(database, "SELECT builtin_profile FROM devices") == [("tasmota",)]

    # AND for a Shelly Gen2 relay: its MQTT prefix, RPC status notifications on
    pick(page, "shelly-gen2")
    shelly = setup_values(page)
    assert (shelly["server"], shelly["client_id"], shelly["mqtt_prefix"], shelly["rpc_notifications"]) == (
        f"{host}:{port}",
        f"{slug}.press-01",
        f"t/{slug}/d/press-01",
        "on",
    )
    assert shelly["generic_status"] == "off"
    card.screenshot(path=str(screenshots / "profile-shelly.png"))

    # AND for ESPHome (Home Assistant discovery): its mqtt: block with topic_prefix and discovery_prefix
    pick(page, "homeassistant-discovery")
    yaml = card.locator("pre.code").inner_text()
    assert f"  topic_prefix: t/{slug}/d/press-01\n" in yaml
    assert f"  discovery_prefix: t/{slug}/d/press-01/homeassistant\n" in yaml
    assert f"  broker: {host}\n  port: {port}\n" in yaml
    card.screenshot(path=str(screenshots / "profile-esphome.png"))

    # AND for a Sparkplug B gateway: group id = the tenant, edge node id = the device, the primary host
    pick(page, "sparkplug-b")
    sparkplug = setup_values(page)
    assert (sparkplug["server_url"], sparkplug["group_id"], sparkplug["edge_node_id"]) == (
        f"ssl://{host}:{port}",
        slug,
        "press-01",
    )
    assert sparkplug["primary_host_id"] == SPARKPLUG_HOST_ID
    card.screenshot(path=str(screenshots / "profile-sparkplug.png"))
    assert query(database, "SELECT builtin_profile FROM devices") == [("sparkplug-b",)]
    actions = query(
        database, "SELECT detail->>'profile' FROM audit_log WHERE action = 'device.set_profile' ORDER BY id"
    )
    assert [p for (p,) in actions] == ["tasmota", "shelly-gen2", "homeassistant-discovery", "sparkplug-b"]
    assert page.errors == []


def jakarta_sensor_readings(count: int) -> list[dict[str, Any]]:
    """Tasmota's tele/SENSOR with SetOption52 0 (its default: https://tasmota.github.io/docs/Commands/
    #setoption52): Time is the plug's local time without an offset, here Jakarta's (UTC+7)."""
    now = datetime.now(UTC).timestamp() + 7 * 3600
    return [
        {
            "Time": datetime.fromtimestamp(now - 60 * (count - i), UTC).replace(tzinfo=None, microsecond=0).isoformat(),
            "ENERGY": {"Power": 20 + i, "Voltage": 229},
        }
        for i in range(count)
    ]


def test_a_wrong_mapping_is_fixed_in_the_page_and_its_dead_letters_replayed_once(
    stack, page_for, screenshots, database
):
    # GIVEN press-01 on the tasmota built-in, whose Jakarta local times read as UTC are 7 h ahead: dead letters
    owner = stack["users"]["owner"]
    token = off_loop(token_for, owner)
    device_id = press_id(stack)
    api("PUT", f"/api/devices/{device_id}/profile", token, {"profile": "tasmota"})
    plug = Device(stack["settings"], stack["credentials"]["press-01"])
    try:
        acks = plug.wait_acked([plug.publish("tele/SENSOR", p) for p in jakarta_sensor_readings(3)])
        assert set(acks.values()) == {0}
    finally:
        plug.close()
    off_loop(run_mqtt_ingest)
    assert query(database, "SELECT reason, profile FROM dead_letters") == [("ts_in_future", "tasmota")] * 3

    # WHEN the owner opens the device page THEN its dead letters are listed as still failing with tasmota
    page = page_for()
    sign_in(page, owner)
    open_device(page, device_id)
    box = page.locator("[data-section=dead-letters]")
    box.locator("tr[data-outcome=failed]").nth(2).wait_for()
    # (each with the reason it had when it came, the profile then, and its reason with the profile tried)
    failed = box.locator("tr[data-outcome=failed]")
    assert failed.count() == 3 and box.locator("tr[data-outcome]").count() == 3
    assert failed.first.locator("td").nth(2).inner_text() == "ts_in_future\ntasmota"
    assert failed.first.locator("td").nth(3).inner_text().startswith("still fails ts_in_future")
    assert box.locator("[data-action=apply]").count() == 0

    # WHEN the spec is edited (the plant's time zone) and tried THEN each would be stored, nothing is written
    box.locator("details.spec-edit summary").click()
    spec = json.loads(box.locator("textarea[name=spec]").input_value())
    box.locator("textarea[name=spec]").fill(json.dumps({**spec, "timezone": "Asia/Jakarta"}, indent=2))
    box.locator("[data-action=dry-run]").click()
    box.locator("tr[data-outcome=stored]").nth(2).wait_for()
    assert (
        "3 dead letters: 3 would be stored (6 readings), 0 still fail" in box.locator(".dry-run-summary").inner_text()
    )
    first = box.locator("tr[data-outcome=stored]").first.inner_text()
    assert "ENERGY.Power = 20" in first and "ENERGY.Voltage = 229" in first
    assert query(database, "SELECT count(*) FROM telemetry") == [(0,)]
    page.screenshot(path=str(screenshots / "dry-run.png"), full_page=True)

    # WHEN it is applied (a built-in cannot change: it is saved as a new profile the device gets)
    box.locator("input[name=new_profile]").fill("tasmota-jakarta")
    box.locator("[data-action=apply]").click()
    box.locator(".ok", has_text="is decoded with tasmota-jakarta").wait_for()
    # THEN the device uses it, and the dry run of its own profile now stores them
    page.locator("[data-section=profile] [data-field=profile]", has_text="tasmota-jakarta").wait_for()
    assert query(
        database, "SELECT p.name, p.spec->>'timezone' FROM devices d JOIN device_profiles p ON p.id = d.profile_id"
    ) == [("tasmota-jakarta", "Asia/Jakarta")]
    box.locator("tr[data-outcome=stored]").nth(2).wait_for()

    # WHEN the dead letters are replayed THEN each reading is stored once, and a second replay stores nothing
    box.locator("[data-action=replay]").click()
    box.locator(".ok[data-replayed='3']", has_text="6 readings stored, 0 already stored before").wait_for()
    box.locator("[data-dry-run=empty]").wait_for()
    assert query(database, "SELECT metric, value FROM telemetry WHERE metric = 'ENERGY.Power' ORDER BY ts") == [
        ("ENERGY.Power", 20.0),
        ("ENERGY.Power", 21.0),
        ("ENERGY.Power", 22.0),
    ]
    box.locator("[data-action=replay]").click()
    box.locator(".ok[data-replayed='0']").wait_for()
    assert query(database, "SELECT count(*) FROM telemetry") == [(6,)]
    assert query(database, "SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL") == [(3,)]
    assert page.errors == [] and page.dialogs == []


def test_a_viewer_reads_profiles_and_the_device_settings_without_controls(stack, page_for):
    device_id = press_id(stack)
    # GIVEN a viewer whose browser prefers Portuguese, on a phone
    page = page_for(width=375, height=740, locale="pt-BR")
    sign_in(page, stack["users"]["viewer"])
    # THEN the profiles view speaks Portuguese, offers no change, and nothing scrolls sideways
    page.locator("#nav a", has_text="Perfis").click()
    page.locator("tr[data-profile=tasmota]").wait_for()
    assert page.locator("h1").inner_text() == "Perfis"
    assert page.locator("[data-action=add-profile]").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("tr[data-profile=shelly-gen2] a").click()
    page.locator("h1", has_text="shelly-gen2").wait_for()
    assert page.locator("[data-action=copy], [data-action=delete]").count() == 0
    # AND the device page shows its profile and what to type into the device, without the picker or dead letters
    open_device(page, device_id)
    assert page.locator("[data-section=profile] h2").inner_text() == "Perfil"
    assert page.locator("[data-section=profile] [data-setup=topic_prefix]").inner_text().endswith("/d/press-01")
    assert page.locator("select[name=profile], [data-section=dead-letters]").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.errors == []
