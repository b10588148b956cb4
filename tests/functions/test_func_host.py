"""scripts/func_host.py: the local host that runs registered functions when Core Tools is absent.

The host runs against small apps built here (function_app.py imports modules other tests own).
Timing tests wait on deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.error import HTTPError

import azure.functions as func
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "func_host.py"


def _load_func_host():
    spec = importlib.util.spec_from_file_location("func_host", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["func_host"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


fh = _load_func_host()

TEST_SETTINGS = {"TEST_SCHEDULE": "*/1 * * * * *"}


# --------------------------------------------------------------------------- helpers


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


class TimerRecorder:
    """Records each timer run: start, end, past_due, and the most runs seen at once."""

    def __init__(self, durations: list[float]):
        self.durations = durations  # per run; the last one repeats
        self.runs: list[dict] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def run(self, timer: func.TimerRequest) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            index = len(self.runs)
            record = {"start": time.monotonic(), "past_due": timer.past_due, "end": None}
            self.runs.append(record)
        time.sleep(self.durations[min(index, len(self.durations) - 1)])
        with self._lock:
            record["end"] = time.monotonic()
            self.active -= 1

    def finished(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.runs if r["end"] is not None]


def build_test_app(recorder: TimerRecorder | None = None) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="devices/{device_id}/readings/{id}", methods=["GET"])
    def get_reading(req: func.HttpRequest) -> func.HttpResponse:
        body = {"route": dict(req.route_params), "params": dict(req.params), "url": req.url}
        return func.HttpResponse(json.dumps(body), mimetype="application/json")

    @app.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
    def echo(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(
            req.get_body(), status_code=201, headers={"X-Echo": "yes"}, mimetype="application/octet-stream"
        )

    @app.route(route="broken", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def broken(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("secret detail that must not reach the client")

    @app.timer_trigger(arg_name="timer", schedule="%TEST_SCHEDULE%", run_on_startup=False)
    def tick(timer: func.TimerRequest) -> None:
        if recorder is not None:
            recorder.run(timer)

    return app


@pytest.fixture
def served():
    """GIVEN the test app served on a free port (timers not started)."""
    host = fh.LocalHost(build_test_app(), settings=TEST_SETTINGS, stop_timeout=2)
    port = host.serve(0)
    yield host, f"http://127.0.0.1:{port}"
    host.stop()


# --------------------------------------------------------------------------- route templates


def test_route_literal_segments_match_case_insensitively_and_ignore_trailing_slash():
    route = fh.RouteTemplate.parse("health")
    assert route.match("/health") == {}
    assert route.match("/HEALTH/") == {}
    assert route.match("/health/extra") is None
    assert route.match("/") is None


def test_route_param_is_extracted_and_percent_decoded():
    route = fh.RouteTemplate.parse("devices/{device_id}/rotate")
    assert route.match("/devices/abc%20def/rotate") == {"device_id": "abc def"}
    assert route.match("/devices//rotate") is None
    assert route.match("/devices/abc") is None


@pytest.mark.parametrize(
    "template",
    ["items/{id:int}", "items/{name?}", "page/{n=1}", "exports/{day}.{ext}", "files/{*path}/more", "bad/{1x}"],
)
def test_route_syntax_beyond_what_the_app_uses_is_refused_at_start(template):
    # Constraints, optional or default values, mixed segments: the real host reads them, this one would guess.
    with pytest.raises(fh.HostConfigError):
        fh.RouteTemplate.parse(template)


def test_route_catch_all_takes_the_rest_of_the_path():
    route = fh.RouteTemplate.parse("files/{*path}")
    assert route.match("/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert route.match("/files") == {}
    assert fh.RouteTemplate.parse("{*route}").match("/devices/7/latest") == {"route": "devices/7/latest"}


def test_route_precedence_prefers_literals_then_params_then_catch_all():
    # As the app's own routes need: /api/health and /api/dashboard/... win over the API's {*route}.
    literal = fh.RouteTemplate.parse("devices/stats")
    plain = fh.RouteTemplate.parse("devices/{id}")
    catch_all = fh.RouteTemplate.parse("{*route}")
    ordered = sorted([catch_all, plain, literal], key=lambda r: r.precedence)
    assert ordered == [literal, plain, catch_all]


# --------------------------------------------------------------------------- settings and schedules


def test_placeholders_resolve_from_settings_and_missing_ones_fail_loudly():
    assert fh.resolve_placeholders("%A% */%B% *", {"A": "0", "B": "5"}) == "0 */5 *"
    with pytest.raises(fh.HostConfigError, match="MISSING"):
        fh.resolve_placeholders("%MISSING%", {})


def test_local_settings_values_are_exported_without_overriding(tmp_path):
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {"A": "file", "B": "file", "N": 3}}))
    environ = {"A": "already-set"}
    applied = fh.load_local_settings(settings, environ)
    assert environ == {"A": "already-set", "B": "file", "N": "3"}
    assert applied == {"B": "file", "N": "3"}


def test_ncrontab_six_fields_are_seconds_first_and_five_fields_minute_first():
    start = datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    six = fh.parse_schedule("*/15 * * * * *")
    assert six.next_after(start) == datetime(2024, 1, 1, 0, 0, 15, tzinfo=UTC)
    five = fh.parse_schedule("*/5 * * * *")
    assert five.next_after(start) == datetime(2024, 1, 1, 0, 5, tzinfo=UTC)


def test_ncrontab_day_of_month_and_day_of_week_must_both_match():
    # NCrontab ANDs the two day fields; Vixie cron (croniter's default) would OR them.
    start = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
    friday_the_13th = fh.parse_schedule("0 0 0 13 * 5").next_after(start)
    assert friday_the_13th == datetime(2024, 9, 13, tzinfo=UTC)


def test_timespan_schedule_and_invalid_schedule():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert fh.parse_schedule("00:05:00").next_after(start) == datetime(2024, 1, 1, 0, 5, tzinfo=UTC)
    with pytest.raises(fh.HostConfigError):
        fh.parse_schedule("every minute please")


# --------------------------------------------------------------------------- indexing


def test_indexing_reads_http_and_timer_triggers_and_resolves_the_schedule():
    host = fh.LocalHost(build_test_app(), settings=TEST_SETTINGS)
    assert host.banner() == [
        "http GET /api/devices/{device_id}/readings/{id} (function)",
        "http POST /api/echo (anonymous)",
        "http GET /api/broken (anonymous)",
        "timer tick */1 * * * * *",
    ]


def test_the_same_app_can_be_hosted_twice():
    # azure-functions 1.2x raises "does not have a unique function name" on a second
    # app.get_functions(); the host must not trip over that.
    app = build_test_app()
    fh.LocalHost(app, settings=TEST_SETTINGS)
    fh.LocalHost(app, settings=TEST_SETTINGS)


def test_unresolved_schedule_setting_refuses_to_start_timers():
    host = fh.LocalHost(build_test_app(), settings={})
    with pytest.raises(fh.HostConfigError, match="TEST_SCHEDULE"):
        host.start_timers()


def test_disabled_function_is_skipped():
    host = fh.LocalHost(build_test_app(), settings={**TEST_SETTINGS, "AzureWebJobs.tick.Disabled": "true"})
    assert [t.name for t in host.timers] == []
    assert "skipped tick: disabled by app setting" in host.banner()


# --------------------------------------------------------------------------- HTTP


def test_http_route_params_query_and_url_reach_the_function(served):
    host, base = served
    status, headers, body = http("GET", f"{base}/api/devices/dev-1/readings/42?limit=5")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["route"] == {"device_id": "dev-1", "id": "42"}
    assert payload["params"] == {"limit": "5"}
    assert payload["url"] == f"{base}/api/devices/dev-1/readings/42?limit=5"


def test_http_unmatched_route_is_404(served):
    _, base = served
    status, _, _ = http("GET", f"{base}/api/devices/dev-1/readings/42/more")
    assert status == 404


def test_http_post_body_status_and_headers_round_trip(served):
    _, base = served
    payload = b'{"binary": "\x00\xff"}'
    status, headers, body = http("POST", f"{base}/api/echo", body=payload, headers={"Content-Type": "application/json"})
    assert (status, body) == (201, payload)
    assert headers["X-Echo"] == "yes"
    assert headers["Content-Type"] == "application/octet-stream"


def test_http_wrong_method_is_405_with_allow(served):
    _, base = served
    status, headers, _ = http("GET", f"{base}/api/echo")
    assert status == 405
    assert headers["Allow"] == "POST"


def test_http_unknown_route_and_missing_prefix_are_404(served):
    _, base = served
    assert http("GET", f"{base}/api/nope")[0] == 404
    assert http("GET", f"{base}/echo")[0] == 404


def test_http_function_that_raises_is_a_generic_500(served, caplog):
    _, base = served
    status, headers, body = http("GET", f"{base}/api/broken")
    assert status == 500
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"] == "internal server error"
    assert b"secret detail" not in body
    failed = [r for r in caplog.records if "Failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None  # logged with its traceback


def test_context_param_and_async_functions_are_supported():
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="ctx")
    async def ctx(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
        return func.HttpResponse(context.function_name)

    reply = fh.LocalHost(app, settings={}).dispatch("GET", "/api/ctx", {}, b"")
    assert (reply.status, reply.body) == (200, b"ctx")


# --------------------------------------------------------------------------- timers


def test_timer_fires_repeatedly_never_overlaps_and_flags_late_runs_past_due():
    # GIVEN a timer every second whose first run takes longer than two intervals
    recorder = TimerRecorder(durations=[2.2, 0.05])
    host = fh.LocalHost(build_test_app(recorder), settings=TEST_SETTINGS, stop_timeout=3)
    # WHEN the timers run
    host.start_timers()
    try:
        fired_twice = wait_until(lambda: len(recorder.finished()) >= 2, timeout=8)
    finally:
        host.stop()
    # THEN it fired at least twice, one run at a time
    runs = recorder.finished()
    assert fired_twice, runs
    assert recorder.max_active == 1
    assert runs[1]["start"] >= runs[0]["end"]
    # AND the run that could only start after the overrun was past due; the first was on time
    assert runs[0]["past_due"] is False
    assert runs[1]["past_due"] is True


def test_run_on_startup_fires_immediately():
    fired = threading.Event()
    app = func.FunctionApp()

    @app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
    def yearly(timer: func.TimerRequest) -> None:
        fired.set()

    host = fh.LocalHost(app, settings={})
    host.start_timers()
    try:
        assert fired.wait(5)
    finally:
        host.stop()


def test_stop_abandons_a_hung_timer_run_within_its_timeout():
    release = threading.Event()
    started = threading.Event()
    app = func.FunctionApp()

    @app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *", run_on_startup=True)
    def hangs(timer: func.TimerRequest) -> None:
        started.set()
        release.wait(30)

    host = fh.LocalHost(app, settings={})
    host.start_timers()
    try:
        assert started.wait(5)
        began = time.monotonic()
        host.stop(timeout=0.3)
        assert time.monotonic() - began < 2
        assert all(t.daemon for t in host._timer_threads)  # cannot block interpreter exit
    finally:
        release.set()


def test_run_timer_reports_success_and_failure():
    app = func.FunctionApp()

    @app.timer_trigger(arg_name="timer", schedule="0 0 * * * *")
    def fine(timer: func.TimerRequest) -> None:
        pass

    @app.timer_trigger(arg_name="timer", schedule="0 0 * * * *")
    def fails(timer: func.TimerRequest) -> None:
        raise ValueError("nope")

    host = fh.LocalHost(app, settings={})
    assert host.run_timer("fine") is True
    assert host.run_timer("fails") is False


# --------------------------------------------------------------------------- command line


APP_SOURCE = textwrap.dedent("""
    import os

    import azure.functions as func

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


    @app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def health(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(os.environ["GREETING"])


    @app.timer_trigger(arg_name="timer", schedule="%APP_SCHEDULE%")
    def succeeds(timer: func.TimerRequest) -> None:
        assert os.environ["GREETING"] == "hello from settings"


    @app.timer_trigger(arg_name="timer", schedule="%APP_SCHEDULE%")
    def fails(timer: func.TimerRequest) -> None:
        raise RuntimeError("boom")
""")


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "function_app.py").write_text(APP_SOURCE)
    (tmp_path / "local.settings.json").write_text(
        json.dumps(
            {
                "IsEncrypted": False,
                "Values": {"GREETING": "hello from settings", "APP_SCHEDULE": "0 0 0 1 1 *"},
            }
        )
    )
    return tmp_path


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("GREETING", "APP_SCHEDULE")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.mark.parametrize(("name", "code"), [("succeeds", 0), ("fails", 1), ("missing", 2)])
def test_once_runs_one_timer_and_exits_with_its_outcome(app_dir, name, code):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--app-dir", str(app_dir), "--once", name],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == code, result.stderr


def test_cli_serves_with_settings_and_stops_cleanly_on_sigterm(app_dir, tmp_path):
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--app-dir", str(app_dir), "--port", "0"],
            env=_env(),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        assert wait_until(lambda: "Listening on" in out.read_text(), timeout=20), err.read_text()
        banner = out.read_text()
        assert "http GET /api/health (anonymous)" in banner
        assert "timer succeeds 0 0 0 1 1 *" in banner
        assert "not checked locally" in banner
        port = int(banner.rsplit("127.0.0.1:", 1)[1].split()[0])
        assert http("GET", f"http://127.0.0.1:{port}/api/health")[2] == b"hello from settings"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
