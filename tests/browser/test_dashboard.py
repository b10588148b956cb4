"""The dashboard in a real browser against the real stack: what each role sees, the fleet and a
device page with readings from the database, a device created in the page that connects and
publishes, hostile text rendered as text, languages, and a phone-sized screen."""
from __future__ import annotations

from tests.browser.conftest import api_offers, off_loop, sign_in
from tests.support.api import call, token_for
from tests.support.devices import Device, run_mqtt_ingest

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def publish_readings(settings, credential, readings: list[dict]) -> None:
    device = Device(settings, credential)
    try:
        mids = [device.publish("telemetry", reading) for reading in readings]
        assert set(device.wait_acked(mids).values()) == {0}
    finally:
        device.close()


def nav_texts(page) -> list[str]:
    return page.locator("#nav a").all_inner_texts()


def test_each_role_sees_what_it_may(stack, page_for, screenshots):
    # GIVEN a tenant with one device and an owner, a staff member and a viewer
    seen = {}
    for role in ("owner", "staff", "viewer"):
        page = page_for()
        # WHEN each signs in
        sign_in(page, stack["users"][role])
        page.locator("tr[data-device=press-01]").wait_for()
        seen[role] = {
            "nav": nav_texts(page),
            "add": page.locator("[data-action=add-device]").count(),
            "who": page.locator("#who").inner_text(),
        }
        page.locator("tr[data-device=press-01] a").click()
        page.locator("h1", has_text="press-01").wait_for()
        seen[role]["device_actions"] = page.locator("[data-action=rotate], [data-action=disable], [data-action=delete]").count()
        assert page.errors == []
    # THEN the owner manages users and devices, staff manages devices, the viewer only reads
    assert seen["owner"]["nav"] == ["Fleet", "Ingest", "Users"]
    assert seen["staff"]["nav"] == ["Fleet", "Ingest"]
    assert seen["viewer"]["nav"] == ["Fleet"]
    assert [seen[r]["add"] for r in ("owner", "staff", "viewer")] == [1, 1, 0]
    assert [seen[r]["device_actions"] for r in ("owner", "staff", "viewer")] == [3, 3, 0]
    assert "viewer" in seen["viewer"]["who"]


def test_hostile_text_is_shown_as_text_and_runs_nothing(stack, page_for, screenshots):
    # GIVEN a device whose display name and location are HTML with script, and a dead letter
    # whose payload is the same string
    token = off_loop(token_for, stack["users"]["staff"])
    reply = off_loop(call, "POST", "/api/devices", {"name": "evil-01", "display_name": HOSTILE, "location": HOSTILE},
                     token=token)
    assert reply.status == 201, reply.body
    device = Device(stack["settings"], stack["credentials"]["press-01"])
    try:
        assert set(device.wait_acked([device.publish("telemetry", HOSTILE)]).values()) == {0}
    finally:
        device.close()
    run_mqtt_ingest()
    page = page_for()
    # WHEN the owner looks at the fleet, the device and the ingest monitor
    sign_in(page, stack["users"]["owner"])
    row = page.locator("tr[data-device=evil-01]")
    row.wait_for()
    # THEN the string is there as text, and no element or script came from it
    assert HOSTILE in row.inner_text()
    row.locator("a").click()
    page.locator("h1", has_text="evil-01").wait_for()
    assert HOSTILE in page.locator("main").inner_text()
    if api_offers("GET", "/api/admin/ingest"):
        page.locator("#nav a", has_text="Ingest").click()
        page.locator("pre.payload", has_text="<script>").first.wait_for()
    assert page.locator("main img, main script").count() == 0
    assert page.dialogs == [] and page.errors == []
    assert page.evaluate("() => document.querySelectorAll('[onerror]').length") == 0


def test_language_follows_the_browser_and_can_be_switched(stack, page_for):
    # GIVEN a browser that prefers Portuguese
    page = page_for(locale="pt-BR")
    sign_in(page, stack["users"]["owner"])
    # THEN the page speaks Portuguese, with Brazilian number formats
    assert nav_texts(page)[0] == "Frota"
    assert page.evaluate("document.documentElement.lang") == "pt-BR"
    # WHEN the reader switches to Indonesian
    page.locator("#lang").select_option("id")
    # THEN the text changes without a reload, and the choice is kept
    page.locator("#nav a", has_text="Armada").wait_for()
    assert page.locator("th").first.inner_text().lower() == "perangkat"
    page.reload()
    page.locator("#nav a", has_text="Armada").wait_for()
    assert page.locator("#signout").inner_text() == "Keluar"


def test_phone_screen_keeps_everything_usable(stack, page_for, screenshots):
    # GIVEN a 375 px wide screen
    page = page_for(width=375, height=740)
    sign_in(page, stack["users"]["owner"])
    page.locator("tr[data-device=press-01]").wait_for()
    # THEN nothing scrolls sideways and the controls are reachable
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.locator("[data-action=add-device]").click()
    page.locator("input[name=name]").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(screenshots / "fleet-phone.png"), full_page=True)
    # AND the keyboard reaches the form's fields in order
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.name") == "display_name"
