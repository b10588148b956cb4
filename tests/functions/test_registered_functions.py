"""The app's registered functions: binding shapes pinned, and the HTTP health route driven
through its registered function object against a real database."""

from __future__ import annotations

import json

import azure.functions as func
import psycopg
import pytest

from tests.support.devices import registered_functions


def test_function_app_registers_exactly_the_expected_functions():
    assert sorted(registered_functions()) == [
        "alert_evaluator",
        "api",
        "blob_archiver",
        "broker_sync",
        "dashboard_page",
        "health",
        "mqtt_ingest",
        "telemetry_rollup",
    ]


def test_mqtt_ingest_is_a_timer_on_the_configured_schedule_that_never_runs_on_startup():
    [binding] = json.loads(registered_functions()["mqtt_ingest"].get_function_json())["bindings"]
    assert binding == {
        "type": "timerTrigger",
        "direction": "IN",
        "name": "timer",
        "schedule": "%INGEST_SCHEDULE%",
        "runOnStartup": False,
        "useMonitor": True,
    }


def test_health_is_an_anonymous_get_route():
    bindings = json.loads(registered_functions()["health"].get_function_json())["bindings"]
    trigger = next(b for b in bindings if b["type"] == "httpTrigger")
    assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == ("health", ["GET"], "ANONYMOUS")


def call_health() -> func.HttpResponse:
    request = func.HttpRequest("GET", "http://localhost/api/health", body=b"")
    return registered_functions()["health"].get_user_function()(request)


@pytest.fixture
def app_settings(monkeypatch):
    """Exports database settings for get_settings(), and gives each test a fresh app pool."""
    from shared.core import db
    from shared.core.settings import get_settings

    def export(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        db._pool = None

    yield export
    if db._pool is not None:
        db._pool.close()
        db._pool = None


def test_health_reports_database_and_last_ingest_run(app_settings, database):
    # GIVEN a database with a finished ingest run
    app_settings(DATABASE_URL=database.app_dsn, INGEST_DATABASE_URL=database.ingest_dsn)
    with psycopg.connect(database.owner_dsn) as conn:
        conn.execute("INSERT INTO ingest_runs (status, finished_at) VALUES ('ok', now())")

    # WHEN the registered health function is called
    response = call_health()

    # THEN it answers 200 with the database state and the last run
    body = json.loads(response.get_body())
    assert response.status_code == 200
    assert (body["status"], body["database"], body["last_ingest_status"]) == ("ok", "ok", "ok")
    assert (response.headers["Cache-Control"], response.headers["X-Content-Type-Options"]) == ("no-store", "nosniff")


def test_health_answers_503_with_a_fixed_message_when_the_database_is_unreachable(app_settings, caplog):
    unreachable = "postgresql://nobody:not-a-secret-really@127.0.0.1:1/none?connect_timeout=1"
    app_settings(DATABASE_URL=unreachable, INGEST_DATABASE_URL=unreachable)

    response = call_health()

    # The body says only that it is unreachable; the log says why, without the password.
    [logged] = [r.getMessage() for r in caplog.records if r.name == "shared.core.health"]
    assert "database unreachable" in logged and "refused" in logged.lower()
    assert "not-a-secret-really" not in logged
    assert response.status_code == 503
    assert json.loads(response.get_body()) == {
        "status": "degraded",
        "database": "unreachable",
        "last_ingest_run": None,
        "last_ingest_status": None,
    }
