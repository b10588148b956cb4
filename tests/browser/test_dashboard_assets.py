"""The dashboard's files as the registered function serves them (no browser): the strict CSP and
other headers, what is and is not served, the page's refresh cadence, the vendored uPlot against
package-lock.json, translations that match, and page code that never turns text into markup."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import azure.functions as func
import pytest

from shared.http import static
from tests.support.devices import registered_functions

REPO = Path(__file__).resolve().parents[2]
PAGE_CODE = [p for p in (REPO / "dashboard").rglob("*.js") if "vendor" not in p.parts]


def get(path: str, url_path: str | None = None) -> func.HttpResponse:
    request = func.HttpRequest(
        "GET",
        f"http://localhost/api/dashboard/{url_path if url_path is not None else path}",
        headers={},
        params={},
        route_params={"path": path},
        body=b"",
    )
    response: func.HttpResponse = registered_functions()["dashboard_page"].get_user_function()(request)
    return response


def test_route_is_get_only_under_dashboard_so_it_shadows_no_api_route():
    bindings = json.loads(registered_functions()["dashboard_page"].get_function_json())["bindings"]
    trigger = next(b for b in bindings if b["type"] == "httpTrigger")
    assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == ("dashboard/{*path}", ["GET"], "ANONYMOUS")


def test_page_is_served_with_a_strict_content_security_policy():
    response = get("", "")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    csp = response.headers["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ):
        assert directive in csp
    assert "unsafe" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert get("app.js").headers["Content-Type"].startswith("text/javascript")
    assert get("vendor/uplot/uPlot.iife.min.js").status_code == 200


def test_bare_path_redirects_so_relative_files_resolve():
    response = get("", "")
    assert response.status_code == 200
    bare = registered_functions()["dashboard_page"].get_user_function()(
        func.HttpRequest("GET", "http://localhost/api/dashboard", headers={}, params={}, route_params={}, body=b"")
    )
    assert (bare.status_code, bare.headers["Location"]) == (308, "/api/dashboard/")


@pytest.mark.parametrize(
    "path",
    [
        "../function_app.py",
        "../shared/core/settings.py",
        "vendor_assets.py",
        ".hidden.js",
        "i18n/../../function_app.py",
        "views/../../README.md",
        "missing.js",
        "%2e%2e/x.js",
        "vendor/uplot/LICENSE",
    ],
)
def test_only_the_pages_own_files_are_served(path):
    assert get(path).status_code == 404


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style>")
        self.problems += [f"{tag} {name}=" for name in names if name.startswith("on") or name == "style"]


def test_markup_has_no_inline_script_style_or_handlers():
    for page in (REPO / "dashboard").glob("*.html"):
        parser = _Markup()
        parser.feed(page.read_text(encoding="utf-8"))
        assert parser.problems == [], page


def test_page_code_never_turns_text_into_markup_or_code():
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setAttribute\(['\"]on|localStorage\.setItem\([^)]*(token|password)",
        re.I,
    )
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in PAGE_CODE for m in sinks.finditer(p.read_text())]
    assert found == []


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [
        ("*/10 * * * * *", 10),
        ("0 */1 * * * *", 60),
        ("0 */5 * * * *", 300),
        ("0 * * * * *", 60),
        ("* * * * * *", 1),
        ("15 30 2 * * *", 60),
        ("nonsense", 60),
    ],
)
def test_page_refreshes_at_the_drains_cadence(schedule, seconds):
    assert static.refresh_interval_s(schedule) == seconds


def test_config_json_carries_the_cadence_and_nothing_secret(monkeypatch):
    from shared.core.settings import get_settings

    for key, value in {
        "DATABASE_URL": "postgresql://app@127.0.0.1:1/x",
        "INGEST_DATABASE_URL": "postgresql://i@127.0.0.1:1/x",
        "INGEST_SCHEDULE": "*/10 * * * * *",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    config = json.loads(get("config.json").get_body())
    # no MQTT_CA_FILE: a publicly trusted broker certificate, verified by the device's own CA store
    assert (config["refresh_s"], config["ca_url"], config["system_ca"], config["external_sign_in"]) == (
        10,
        None,
        True,
        False,
    )
    # the API's operations, so the page offers only views whose endpoints exist
    assert {"GET /api/devices", "POST /api/devices", "GET /api/me"} <= set(config["operations"])
    # where devices connect: what every device is configured with, so nothing secret either
    assert (config["broker_host"], config["broker_port"]) == (get_settings().mqtt_host, get_settings().mqtt_port)
    assert set(config) == {
        "refresh_s",
        "ca_url",
        "system_ca",
        "external_sign_in",
        "external_sign_in_url",
        "broker_host",
        "broker_port",
        "operations",
    }
    assert config["external_sign_in_url"] is None  # no provider: the page takes no token from its URL


def test_broker_ca_is_offered_only_as_a_certificate(tmp_path):
    cert = tmp_path / "ca.crt"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    served = static.broker_ca(str(cert))
    assert served is not None and served.body.startswith(b"-----BEGIN CERTIFICATE-----")
    mixed = tmp_path / "mixed.pem"
    mixed.write_text(cert.read_text() + "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    assert static.broker_ca(str(mixed)) is None
    assert static.broker_ca(str(tmp_path / "absent.crt")) is None


def test_vendored_uplot_is_the_locked_version():
    result = subprocess.run(
        [sys.executable, str(REPO / "dashboard" / "vendor_assets.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert (REPO / "dashboard/vendor/uplot/VERSION").read_text().strip() == lock["packages"]["node_modules/uplot"][
        "version"
    ]


def test_every_language_has_every_message_with_the_same_placeholders():
    catalogs = {
        path.stem: json.loads(path.read_text(encoding="utf-8")) for path in (REPO / "dashboard" / "i18n").glob("*.json")
    }
    assert set(catalogs) == {"en", "id", "pt-BR"}
    placeholders = {key: set(re.findall(r"\{\w+\}", text)) for key, text in catalogs["en"].items()}
    for name, catalog in catalogs.items():
        assert set(catalog) == set(placeholders), name
        assert {key: set(re.findall(r"\{\w+\}", text)) for key, text in catalog.items()} == placeholders, name
    used = {m.group(1) for p in PAGE_CODE for m in re.finditer(r"\bt\('([a-z0-9_]+)'", p.read_text())}
    assert used - set(catalogs["en"]) == set()
