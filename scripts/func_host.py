"""Run the function app's own registered functions locally when Core Tools (`func`) is absent.

    python scripts/func_host.py [--port 7071] [--settings local.settings.json] [--app-dir .]
    python scripts/func_host.py --once mqtt_ingest      # run one timer function once, exit 0/1

A thin stand-in for `func start` (Azure Functions Core Tools, which cannot be installed where its
binary cannot be downloaded): it imports `function_app`, reads each registered function's trigger
metadata (the same `function.json` the real host indexes), serves the HTTP triggers on 127.0.0.1
under `/api` and fires the timer triggers on their NCRONTAB schedules. The decorated code is called
as-is. scripts/dev uses `func start` instead whenever `func` is on PATH. It reads the route templates
this app uses (literals, {name}, a trailing {*name}) and refuses others rather than guess.

Not mimicked (host behaviour, tested or documented elsewhere): function keys, the singleton
lease, `functionTimeout`, retries, extension bindings other than HTTP and timer, host.json
logging. What it reads is what azure-functions' own FunctionApp.get_functions() exposes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions.timer import TimerRequest
from croniter import croniter

log = logging.getLogger("func_host")

DEFAULT_PORT = 7071
DEFAULT_ROUTE_PREFIX = "api"  # host.json extensions.http.routePrefix default
PAST_DUE_AFTER = timedelta(seconds=1)
STOP_TIMEOUT_SECONDS = 5.0


class HostConfigError(Exception):
    """The app or its settings cannot be hosted (as the real host would refuse to start)."""


# --------------------------------------------------------------------------- settings


def load_local_settings(path: str | os.PathLike, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Export local.settings.json "Values" into `environ` (default os.environ) without overriding.

    Core Tools does the same: a variable already set in the environment wins, and it says so.
    Returns the values that were applied.
    """
    environ = os.environ if environ is None else environ
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("IsEncrypted"):
        raise HostConfigError(f"{path}: IsEncrypted is true; only Core Tools can decrypt it")
    applied: dict[str, str] = {}
    for key, value in (data.get("Values") or {}).items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        value = str(value)
        if key in environ:
            log.info("Skipping '%s' from local settings as it's already defined in the environment", key)
            continue
        environ[key] = value
        applied[key] = value
    return applied


def local_http_port(path: str | os.PathLike) -> int | None:
    """The "Host": {"LocalHttpPort": N} of a local.settings.json, which Core Tools uses as default port."""
    try:
        port = (json.loads(Path(path).read_text(encoding="utf-8")).get("Host") or {}).get("LocalHttpPort")
    except (OSError, ValueError):
        return None
    return int(port) if port else None


_PLACEHOLDER = re.compile(r"%([^%\s]+)%")


def resolve_placeholders(value: str, settings: Mapping[str, str]) -> str:
    """Replace `%NAME%` with the app setting NAME, as the host does for binding attributes."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise HostConfigError(f"'%{name}%' does not resolve to a value (app setting {name} is not set)")
        return settings[name]

    return _PLACEHOLDER.sub(setting, value)


# --------------------------------------------------------------------------- route templates
# The part of ASP.NET Core's route template syntax this app's routes use: literal segments (matched
# case-insensitively), {name} parameters, and a trailing {*catchall}. Anything else (constraints,
# optional or default values, segments mixing literals and parameters) is refused at start, so a
# route the real host would read differently never works here by accident: use `func start` for it.

# Route precedence, lower is more specific (ASP.NET's inbound precedence digits).
_RANK_LITERAL, _RANK_PARAM, _RANK_CATCHALL = 1, 4, 6
_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclasses.dataclass(frozen=True)
class RouteSegment:
    literal: str | None = None  # a literal segment, else a parameter
    param: str | None = None
    catch_all: bool = False

    @property
    def rank(self) -> int:
        if self.literal is not None:
            return _RANK_LITERAL
        return _RANK_CATCHALL if self.catch_all else _RANK_PARAM


@dataclasses.dataclass(frozen=True)
class RouteTemplate:
    """A compiled route template; `match(path)` returns route params or None."""

    template: str
    segments: tuple[RouteSegment, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        text = template.strip().strip("/")
        raw_segments = text.split("/") if text else []
        segments = []
        for index, raw in enumerate(raw_segments):
            if "{" not in raw and "}" not in raw:
                segments.append(RouteSegment(literal=raw))
                continue
            param = _PARAM.fullmatch(raw)
            if param is None:
                raise HostConfigError(
                    f"route {template!r}: {raw!r} is beyond what this local host reads "
                    "(literals, {name} and a trailing {*name}); run `func start` for it"
                )
            catch_all = bool(param.group(1))
            if catch_all and index != len(raw_segments) - 1:
                raise HostConfigError(f"route {template!r}: a catch-all parameter must be last")
            segments.append(RouteSegment(param=param.group(2), catch_all=catch_all))
        return cls(template, tuple(segments))

    @property
    def precedence(self) -> tuple[int, ...]:
        return tuple(segment.rank for segment in self.segments)

    def match(self, path: str) -> dict[str, str] | None:
        """Match a request path below the route prefix (percent-encoded, no query)."""
        stripped = path.strip("/")
        parts = stripped.split("/") if stripped else []
        values: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            if segment.catch_all:
                assert segment.param is not None
                rest = "/".join(unquote(p) for p in parts[index:])
                if rest:
                    values[segment.param] = rest
                return values
            if index >= len(parts):
                return None
            value = unquote(parts[index])
            if segment.literal is not None:
                if value.lower() != segment.literal.lower():
                    return None
            else:
                assert segment.param is not None
                if value == "":
                    return None
                values[segment.param] = value
        if len(parts) > len(self.segments):
            return None
        return values


# --------------------------------------------------------------------------- schedules


class CronSchedule:
    """An NCRONTAB schedule: 6 fields with seconds first, or 5 fields (minute first)."""

    def __init__(self, expression: str, tz: tzinfo = UTC):
        self.expression = expression
        self.tz = tz
        fields = expression.split()
        if len(fields) not in (5, 6):
            raise HostConfigError(f"schedule {expression!r}: expected 6 NCRONTAB fields (or 5)")
        try:
            self._next_after(datetime.now(UTC))
        except (ValueError, KeyError, TypeError) as exc:
            raise HostConfigError(f"schedule {expression!r} is not a valid NCRONTAB expression: {exc}") from exc

    def _next_after(self, moment: datetime) -> datetime:
        # NCrontab requires BOTH day-of-month and day-of-week to match (croniter's default is
        # Vixie cron's OR), hence day_or=False.
        it = croniter(self.expression, moment.astimezone(self.tz), second_at_beginning=True, day_or=False)
        return it.get_next(datetime).astimezone(UTC)

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment` (aware), in UTC."""
        return self._next_after(moment)

    def __str__(self) -> str:
        return self.expression


class IntervalSchedule:
    """A TimeSpan schedule ("hh:mm:ss" or "d.hh:mm:ss"): next = previous fire time + interval."""

    def __init__(self, expression: str, interval: timedelta):
        self.expression = expression
        self.interval = interval

    def next_after(self, moment: datetime) -> datetime:
        return moment.astimezone(UTC) + self.interval

    def __str__(self) -> str:
        return self.expression


_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})")


def parse_schedule(expression: str, tz: tzinfo = UTC) -> CronSchedule | IntervalSchedule:
    span = _TIMESPAN.fullmatch(expression.strip())
    if span:
        days, hours, minutes, seconds = (int(g or 0) for g in span.groups())
        interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        if interval <= timedelta(0):
            raise HostConfigError(f"schedule {expression!r}: the interval must be positive")
        return IntervalSchedule(expression, interval)
    return CronSchedule(expression.strip(), tz)


def schedule_time_zone(settings: Mapping[str, str]) -> tzinfo:
    """UTC unless WEBSITE_TIME_ZONE names an IANA zone (what Linux plans accept)."""
    name = settings.get("WEBSITE_TIME_ZONE") or ""
    if not name:
        return UTC
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError: e.g. a Windows zone name
        log.warning("WEBSITE_TIME_ZONE=%r is not an IANA zone; schedules use UTC", name)
        return UTC


# --------------------------------------------------------------------------- indexing


@dataclasses.dataclass
class HttpFunction:
    name: str
    route: RouteTemplate | None
    raw_route: str
    methods: frozenset[str] | None  # None: every method
    auth_level: str
    trigger_arg: str
    user_function: Callable[..., Any]
    error: str | None = None


@dataclasses.dataclass
class TimerFunction:
    name: str
    raw_schedule: str
    schedule: CronSchedule | IntervalSchedule | None
    run_on_startup: bool
    trigger_arg: str
    user_function: Callable[..., Any]
    error: str | None = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    last: datetime | None = None
    next: datetime | None = None


@dataclasses.dataclass
class SkippedFunction:
    name: str
    reason: str


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _trigger_dict(function: Any) -> dict[str, Any]:
    """The trigger binding as plain JSON values.

    get_function_json() is what the worker sends to the host, with enums already rendered
    (authLevel "FUNCTION", methods ["GET"]); fall back to the raw dicts for older libraries.
    """
    bindings: list[dict[str, Any]] = []
    if hasattr(function, "get_function_json"):
        bindings = json.loads(function.get_function_json()).get("bindings", [])
    elif hasattr(function, "get_bindings_dict"):
        bindings = function.get_bindings_dict().get("bindings", [])
    for binding in bindings:
        if str(_enum_value(binding.get("type", ""))).endswith("Trigger"):
            return {
                k: (_enum_value(v) if not isinstance(v, list) else [_enum_value(i) for i in v])
                for k, v in binding.items()
            }
    trigger = function.get_trigger()
    return {k: _enum_value(v) for k, v in trigger.get_dict_repr().items()} if trigger else {}


def app_functions(app: Any) -> list[Any]:
    """app.get_functions(), callable more than once.

    azure-functions 1.2x records names in `app.functions_bindings` on every get_functions()
    call, so a second call on the same app raises "does not have a unique function name".
    Clearing it first keeps the duplicate-name check meaningful for this call.
    """
    if getattr(app, "functions_bindings", None):
        app.functions_bindings = None
    return list(app.get_functions())


def _is_disabled(name: str, settings: Mapping[str, str]) -> bool:
    # The host honours AzureWebJobs.<name>.Disabled (and the env-var-safe __ spelling).
    for key in (f"AzureWebJobs.{name}.Disabled", f"AzureWebJobs__{name}__Disabled"):
        if settings.get(key, "").strip().lower() in ("1", "true"):
            return True
    return False


def index_functions(
    app: Any, settings: Mapping[str, str]
) -> tuple[list[HttpFunction], list[TimerFunction], list[SkippedFunction]]:
    http_functions, timers, skipped = [], [], []
    tz = schedule_time_zone(settings)
    for function in app_functions(app):
        name = function.get_function_name()
        trigger = _trigger_dict(function)
        kind = trigger.get("type")
        if _is_disabled(name, settings):
            skipped.append(SkippedFunction(name, "disabled by app setting"))
            continue
        user_function = function.get_user_function()
        if kind == "httpTrigger":
            raw_route = str(trigger.get("route") or name)
            route, error = None, None
            try:
                route = RouteTemplate.parse(resolve_placeholders(raw_route, settings))
            except HostConfigError as exc:
                error = f"http {name}: {exc}"
            methods = trigger.get("methods")
            http_functions.append(
                HttpFunction(
                    name=name,
                    route=route,
                    raw_route=raw_route,
                    methods=frozenset(str(m).upper() for m in methods) if methods else None,
                    auth_level=str(trigger.get("authLevel") or "function").lower(),
                    trigger_arg=trigger.get("name", "req"),
                    user_function=user_function,
                    error=error,
                )
            )
        elif kind == "timerTrigger":
            raw_schedule = str(trigger.get("schedule", ""))
            schedule, error = None, None
            try:
                schedule = parse_schedule(resolve_placeholders(raw_schedule, settings), tz)
            except HostConfigError as exc:
                error = f"timer {name}: {exc}"
            timers.append(
                TimerFunction(
                    name=name,
                    raw_schedule=raw_schedule,
                    schedule=schedule,
                    run_on_startup=bool(trigger.get("runOnStartup")),
                    trigger_arg=trigger.get("name", "timer"),
                    user_function=user_function,
                    error=error,
                )
            )
        else:
            skipped.append(SkippedFunction(name, f"{kind} triggers are not supported by func_host"))
    return http_functions, timers, skipped


# --------------------------------------------------------------------------- invocation


class _LocalContext(func.Context):
    """The `context` argument a function may declare; the worker passes one per invocation."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str):
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._thread_local_storage = threading.local()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local_storage

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None


def _call_user_function(
    user_function: Callable[..., Any], trigger_arg: str, trigger_value: Any, name: str, invocation_id: str
) -> Any:
    kwargs: dict[str, Any] = {trigger_arg: trigger_value}
    parameters = inspect.signature(user_function).parameters
    if "context" in parameters and trigger_arg != "context":
        directory = os.path.dirname(inspect.getsourcefile(user_function) or "") or os.getcwd()
        kwargs["context"] = _LocalContext(invocation_id, name, directory)
    if inspect.iscoroutinefunction(user_function):
        # The worker runs async functions on its event loop; one loop per call is enough here.
        return asyncio.run(user_function(**kwargs))
    return user_function(**kwargs)


@dataclasses.dataclass
class Outcome:
    ok: bool
    result: Any
    invocation_id: str


@dataclasses.dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _json_reply(status: int, payload: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> Reply:
    return Reply(status, [("Content-Type", "application/json; charset=utf-8"), *headers], json.dumps(payload).encode())


_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def reply_from_response(response: Any) -> Reply:
    """Turn a function's return value into status, headers, body, as the worker's converter does."""
    if isinstance(response, str):
        # A str $return becomes a 200 with that body (approximation of the host's string datum).
        return Reply(200, [("Content-Type", "text/plain; charset=utf-8")], response.encode())
    if response is None:
        # Local approximation: a function that returns nothing produced no content.
        return Reply(204, [], b"")
    if not isinstance(response, func.HttpResponse):
        raise TypeError(f"HTTP function returned {type(response).__name__}, expected func.HttpResponse")
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP]
    if not any(k.lower() == "content-type" for k, _ in headers):
        # Same rule as azure.functions.http.HttpResponseConverter.encode.
        mimetype = response.mimetype
        content_type = f"{mimetype}; charset={response.charset}" if mimetype.startswith("text/") else mimetype
        headers.append(("Content-Type", content_type))
    return Reply(int(response.status_code), headers, response.get_body() or b"")


# --------------------------------------------------------------------------- the host


class LocalHost:
    """Hosts one FunctionApp: HTTP triggers via `serve(port)`, timers via `start_timers()`.

    Give it the app object directly (tests do); `settings` defaults to os.environ and is where
    `%NAME%` placeholders in schedules and routes are resolved.
    """

    def __init__(
        self,
        app: Any,
        *,
        settings: Mapping[str, str] | None = None,
        route_prefix: str = DEFAULT_ROUTE_PREFIX,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
    ):
        self.settings = os.environ if settings is None else settings
        self.route_prefix = route_prefix.strip("/")
        self.stop_timeout = stop_timeout
        self.http_functions, self.timers, self.skipped = index_functions(app, self.settings)
        self._timers_by_name = {t.name: t for t in self.timers}
        self._functions_by_name = {f.name.lower(): f for f in [*self.http_functions, *self.timers]}
        # Most specific route first (ASP.NET precedence); registration order breaks ties.
        self._routes = sorted((f for f in self.http_functions if f.route is not None), key=lambda f: f.route.precedence)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._timer_threads: list[threading.Thread] = []
        self.port: int | None = None

    # -- lifecycle

    def serve(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> int:
        """Start serving HTTP triggers in a background thread; returns the bound port (0 picks one)."""
        errors = [f.error for f in self.http_functions if f.error]
        if errors:
            raise HostConfigError("; ".join(errors))
        if self._server is not None:
            raise RuntimeError("already serving")
        server = _Server((host, port), _Handler)
        server.local_host = self
        self._server = server
        self.port = server.server_address[1]
        self._server_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="func_host-http", daemon=True
        )
        self._server_thread.start()
        return self.port

    def start_timers(self) -> None:
        """Start one scheduler thread per timer function."""
        errors = [t.error for t in self.timers if t.error]
        if errors:
            raise HostConfigError("; ".join(errors))
        for timer in self.timers:
            thread = threading.Thread(
                target=self._timer_loop, args=(timer,), name=f"func_host-timer-{timer.name}", daemon=True
            )
            self._timer_threads.append(thread)
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop serving and scheduling; wait up to `timeout` s for in-flight timer runs, then abandon them.

        Every thread is a daemon, so an abandoned run never blocks interpreter exit.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(timeout)
        deadline = time.monotonic() + timeout
        for thread in self._timer_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("Abandoning in-flight run in %s after %.1fs", thread.name, timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def __enter__(self) -> LocalHost:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def banner(self) -> list[str]:
        lines = []
        for f in self.http_functions:
            methods = ",".join(sorted(f.methods)) if f.methods else "*"
            path = "/" + "/".join(p for p in (self.route_prefix, f.route.template if f.route else f.raw_route) if p)
            lines.append(f"http {methods} {path} ({f.auth_level})")
        for t in self.timers:
            schedule = str(t.schedule) if t.schedule else f"{t.raw_schedule} [unresolved]"
            lines.append(f"timer {t.name} {schedule}" + (" (runOnStartup)" if t.run_on_startup else ""))
        for s in self.skipped:
            lines.append(f"skipped {s.name}: {s.reason}")
        return lines

    # -- timers

    def run_timer(self, name: str, past_due: bool = False) -> bool:
        """Invoke one timer function now (waiting for a run already in flight); True if it succeeded."""
        timer = self._timers_by_name.get(name)
        if timer is None:
            raise KeyError(name)
        with timer.lock:
            return self._invoke_timer(timer, past_due=past_due, reason="manual")

    def _timer_loop(self, timer: TimerFunction) -> None:
        assert timer.schedule is not None
        try:
            if timer.run_on_startup and not self.stopping:
                fired_at = datetime.now(UTC)
                with timer.lock:
                    self._invoke_timer(timer, past_due=False, reason="runOnStartup")
                timer.next = timer.schedule.next_after(fired_at)
            else:
                timer.next = timer.schedule.next_after(datetime.now(UTC))
            while not self.stopping:
                due = timer.next
                # Wait for the occurrence; loop because Event.wait runs on the monotonic clock.
                while not self.stopping:
                    remaining = (due - datetime.now(UTC)).total_seconds()
                    if remaining <= 0:
                        break
                    self._stopping.wait(min(remaining, 1.0))
                if self.stopping:
                    break
                fired_at = datetime.now(UTC)
                # A run that starts late (after a previous run overran the interval, or after the
                # process was suspended) is flagged past due. The real host flags only the
                # occurrences its schedule monitor finds missed at startup.
                past_due = fired_at - due > PAST_DUE_AFTER
                with timer.lock:
                    self._invoke_timer(timer, past_due=past_due, reason=f"Timer fired at {fired_at.isoformat()}")
                # As the host's TimerListener: the next occurrence is computed from the time this
                # one fired, and the wait for it starts only after the run completed, so runs of
                # one timer never overlap and missed occurrences collapse into one late run.
                timer.last = due
                timer.next = timer.schedule.next_after(max(fired_at, due))
        except Exception:  # a broken schedule must not kill the host silently
            log.exception("Timer scheduler for '%s' stopped", timer.name)

    def _invoke_timer(self, timer: TimerFunction, *, past_due: bool, reason: str) -> bool:
        status = None
        if timer.last or timer.next:
            status = {
                "Last": timer.last.isoformat() if timer.last else None,
                "Next": timer.next.isoformat() if timer.next else None,
                "LastUpdated": datetime.now(UTC).isoformat(),
            }
        request = TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})
        outcome = self._invoke(
            timer.name, timer.user_function, timer.trigger_arg, request, f"{reason}{', past due' if past_due else ''}"
        )
        return outcome.ok

    def _invoke(
        self, name: str, user_function: Callable[..., Any], trigger_arg: str, value: Any, reason: str
    ) -> Outcome:
        """Call a user function with Core Tools-style start/end lines; exceptions are logged, not raised."""
        invocation_id = str(uuid.uuid4())
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", name, reason, invocation_id)
        started = time.perf_counter()
        try:
            result = _call_user_function(user_function, trigger_arg, value, name, invocation_id)
        except Exception as exc:
            elapsed = (time.perf_counter() - started) * 1000
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)", name, invocation_id, elapsed, exc_info=exc
            )
            return Outcome(False, None, invocation_id)
        elapsed = (time.perf_counter() - started) * 1000
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", name, invocation_id, elapsed)
        return Outcome(True, result, invocation_id)

    # -- HTTP

    def dispatch(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, base_url: str = "http://127.0.0.1"
    ) -> Reply:
        """Route one request to its function: the whole HTTP behaviour, without sockets."""
        method = method.upper()
        parts = urlsplit(target)
        path = parts.path or "/"
        if path.lower().startswith("/admin/functions/"):
            return self._admin_invoke(method, unquote(path[len("/admin/functions/") :]).strip("/"))
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        if prefix:
            if path.lower() == prefix.lower() or path.lower().startswith(prefix.lower() + "/"):
                path = path[len(prefix) :]
            else:
                return _json_reply(404, {"error": "not found"})

        allowed: set[str] = set()
        for function in self._routes:
            route_params = function.route.match(path)
            if route_params is None:
                continue
            if function.methods is not None and method not in function.methods:
                allowed |= function.methods
                continue
            return self._invoke_http(function, method, target, parts, headers, body, route_params, base_url)
        if allowed:
            return _json_reply(405, {"error": "method not allowed"}, [("Allow", ", ".join(sorted(allowed)))])
        return _json_reply(404, {"error": "not found"})

    def _invoke_http(
        self,
        function: HttpFunction,
        method: str,
        target: str,
        parts: Any,
        headers: Mapping[str, str],
        body: bytes,
        route_params: dict[str, str],
        base_url: str,
    ) -> Reply:
        # Repeated query keys are joined with "," (how the host flattens ASP.NET StringValues).
        params: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        request = func.HttpRequest(
            method,
            base_url.rstrip("/") + target,
            headers=dict(headers),
            params=params,
            route_params=route_params,
            body=body,
        )
        # Function keys are NOT checked, matching Core Tools: "When running functions locally,
        # authorization is disabled regardless of the specified authorization level setting."
        # The authLevel is enforced only once deployed to Azure.
        outcome = self._invoke(
            function.name, function.user_function, function.trigger_arg, request, f"HTTP {method} {parts.path}"
        )
        if not outcome.ok:
            return _json_reply(500, {"error": "internal server error", "invocationId": outcome.invocation_id})
        try:
            return reply_from_response(outcome.result)
        except Exception:
            log.exception("Function '%s' returned a value that is not an HTTP response", function.name)
            return _json_reply(500, {"error": "internal server error"})

    def _admin_invoke(self, method: str, name: str) -> Reply:
        """POST /admin/functions/<name>: trigger a non-HTTP function, as the host's admin API does."""
        function = self._functions_by_name.get(name.lower())
        if function is None or not isinstance(function, TimerFunction):
            return _json_reply(404, {"error": "not found"})
        if method != "POST":
            return _json_reply(405, {"error": "method not allowed"}, [("Allow", "POST")])
        threading.Thread(
            target=self.run_timer, args=(function.name,), name=f"func_host-admin-{function.name}", daemon=True
        ).start()
        return Reply(202, [], b"")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a hung request must not block stop()
    local_host: LocalHost


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "func_host"
    server: _Server

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "Bad request body")
            return
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        host_header = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        try:
            reply = self.server.local_host.dispatch(self.command, self.path, headers, body, f"http://{host_header}")
        except Exception:
            log.exception("func_host failed to handle %s %s", self.command, self.path)
            reply = _json_reply(500, {"error": "internal server error"})
        self.send_response(reply.status)
        for key, value in reply.headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)


# --------------------------------------------------------------------------- command line


def find_app(module: Any) -> Any:
    """The module's FunctionApp, found by type as the worker does (the name need not be `app`)."""
    app = getattr(module, "app", None)
    if isinstance(app, func.FunctionRegister):
        return app
    for value in vars(module).values():
        if isinstance(value, func.FunctionRegister):
            return value
    raise HostConfigError(f"{module.__file__} defines no azure.functions.FunctionApp")


def load_app(app_dir: Path) -> Any:
    script = os.environ.get("PYTHON_SCRIPT_FILE_NAME", "function_app.py")
    if not (app_dir / script).is_file():
        raise HostConfigError(f"{app_dir / script} not found")
    sys.path.insert(0, str(app_dir))
    try:
        module = importlib.import_module(Path(script).stem)
    except Exception as exc:
        # The real host reports this as an indexing failure and serves nothing; so do we.
        log.error("Importing %s failed", app_dir / script, exc_info=exc)
        raise HostConfigError(f"cannot import {script}: {exc}") from exc
    return find_app(module)


def route_prefix_from_host_json(app_dir: Path) -> str:
    try:
        host = json.loads((app_dir / "host.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_ROUTE_PREFIX
    prefix = ((host.get("extensions") or {}).get("http") or {}).get("routePrefix")
    return DEFAULT_ROUTE_PREFIX if prefix is None else str(prefix)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the app's registered Azure Functions locally without Core Tools.")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"HTTP port (default: Host.LocalHttpPort from the settings, else {DEFAULT_PORT}; 0 = any)",
    )
    parser.add_argument(
        "--settings",
        default=None,
        help="local.settings.json to export (default: <app-dir>/local.settings.json if present)",
    )
    parser.add_argument("--app-dir", default=".", help="directory holding function_app.py (default: .)")
    parser.add_argument("--once", metavar="TIMER_NAME", help="run one timer function once and exit 0/1")
    parser.add_argument("--no-timers", action="store_true", help="serve HTTP only")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging, incl. an access log")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app_dir = Path(args.app_dir).resolve()
    settings_path = Path(args.settings).resolve() if args.settings else app_dir / "local.settings.json"
    try:
        if settings_path.is_file():
            applied = load_local_settings(settings_path)
            log.info("Loaded %d settings from %s", len(applied), settings_path)
        elif args.settings:
            raise HostConfigError(f"settings file {settings_path} not found")
        # The worker runs with the app root as working directory.
        os.chdir(app_dir)
        host = LocalHost(load_app(app_dir), route_prefix=route_prefix_from_host_json(app_dir))
    except HostConfigError as exc:
        log.error("%s", exc)
        return 2

    if args.once:
        if args.once not in {t.name for t in host.timers}:
            log.error(
                "No timer function named %r (timers: %s)", args.once, ", ".join(t.name for t in host.timers) or "none"
            )
            return 2
        return 0 if host.run_timer(args.once) else 1

    stop_requested = threading.Event()
    received: list[int] = []

    def request_stop(signum: int, _frame: Any) -> None:
        # Only flag it here; the main loop below logs and stops the host.
        received.append(signum)
        stop_requested.set()
        # A second Ctrl-C / SIGTERM takes the default, immediate path.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    port = args.port if args.port is not None else (local_http_port(settings_path) or DEFAULT_PORT)
    try:
        bound = host.serve(port)
        if not args.no_timers:
            host.start_timers()
    except (HostConfigError, OSError) as exc:
        log.error("%s", exc)
        host.stop(0)
        return 2

    print("func_host: Core Tools not found; running the app's functions with scripts/func_host.py", flush=True)
    print("Function keys are not checked locally (as with Core Tools); the auth level is shown per route.", flush=True)
    print("Functions:", flush=True)
    for line in host.banner():
        print(f"  {line}", flush=True)
    print(f"Listening on http://127.0.0.1:{bound}", flush=True)
    try:
        while not stop_requested.wait(0.5):
            pass
        log.info("Received %s, stopping", signal.Signals(received[0]).name)
    finally:
        host.stop()
    log.info("Stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
