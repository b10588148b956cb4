"""The dashboard in a real browser against the real stack: what each role sees, the fleet and a
device page with readings from the database, a device created in the page that connects and
publishes, hostile text rendered as text, languages, and a phone-sized screen."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.browser.conftest import api_offers, off_loop, sign_in
from tests.support.api import call, token_for
from tests.support.devices import Device, run_mqtt_ingest
from tests.support.registry import DeviceCredential
from tests.support.waiting import query, wait_for

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def publish_readings(settings, credential, readings: list[dict]) -> None:
    device = Device(settings, credential)
    try:
        mids = [device.publish("telemetry", reading) for reading in readings]
        assert set(device.wait_acked(mids).values()) == {0}
    finally:
        device.close()


def layout_shift(page) -> float:
    """Chromium's cumulative layout shift of the document so far, shifts right after input excluded."""
    return page.evaluate("""() => new Promise((resolve) => {
        new PerformanceObserver((list, observer) => {
            observer.disconnect();
            resolve(list.getEntries().filter((e) => !e.hadRecentInput).reduce((sum, e) => sum + e.value, 0));
        }).observe({ type: 'layout-shift', buffered: true });
        setTimeout(() => resolve(0), 500);
    })""")


def nav_texts(page) -> list[str]:
    """The nav links' labels (without the open-alerts badge beside "Alerts")."""
    page.locator("#nav a .nav-label").first.wait_for()
    return page.locator("#nav a .nav-label").all_inner_texts()


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
        seen[role]["device_actions"] = page.locator(
            "[data-action=rotate], [data-action=disable], [data-action=delete]"
        ).count()
        assert page.errors == []
    # THEN the owner manages users and devices, staff manages devices, the viewer only reads
    assert seen["owner"]["nav"] == ["Fleet", "Alerts", "Profiles", "Ingest", "Users"]
    assert seen["staff"]["nav"] == ["Fleet", "Alerts", "Profiles", "Ingest"]
    assert seen["viewer"]["nav"] == ["Fleet", "Alerts", "Profiles"]
    assert [seen[r]["add"] for r in ("owner", "staff", "viewer")] == [1, 1, 0]
    assert [seen[r]["device_actions"] for r in ("owner", "staff", "viewer")] == [3, 3, 0]
    assert "viewer" in seen["viewer"]["who"]


def test_hostile_text_is_shown_as_text_and_runs_nothing(stack, page_for, screenshots):
    # GIVEN a device whose display name and location are HTML with script, and a dead letter
    # whose payload is the same string
    token = off_loop(token_for, stack["users"]["staff"])
    reply = off_loop(
        call, "POST", "/api/devices", {"name": "evil-01", "display_name": HOSTILE, "location": HOSTILE}, token=token
    )
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
        payload = page.locator("pre.payload", has_text="<script>").first
        payload.wait_for()
        assert payload.inner_text() == HOSTILE
        if api_offers("GET", "/api/audit"):
            page.locator("[data-part=audit] td", has_text="device.create").wait_for()
        page.screenshot(path=str(screenshots / "ingest.png"), full_page=True)
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
    # AND the skip link, the first stop of the page, jumps to the content without changing the view
    page.reload()
    page.locator("tr[data-device=press-01]").wait_for()
    hash_before = page.evaluate("location.hash")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    assert page.evaluate("location.hash") == hash_before
    assert page.locator("tr[data-device=press-01]").count() == 1


def test_fleet_and_device_page_show_readings_from_the_database(stack, page_for, screenshots, database):
    if not api_offers("GET", "/api/devices/{device_id}/series"):
        pytest.skip("the reads API (latest, series) is not deployed in this tree")
    # GIVEN press-01 published readings over the last minutes, stored by the drain
    now_ms = int(time.time() * 1000)
    readings = [
        {
            "ts": now_ms - (5 - i) * 60_000,
            "seq": i,
            "metrics": {"temp": 20.0 + i, "rpm": 1000 + 10 * i, "door_open": i % 2 == 0},
        }
        for i in range(6)
    ]
    publish_readings(stack["settings"], stack["credentials"]["press-01"], readings)
    off_loop(run_mqtt_ingest)
    page = page_for()
    # WHEN the owner opens the fleet
    sign_in(page, stack["users"]["owner"])
    latest = page.locator("tr[data-device=press-01] td.latest")
    # THEN the device's newest value of each metric is listed, and the counts add up
    latest.locator(".metric", has_text="temp").wait_for()
    assert "25" in latest.inner_text() and "1,050" in latest.inner_text()
    assert page.locator("[data-count=online]").inner_text() == "1"
    # AND an auto-refresh (every 2 s here, the drain's cadence) redraws it without moving anything
    with page.expect_response(lambda r: r.url.endswith("/latest")):
        pass
    page.locator("tr[data-device=press-01] td.latest .metric", has_text="temp").wait_for()
    assert layout_shift(page) < 0.02
    page.screenshot(path=str(screenshots / "fleet.png"))
    # WHEN the device page opens, THEN each numeric metric is charted from the database's buckets
    page.locator("tr[data-device=press-01] a").click()
    page.locator(".chart[data-metric=temp] canvas").wait_for()
    page.locator(".chart[data-metric=rpm] canvas").wait_for()
    # (over one hour the buckets are narrower than a minute: one reading each)
    with page.expect_response(lambda r: "/series?" in r.url and "metric=temp" in r.url) as series:
        page.locator("[data-range='1h']").click()
    page.locator(".chart[data-metric=temp] canvas").wait_for()
    charted = sorted(point["avg"] for point in series.value.json()["points"])
    stored = sorted(row[0] for row in query(database, "SELECT value FROM telemetry WHERE metric = 'temp'"))
    assert charted == stored == [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    assert page.locator(".reading[data-metric=door_open] .value").inner_text() == "no"
    # AND the status history shows the drain's one change (never seen -> online), as text
    page.locator(".status-history li .status-online").wait_for()
    assert page.locator(".status-history li").count() == 1
    assert page.errors == []
    assert layout_shift(page) < 0.02
    page.screenshot(path=str(screenshots / "device.png"), full_page=True)


def test_device_created_in_the_page_connects_and_its_reading_appears(stack, page_for):
    # GIVEN staff on the fleet page
    page = page_for()
    sign_in(page, stack["users"]["staff"])
    # WHEN they add a device
    page.locator("[data-action=add-device]").click()
    page.locator("input[name=name]").fill("line-07")
    page.locator("input[name=display_name]").fill("Line 7 oven")
    page.locator("form button[type=submit]").click()
    # THEN its credential is shown once, with what is needed to connect
    password = page.locator("[data-testid=cred-password]").inner_text()
    username = page.locator("[data-testid=cred-username]").inner_text()
    client_id = page.locator("[data-testid=cred-client-id]").inner_text()
    assert username == client_id == f"{stack['tenant']['slug']}.line-07" and len(password) >= 16
    assert "mosquitto_pub" in page.locator(".secret").inner_text()
    ca_link = page.locator(".secret a[download]")
    assert ca_link.get_attribute("href") == "broker-ca.pem"
    ca = page.request.get("/api/dashboard/broker-ca.pem")
    assert ca.ok and ca.body() == Path(stack["settings"].mqtt_ca_file).read_bytes()
    assert (
        page.evaluate("() => JSON.stringify({...sessionStorage}) + JSON.stringify({...localStorage})").find(password)
        == -1
    )
    page.locator(".secret button.primary").click()
    assert page.locator(".secret").count() == 0
    # WHEN a real MQTT client connects with it and publishes, and the drain runs
    credential = DeviceCredential(stack["tenant"]["slug"], "line-07", username, client_id, password)
    device = wait_for(lambda: _connect(stack["settings"], credential), 15, "the new device to connect")
    try:
        mid = device.publish("telemetry", {"ts": int(time.time() * 1000), "metrics": {"oven_temp": 181.5}})
        assert device.wait_acked([mid]) == {mid: 0}
    finally:
        device.close()
    off_loop(run_mqtt_ingest)
    # THEN the page shows it online (and its value) on its own, without a reload
    row = page.locator("tr[data-device=line-07]")
    row.locator(".status-online").wait_for()
    if api_offers("GET", "/api/devices/{device_id}/latest"):
        row.locator(".value", has_text="181.5").wait_for()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.errors == []


def _connect(settings, credential):
    try:
        device = Device(settings, credential)
    except (TimeoutError, OSError):
        return None
    if device.refused:
        device.close()
        return None
    return device


def test_staff_send_a_command_and_see_it_recorded(stack, page_for):
    # GIVEN staff on press-01's page, the device connected and listening on its command topic
    received = []
    device = Device(stack["settings"], stack["credentials"]["press-01"])
    device.client.on_message = lambda client, userdata, message: received.append(message.payload)
    device.client.subscribe(f"{stack['credentials']['press-01'].topic_prefix}/cmd", qos=1)
    try:
        page = page_for()
        sign_in(page, stack["users"]["staff"])
        page.locator("tr[data-device=press-01] a").click()
        # WHEN they send set_point {"value": 72.5}
        page.locator("input[name=name]").fill("set_point")
        page.locator("input[name=args]").fill('{"value": 72.5}')
        page.get_by_role("button", name="Send command").click()
        # THEN the device receives it and the page lists it as sent
        page.locator(".command-list li", has_text="set_point").locator(".command-sent").wait_for()
        wait_for(lambda: received, 10, "the command at the device")
        assert json.loads(received[0])["name"] == "set_point"
    finally:
        device.close()


def test_owner_adds_a_user_sees_the_password_once_and_keeps_the_last_owner(stack, page_for, screenshots):
    page = page_for()
    sign_in(page, stack["users"]["owner"])
    page.locator("#nav a", has_text="Users").click()
    # WHEN the owner adds a viewer without a password
    page.locator("input[name=email]").fill("new.viewer@example.com")
    page.locator("form[aria-label='Add user'] button[type=submit]").click()
    # THEN the generated password is shown once, and the user is listed
    password = page.locator("[data-testid=user-password]").inner_text()
    assert len(password) >= 12
    page.locator("tr[data-user='new.viewer@example.com']").wait_for()
    page.locator(".secret button.primary").click()
    assert password not in page.content()
    # WHEN the owner tries to demote themselves, the only owner
    me = page.locator(f"tr[data-user='{stack['users']['owner']['email']}'] select")
    me.select_option("viewer")
    # THEN the API's refusal is shown and the role stays
    page.locator(".message .error").wait_for()
    assert me.input_value() == "owner"
    page.screenshot(path=str(screenshots / "users.png"), full_page=True)


def test_a_link_carrying_another_users_token_signs_nobody_in(stack, page_for):
    # GIVEN the owner's own access token, in a link someone sends a staff member (no identity provider
    # configured: the page used to hand any fragment token to the external-token path)
    token = off_loop(token_for, stack["users"]["owner"])
    page = page_for()
    # WHEN the link is opened
    page.goto(f"/api/dashboard/#access_token={token}&token_type=bearer")
    # THEN the page shows the sign-in form, signed in as nobody, and the token has left the address bar
    page.locator("form.login input[name=tenant]").wait_for()
    assert page.locator("#signout").is_hidden()
    assert token not in page.url
    assert page.evaluate("() => JSON.stringify({...sessionStorage})").find(token) == -1


class FakeProvider:
    """An identity provider's authorization endpoint: answers /authorize by redirecting back to the
    redirect_uri with the token and the state in the fragment (OAuth 2.0's implicit answer)."""

    def __init__(self, token: str) -> None:
        import http.server
        import threading
        from urllib.parse import parse_qs, urlsplit

        provider = self
        self.requests: list[dict[str, list[str]]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                query = parse_qs(urlsplit(self.path).query)
                provider.requests.append(query)
                self.send_response(302)
                self.send_header(
                    "Location",
                    f"{query['redirect_uri'][0]}#access_token={token}&token_type=bearer&state={query['state'][0]}",
                )
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/authorize?client_id=dashboard"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_identity_providers_sign_in_signs_in_only_as_the_answer_this_tab_asked_for(stack, page_for, monkeypatch):
    import uuid

    import jwt

    from shared.core.settings import get_settings

    # GIVEN an external provider configured (HS256, Supabase-shaped claims) with its sign-in page, and
    # the owner's token from it that narrows the role to viewer
    issuer, audience, secret = "https://idp.example.test/auth/v1", "authenticated", "idp-shared-secret-" + "x" * 24
    owner = stack["users"]["owner"]
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": issuer,
            "aud": audience,
            "sub": str(uuid.uuid4()),
            "email": owner["email"],
            "app_metadata": {"tenant": owner["tenant"]["slug"], "role": "viewer"},
            "iat": now,
            "exp": now + 600,
        },
        secret,
        algorithm="HS256",
    )
    provider = FakeProvider(token)
    for key, value in {
        "AUTH_EXTERNAL_ISSUER": issuer,
        "AUTH_EXTERNAL_AUDIENCE": audience,
        "AUTH_EXTERNAL_SECRET": secret,
        "AUTH_EXTERNAL_SIGN_IN_URL": provider.url,
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        # WHEN a link hands that token over unasked, with no state or a made-up one
        for fragment in (f"access_token={token}", f"access_token={token}&state=guessed"):
            page = page_for()
            page.goto(f"/api/dashboard/#{fragment}")
            # THEN nobody is signed in
            page.locator("form.external").wait_for()
            assert page.locator("#signout").is_hidden() and token not in page.url
        # WHEN the reader starts the provider's sign-in from the page
        page = page_for()
        page.goto("/api/dashboard/")
        page.locator("[data-action=external-sign-in]").click()
        # THEN the provider got a fresh random state and the page's own address, and its answer signs the
        # reader in as that user, with the narrowed role; the token leaves the address bar and storage
        page.locator("#signout").wait_for(state="visible")
        [asked] = provider.requests
        assert len(asked["state"][0]) >= 40 and asked["redirect_uri"] == [f"{page.url.split('#')[0]}"]
        assert asked["client_id"] == ["dashboard"]
        assert "viewer" in page.locator("#who").inner_text()
        assert nav_texts(page) == ["Fleet", "Alerts", "Profiles"]
        assert token not in page.url
        assert (
            page.evaluate("() => JSON.stringify({...sessionStorage}) + JSON.stringify({...localStorage})").find(token)
            == -1
        )
        # AND the answer is spent: the same answer again, in the same tab, signs nobody in
        page.locator("#signout").click()
        page.goto("about:blank")
        page.goto(f"/api/dashboard/#access_token={token}&state={asked['state'][0]}")
        page.locator("form.external").wait_for()
        assert page.locator("#signout").is_hidden()
    finally:
        provider.close()


def test_staff_commission_many_devices_from_a_csv(stack, page_for):
    if not api_offers("POST", "/api/devices/bulk"):
        pytest.skip("bulk device creation is not deployed in this tree")
    page = page_for()
    sign_in(page, stack["users"]["staff"])
    # WHEN staff paste a CSV of two machines
    page.locator("[data-action=add-devices-csv]").click()
    page.locator("textarea[name=csv]").fill(
        "name,display_name,type,location,tags\n"
        "press-02,Press 2,press,Hall A,line1;hydraulic\n"
        "press-03,Press 3,press,Hall A,line1\n"
    )
    page.locator("form button[type=submit]").click()
    # THEN each credential is shown once, and can be saved as a CSV file the page makes in memory
    page.locator("tr[data-created=press-03]").wait_for()
    passwords = page.locator("tr[data-created] code.copyable").all_inner_texts()
    assert len(passwords) == 2 and all(len(p) >= 16 for p in passwords)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download credentials (CSV)").click()
    saved = Path(download.value.path()).read_text()
    assert all(p in saved for p in passwords) and saved.startswith("name,username,client_id,password")
    page.locator(".secret button.primary").click()
    page.locator("tr[data-device=press-03]").wait_for()
    assert not any(p in page.content() for p in passwords)


def test_staff_edit_disable_and_rotate_from_the_device_page(stack, page_for):
    page = page_for()
    sign_in(page, stack["users"]["staff"])
    page.locator("tr[data-device=press-01] a").click()
    # WHEN staff edit the location and tags
    page.locator("[data-action=edit]").click()
    page.locator("input[name=location]").fill("Hall B")
    page.locator("input[name=tags]").fill("line2, hydraulic")
    page.get_by_role("button", name="Save").click()
    # THEN the page shows them
    page.locator(".tags li", has_text="hydraulic").wait_for()
    assert "Hall B" in page.locator(".page-head").inner_text()
    # WHEN they disable it, THEN it shows disabled and offers to enable it
    page.locator("[data-action=disable]").click()
    page.locator("h1 .status-disabled").wait_for()
    page.locator("[data-action=enable]").click()
    page.locator("[data-action=disable]").wait_for()
    # WHEN they rotate its credential (confirmed inline, no browser dialog), THEN a new one is shown once
    page.locator("[data-action=rotate]").click()
    page.locator("[data-action=confirm]").click()
    password = page.locator("[data-testid=cred-password]").inner_text()
    assert password and password != stack["credentials"]["press-01"].password
    assert page.dialogs == [] and page.errors == []
