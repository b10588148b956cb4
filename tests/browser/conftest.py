"""Browser tests: the dashboard in Debian's Chromium (driven by Playwright for Python, never a
browser of its own), served by the app's registered functions through scripts/func_host.py's
LocalHost on a free port, against the harness's real PostgreSQL and Mosquitto.

One browser for the session; each test gets a fresh context (no shared storage) and its own
database clone, tenant and users. Screenshots go to docs/screenshots/ (docs/dashboard.md shows them) when
DASHBOARD_SCREENSHOTS=docs, otherwise to the pytest temporary folder."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.devices.commands import close_commander_connection
from tests.support.api import call, close_api_pool, export_api_settings, new_user
from tests.support.devices import new_tenant_with_devices, registered_functions

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


def _load_func_host() -> Any:
    if "func_host" in sys.modules:
        return sys.modules["func_host"]
    spec = importlib.util.spec_from_file_location("func_host", REPO / "scripts" / "func_host.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["func_host"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# Package scope, not session: Playwright's sync API keeps an event loop running in the main thread
# while it is open, and the API tests after this package call the app through asyncio.run().
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Chromium is missing: scripts/install-deps installs Debian's chromium"
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="package")
def host() -> Iterator[str]:
    """The function app served over HTTP; settings are read per request (get_settings), so each
    test's exported settings apply. Timers are not started: tests run the drain themselves."""
    from function_app import app

    # Index the app for tests/support (call, run_mqtt_ingest) first: azure-functions refuses a
    # second get_functions() unless its bindings are cleared, which LocalHost does for itself.
    registered_functions()
    func_host = _load_func_host()
    local = func_host.LocalHost(app, settings={**os.environ, "INGEST_SCHEDULE": "0 0 * * * *"}, stop_timeout=2)
    port = local.serve(0)
    yield f"http://127.0.0.1:{port}"
    local.stop()


@pytest.fixture
def stack(settings, database, app_pool, mosquitto_broker, monkeypatch) -> Iterator[dict[str, Any]]:
    """A tenant with device press-01 (row + broker credential) and one user per role; the API's
    settings exported for the served app."""
    # The page re-reads at the drain's cadence (config.json, from INGEST_SCHEDULE): every 2 s here.
    monkeypatch.setenv("INGEST_SCHEDULE", "*/2 * * * * *")
    export_api_settings(
        monkeypatch,
        database,
        MQTT_COMMANDER_USERNAME=mosquitto_broker.commander.username,
        MQTT_COMMANDER_PASSWORD=mosquitto_broker.commander.password,
    )
    tenant, credentials = new_tenant_with_devices(app_pool, settings, ["press-01"])
    users = {role: new_user(app_pool, tenant, role) for role in ("owner", "staff", "viewer")}
    yield {"tenant": tenant, "credentials": credentials, "users": users, "settings": settings}
    close_commander_connection()
    close_api_pool()


@pytest.fixture
def page_for(browser, host) -> Iterator[Any]:
    """page_for(width=1280, height=900, locale="en-US") -> a page in a context of its own."""
    contexts = []

    def open_page(width: int = 1280, height: int = 900, locale: str = "en-US") -> Any:
        context = browser.new_context(
            viewport={"width": width, "height": height}, locale=locale, timezone_id="Asia/Jakarta", base_url=host
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.dialogs = []  # type: ignore[attr-defined]
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on(
            "console",
            lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None,
        )
        return page

    violations: list[str] = []
    yield open_page
    for context in contexts:
        context.close()
    # The page must work under its own CSP: anything it blocked is a bug (inline style, eval, ...).
    assert violations == []


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    if os.environ.get("DASHBOARD_SCREENSHOTS") == "docs":
        folder = REPO / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


def sign_in(page: Any, user: dict[str, Any], password: str | None = None) -> None:
    from tests.support.api import PASSWORD

    page.goto("/api/dashboard/")
    page.locator("input[name=tenant]").fill(user["tenant"]["slug"])
    page.locator("input[name=email]").fill(user["email"])
    page.locator("input[name=password]").fill(password or PASSWORD)
    page.locator("form.login button[type=submit]").click()
    page.locator("#signout").wait_for(state="visible")


def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs function in a worker thread: Playwright's sync API keeps an event loop running in the
    test's thread, where tests/support/api.call (asyncio.run) cannot run."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()


def api_offers(method: str, path: str) -> bool:
    """Whether the deployed API has the operation (other issues add endpoints the page uses)."""
    document = off_loop(call, "GET", "/api/openapi.json").json
    return method.lower() in document.get("paths", {}).get(path, {})
