"""The dashboard's static files (dashboard/ in the repository, shipped with the app) and the headers
they are served with: one origin with the API, so the page needs no CORS and its tokens go nowhere
else.

Only files under dashboard/ with a known type are served; a path that climbs out, names a hidden
file or a tool file (dashboard/vendor_assets.py) is not found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

ROOT = Path(__file__).resolve().parents[2] / "dashboard"
INDEX = "index.html"

# No inline script or style anywhere: the page's code is its own files, so an injected <script> or
# on*= attribute in data rendered by mistake would still not run. uPlot sizes its elements through
# the CSSOM (element.style), which style-src does not govern; its canvas needs no img-src.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    headers: dict[str, str]


def _cache_control(relative: str) -> str:
    # Vendored files change only with package-lock.json; the page's own files must be re-checked so
    # a deployment is seen at the next load.
    if relative.startswith("vendor/"):
        return "public, max-age=86400"
    return "no-cache"


def find_asset(path: str, root: Path = ROOT) -> Asset | None:
    """The file at `path` (relative to the dashboard, "" meaning the page), or None."""
    relative = path.strip("/") or INDEX
    parts = PurePosixPath(relative).parts
    if not parts or not all(_SAFE_SEGMENT.fullmatch(part) for part in parts) or ".." in parts:
        return None
    content_type = CONTENT_TYPES.get(PurePosixPath(relative).suffix.lower())
    if content_type is None:
        return None
    file = root.joinpath(*parts)
    try:
        if not file.resolve().is_relative_to(root.resolve()) or not file.is_file():
            return None
        body = file.read_bytes()
    except OSError:
        return None
    return Asset(body, content_type, {**SECURITY_HEADERS, "Cache-Control": _cache_control(relative)})


def refresh_interval_s(schedule: str) -> int:
    """How often the page re-reads readings: the drain's cadence, from its NCRONTAB schedule
    ("*/10 * * * * *" every 10 s, "0 */1 * * * *" every minute); 60 s when the schedule is
    anything less regular. New readings cannot appear faster than the drain stores them."""
    fields = schedule.split()
    if len(fields) != 6:
        return 60
    second, minute = fields[0], fields[1]
    step = re.fullmatch(r"\*/(\d+)", second)
    if step and minute == "*":
        return max(1, int(step.group(1)))
    if second == "*" and minute == "*":
        return 1
    step = re.fullmatch(r"\*/(\d+)", minute)
    if re.fullmatch(r"\d+", second) and step:
        return 60 * max(1, int(step.group(1)))
    return 60


def offered_operations(openapi: Mapping[str, Any]) -> list[str]:
    """ "METHOD /path" of every operation in the API's OpenAPI document: the page shows a view only
    where its endpoints exist (the whole document is ~140 kB; this list is ~1 kB)."""
    methods = {"get", "post", "put", "patch", "delete"}
    return sorted(
        f"{method.upper()} {path}"
        for path, item in openapi.get("paths", {}).items()
        for method in item
        if method in methods
    )


def page_config(
    ingest_schedule: str,
    ca_available: bool,
    system_ca: bool,
    external_sign_in: bool,
    operations: list[str],
    external_sign_in_url: str = "",
    broker_host: str = "",
    broker_port: int = 8883,
) -> Asset:
    """config.json: what the page needs to know of this deployment (nothing secret). system_ca: the
    broker's certificate is publicly trusted (no MQTT_CA_FILE, e.g. Let's Encrypt), so a device's own CA
    store verifies it and the page shows examples without a CA file. external_sign_in_url: the
    provider's sign-in, the only way a token in the page's URL is taken (as the answer to it).
    broker_host and broker_port: where devices connect (what every device's settings page is given),
    for the device page's "what to type into the device"."""
    body = json.dumps(
        {
            "refresh_s": refresh_interval_s(ingest_schedule),
            "ca_url": "broker-ca.pem" if ca_available else None,
            "system_ca": system_ca,
            "external_sign_in": external_sign_in,
            "external_sign_in_url": external_sign_in_url or None,
            "broker_host": broker_host or None,
            "broker_port": broker_port,
            "operations": operations,
        }
    ).encode()
    return Asset(body, "application/json", {**SECURITY_HEADERS, "Cache-Control": "no-cache"})


@cache
def _read_ca(path: str) -> bytes | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return data if data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----") else None


def broker_ca(ca_file: str | None) -> Asset | None:
    """The broker's CA certificate (public) for devices to verify it; never a key, whatever the file holds."""
    data = _read_ca(ca_file) if ca_file else None
    if data is None or b"PRIVATE KEY" in data:
        return None
    return Asset(
        data,
        "application/x-pem-file",
        {
            **SECURITY_HEADERS,
            "Cache-Control": "no-cache",
            "Content-Disposition": 'attachment; filename="broker-ca.pem"',
        },
    )
