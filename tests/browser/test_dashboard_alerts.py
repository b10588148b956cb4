"""The dashboard's alerts views in a real browser against the real stack: a threshold rule made in the
page, events from the real evaluator listed open first with the nav badge's count, acknowledged and
resolved with comments that reach the database, what a viewer sees, hostile names as text, enabling,
disabling and deleting rules, languages and a phone-sized screen."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.browser.conftest import api_offers, off_loop, sign_in
from tests.browser.test_dashboard import HOSTILE, layout_shift, publish_readings
from tests.support.api import call, token_for
from tests.support.devices import run_mqtt_ingest
from tests.support.waiting import query

pytestmark = pytest.mark.usefixtures("alerts_deployed")

HOT = {"kind": "threshold", "metric": "temp", "aggregation": "last", "window_s": 300, "operator": ">"}


@pytest.fixture
def alerts_deployed() -> None:
    if not api_offers("GET", "/api/alerts/events"):
        pytest.skip("the alerts API is not deployed in this tree")


def press_reads(stack: dict[str, Any], temp: float) -> None:
    """press-01 publishes a temperature over MQTT and the drain stores it (the normal path)."""
    publish_readings(
        stack["settings"],
        stack["credentials"]["press-01"],
        [{"ts": int(time.time() * 1000), "metrics": {"temp": temp}}],
    )
    off_loop(run_mqtt_ingest)


def api(method: str, path: str, token: str, body: Any = None) -> Any:
    reply = off_loop(call, method, path, body, token=token)
    assert reply.status < 300, reply.body
    return reply.json if reply.body else None


def rule(token: str, name: str, value: float, severity: str, **extra: Any) -> dict[str, Any]:
    return dict(
        api("POST", "/api/alerts/rules", token, {**HOT, "name": name, "value": value, "severity": severity, **extra})
    )


def evaluate(token: str) -> dict[str, Any]:
    return dict(api("POST", "/api/alerts/evaluate", token))


def open_alerts(page) -> None:
    page.locator("#nav a[href='#/alerts']").click()
    page.locator("[data-section=open]").wait_for()


def states_in_order(page) -> list[str]:
    return page.locator("li[data-event]").evaluate_all("items => items.map((li) => li.dataset.state)")


def test_owner_creates_a_rule_in_the_page_and_handles_its_events(stack, page_for, screenshots, database):
    # GIVEN press-01 has sent a temperature of 95 (so the page can suggest the metric)
    press_reads(stack, 95.0)
    owner = stack["users"]["owner"]
    token = off_loop(token_for, owner)
    page = page_for()
    sign_in(page, owner)
    open_alerts(page)
    page.locator("[data-section=open] p.muted").wait_for()
    page.locator(".tabs a[href='#/alerts/rules']").click()
    # WHEN the owner fills in the form for a threshold rule with a clear value past the threshold
    page.locator("[data-action=add-rule]").click()
    form = page.locator("form.rule-form")
    form.locator("input[name=name]").fill("Press too hot")
    page.locator("form.rule-form[data-metrics='1']").wait_for()
    assert form.locator("datalist option").evaluate_all("options => options.map((o) => o.value)") == ["temp"]
    form.locator("input[name=metric]").fill("temp")
    form.locator("select[name=aggregation]").select_option("last")
    form.locator("input[name=window_min]").fill("5")
    form.locator("select[name=operator]").select_option(">")
    form.locator("input[name=value]").fill("80")
    form.locator("input[name=clear_value]").fill("90")
    form.locator("select[name=severity]").select_option("critical")
    form.locator("button[type=submit]").click()
    # THEN the API's validation error is shown next to the form, saying why
    form.locator(".error", has_text="clear_value must not pass the threshold").wait_for()
    # WHEN it is corrected THEN the rule is created without a warning (the metric was seen) and listed
    form.locator("input[name=clear_value]").fill("75")
    form.locator("button[type=submit]").click()
    form.locator(".ok", has_text="Press too hot").wait_for()
    assert form.locator("ul.warning").count() == 0
    listed = page.locator("tr[data-rule]", has_text="Press too hot")
    listed.wait_for()
    assert "last(temp, 5 min) > 80 · clears at 75" in listed.inner_text()
    assert "Critical" in listed.inner_text()
    # AND a rule on a metric no device sent is created with the API's warning shown
    form.locator("input[name=name]").fill("Oil pressure low")
    form.locator("input[name=metric]").fill("oil_pressure")
    form.locator("select[name=operator]").select_option("<")
    form.locator("input[name=value]").fill("2")
    form.locator("input[name=clear_value]").fill("")
    form.locator("select[name=scope]").select_option("device")
    form.locator("button[type=submit]").click()
    form.locator("ul.warning li", has_text="oil_pressure").wait_for()
    page.locator("tr[data-rule]", has_text="Oil pressure low").locator("a", has_text="press-01").wait_for()
    # (a no-data rule from the same form)
    form.locator("input[name=name]").fill("Press silent")
    form.locator("select[name=kind]").select_option("no_data")
    form.locator("input[name=no_data_minutes]").fill("15")
    form.locator("select[name=scope]").select_option("all")
    form.locator("button[type=submit]").click()
    page.locator("tr[data-rule]", has_text="Press silent").locator(
        "code", has_text="nothing received for 15 min"
    ).wait_for()
    page.screenshot(path=str(screenshots / "alert-rules.png"), full_page=True)

    # GIVEN two more rules through the API and the real evaluator run: three open events
    rule(token, "Press warm", 50, "warning")
    rule(token, "Press running", 10, "info")
    assert evaluate(token)["opened"] == 3
    # WHEN one is acknowledged and one resolved elsewhere (the API)
    events = {e["rule_name"]: e for e in api("GET", "/api/alerts/events", token)["items"]}
    api("POST", f"/api/alerts/events/{events['Press running']['id']}/resolve", token)
    api("POST", f"/api/alerts/events/{events['Press warm']['id']}/acknowledge", token)
    # THEN the events page lists them open first, then acknowledged, then resolved, and the nav
    # badge counts the one open event (refreshed at the page's cadence)
    page.locator(".tabs a[href='#/alerts']").click()
    page.locator("li[data-event][data-state=resolved]").wait_for()
    page.locator("#nav [data-open-alerts='1']").wait_for()
    assert states_in_order(page) == ["open", "acknowledged", "resolved"]
    hot = page.locator("li[data-event][data-state=open]")
    assert "Press too hot" in hot.inner_text() and "Critical" in hot.inner_text()
    assert "temp = 95" in hot.inner_text()
    assert hot.locator("a[href='#/device/%s']" % events["Press too hot"]["device_id"]).inner_text() == "press-01"
    # (opened at the API's instant, shown in the reader's time zone, Asia/Jakarta, and locale)
    opened = hot.locator("dd time").first
    assert opened.get_attribute("datetime") == events["Press too hot"]["opened_at"]
    local = datetime.fromisoformat(events["Press too hot"]["opened_at"]).astimezone(ZoneInfo("Asia/Jakarta"))
    assert local.strftime("%-I:%M:%S %p") in opened.inner_text().replace("\u202f", " ")
    page.screenshot(path=str(screenshots / "alerts.png"), full_page=True)

    # WHEN the owner acknowledges the open event with a comment, in the page
    hot.locator("[data-action=acknowledge]").click()
    hot.locator("textarea[name=comment]").fill("Checking the cooling pump")
    hot.locator("[data-action=confirm-acknowledge]").click()
    # THEN it moves to the acknowledged events, the badge drops to zero, and no dialog was used
    acked = page.locator(f"li[data-event='{events['Press too hot']['id']}'][data-state=acknowledged]")
    acked.wait_for()
    page.locator("#nav [data-open-alerts='0']").wait_for(state="attached")
    assert "Checking the cooling pump" in acked.inner_text()
    # WHEN they resolve it with a comment THEN it is resolved, with the comment and the user in the row
    acked.locator("[data-action=resolve]").click()
    acked.locator("textarea[name=comment]").fill("Pump replaced")
    acked.locator("[data-action=confirm-resolve]").click()
    page.locator(f"li[data-event='{events['Press too hot']['id']}'][data-state=resolved]").wait_for()
    row = query(
        database,
        "SELECT state, comment, acknowledged_by::text, resolved_by::text FROM alert_events WHERE id = %(id)s",
        {"id": events["Press too hot"]["id"]},
    )
    assert row == [("resolved", "Pump replaced", str(owner["id"]), str(owner["id"]))]
    assert page.dialogs == [] and page.errors == []
    assert layout_shift(page) < 0.05


def test_filters_and_paging(stack, page_for):
    owner = stack["users"]["owner"]
    token = off_loop(token_for, owner)
    press_reads(stack, 95.0)
    # GIVEN 25 resolved events of one warning rule (more than the 20 of the first page) and an open critical one
    rule(token, "Press warm", 50, "warning")
    for _ in range(25):
        evaluate(token)
        opened = api("GET", "/api/alerts/events?state=open&severity=warning", token)["items"]
        api("POST", f"/api/alerts/events/{opened[0]['id']}/resolve", token)
    rule(token, "Press too hot", 80, "critical")
    evaluate(token)
    page = page_for()
    sign_in(page, owner)
    open_alerts(page)
    resolved = page.locator("[data-section=resolved] li[data-event]")
    page.locator("[data-section=resolved] [data-action=more]").wait_for()
    assert resolved.count() == 20
    # WHEN "more" is pressed THEN the rest follow
    page.locator("[data-section=resolved] [data-action=more]").click()
    resolved.nth(24).wait_for()
    assert page.locator("[data-section=resolved] [data-action=more]").count() == 0
    # WHEN filtered to critical THEN only the hot event; to resolved THEN only that section
    page.locator("select[name=severity]").select_option("critical")
    page.locator("section[data-section=resolved] p.muted").wait_for()
    assert "Press too hot" in page.locator("li[data-event]").inner_text()
    page.locator("select[name=severity]").select_option("")
    page.locator("select[name=state]").select_option("resolved")
    page.locator("section[data-section=open]").wait_for(state="detached")
    assert page.locator("section[data-section]").count() == 1 and resolved.count() == 20
    assert page.errors == []


def test_viewer_sees_events_and_rules_without_buttons(stack, page_for):
    staff = off_loop(token_for, stack["users"]["staff"])
    press_reads(stack, 95.0)
    rule(staff, "Press too hot", 80, "critical")
    evaluate(staff)
    # (and a rule of a kind the form does not make, where the API has it: listed with its kind's name)
    anomaly = off_loop(
        call, "POST", "/api/alerts/rules", {"name": "Press odd", "kind": "anomaly", "metric": "temp"}, token=staff
    )
    page = page_for()
    sign_in(page, stack["users"]["viewer"])
    # THEN the viewer sees the open event and the badge, without acknowledge or resolve
    page.locator("#nav [data-open-alerts='1']").wait_for()
    open_alerts(page)
    page.locator("li[data-event]", has_text="Press too hot").wait_for()
    assert page.locator("main [data-action]").count() == 0
    # AND the rules, without add, toggle or delete
    page.locator(".tabs a[href='#/alerts/rules']").click()
    page.locator("tr[data-rule]", has_text="Press too hot").wait_for()
    if anomaly.status == 201:
        assert "Anomaly" in page.locator("tr[data-rule]", has_text="Press odd").inner_text()
    assert page.locator("main button").count() == 0
    assert page.errors == []


def test_hostile_rule_name_and_comment_are_shown_as_text(stack, page_for):
    owner = off_loop(token_for, stack["users"]["owner"])
    press_reads(stack, 95.0)
    rule(owner, HOSTILE, 80, "critical")
    evaluate(owner)
    event = api("GET", "/api/alerts/events", owner)["items"][0]
    api("POST", f"/api/alerts/events/{event['id']}/acknowledge", owner, {"comment": HOSTILE})
    page = page_for()
    sign_in(page, stack["users"]["owner"])
    open_alerts(page)
    item = page.locator(f"li[data-event='{event['id']}']")
    item.wait_for()
    assert item.locator(".rule-name").inner_text() == HOSTILE
    assert item.locator(".comment").inner_text() == HOSTILE
    page.locator(".tabs a[href='#/alerts/rules']").click()
    page.locator("tr[data-rule] .rule-name", has_text="<script>").wait_for()
    assert page.locator("tr[data-rule] .rule-name").inner_text() == HOSTILE
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("() => document.querySelectorAll('[onerror]').length") == 0
    assert page.dialogs == [] and page.errors == []


def test_staff_disable_enable_and_delete_a_rule_with_an_inline_confirmation(stack, page_for, database):
    staff = off_loop(token_for, stack["users"]["staff"])
    created = rule(staff, "Press too hot", 80, "critical", clear_value=75, consecutive=3)
    page = page_for()
    sign_in(page, stack["users"]["staff"])
    page.goto("/api/dashboard/#/alerts/rules")
    row = page.locator(f"tr[data-rule='{created['id']}']")
    # WHEN staff switch it off THEN it is disabled in the database, the rest of it unchanged
    row.locator("[data-action=toggle][aria-pressed=true]").click()
    row.locator("[data-action=toggle][aria-pressed=false]").wait_for()
    assert query(database, "SELECT enabled, clear_value, consecutive FROM alert_rules") == [(False, 75.0, 3)]
    row.locator("[data-action=toggle]").click()
    row.locator("[data-action=toggle][aria-pressed=true]").wait_for()
    # AND the page's auto-refresh leaves the keyboard where it was
    with page.expect_response(lambda r: "/api/alerts/rules" in r.url and r.request.method == "GET"):
        pass
    assert page.evaluate("document.activeElement.dataset.action") == "toggle"
    # WHEN they press delete and then cancel THEN nothing happens
    row.locator("[data-action=delete]").click()
    row.get_by_role("button", name="Cancel").click()
    assert query(database, "SELECT count(*) FROM alert_rules") == [(1,)]
    # WHEN they confirm, with the keyboard THEN the rule is gone
    row.locator("[data-action=delete]").click()
    assert page.evaluate("document.activeElement.dataset.action") == "confirm"
    page.keyboard.press("Enter")
    page.locator("tr[data-rule]").first.wait_for(state="detached")
    assert query(database, "SELECT count(*) FROM alert_rules") == [(0,)]
    assert page.dialogs == [] and page.errors == []


def test_alerts_are_not_offered_where_the_api_has_none(stack, page_for):
    # GIVEN a deployment whose API lists no alerts operations (config.json, as an older API would)
    page = page_for()

    def without_alerts(route) -> None:
        response = route.fetch()
        config = response.json()
        config["operations"] = [op for op in config["operations"] if "/api/alerts/" not in op]
        route.fulfill(response=response, json=config)

    page.route("**/config.json", without_alerts)
    sign_in(page, stack["users"]["owner"])
    # THEN the nav has no Alerts entry, and its address shows the fleet instead
    page.locator("tr[data-device=press-01]").wait_for()
    assert page.locator("#nav a .nav-label").all_inner_texts() == ["Fleet", "Profiles", "Ingest", "Users"]
    page.goto("/api/dashboard/#/alerts")
    page.locator("tr[data-device=press-01]").wait_for()
    assert page.locator("[data-section]").count() == 0 and page.errors == []


def test_language_switch_translates_the_alerts_view(stack, page_for):
    owner = off_loop(token_for, stack["users"]["owner"])
    press_reads(stack, 95.0)
    rule(owner, "Press too hot", 80, "critical")
    evaluate(owner)
    # GIVEN a browser that prefers Portuguese
    page = page_for(locale="pt-BR")
    sign_in(page, stack["users"]["owner"])
    page.locator("#nav a[href='#/alerts'] .nav-label", has_text="Alertas").click()
    item = page.locator("li[data-event]")
    item.locator(".badge.sev-critical", has_text="Crítico").wait_for()
    assert page.locator("[data-section=open] h2").inner_text().startswith("Abertos")
    # WHEN the reader switches to Indonesian THEN the alerts view speaks it
    page.locator("#lang").select_option("id")
    page.locator("li[data-event] .badge.sev-critical", has_text="Kritis").wait_for()
    assert page.locator("#nav a[href='#/alerts'] .nav-label").inner_text() == "Peringatan"
    assert page.locator("li[data-event] [data-action=acknowledge]").inner_text() == "Terima"
    page.locator(".tabs a[href='#/alerts/rules']").click()
    page.locator("th", has_text="Kondisi").wait_for()
    assert page.errors == []


def test_alerts_on_a_phone_screen(stack, page_for, screenshots):
    owner = off_loop(token_for, stack["users"]["owner"])
    press_reads(stack, 95.0)
    rule(owner, "Press too hot", 80, "critical")
    evaluate(owner)
    page = page_for(width=375, height=740)
    sign_in(page, stack["users"]["owner"])
    page.locator("#nav [data-open-alerts='1']").wait_for()
    open_alerts(page)
    item = page.locator("li[data-event]")
    item.wait_for()
    # THEN nothing scrolls sideways, with the comment form open too, and the keyboard reaches it
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    item.locator("[data-action=acknowledge]").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.name") == "comment"
    page.keyboard.type("on my way")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(screenshots / "alerts-phone.png"), full_page=True)
    page.keyboard.press("Escape")
    assert page.locator("textarea[name=comment]").count() == 0
    page.locator(".tabs a[href='#/alerts/rules']").click()
    page.locator("[data-action=add-rule]").click()
    page.locator("form.rule-form").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.errors == []
