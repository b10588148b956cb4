"""Signed webhooks for alert events: target checks, secrets, signing, and the outbox's delivery.

Deliveries are enqueued by the database (0015's trigger on alert_events), in the transaction that
changed the event. deliver_due() sends what is due: tenants come from a SECURITY DEFINER function
(ids only) and each tenant's deliveries are claimed as the app role under RLS, one at a time, with a
lease (next_attempt_at moved past the attempt), so overlapping runs never send one twice; the HTTP
call happens outside any transaction, then the attempt is recorded and the delivery settled
(delivered, retried after an exponential backoff with jitter, or given up).

Every tenant has one lane on a small thread pool, sending one delivery at a time, in turns of BATCH
deliveries: a slow receiver holds up only its own tenant, a target that failed once is passed over
for the rest of the run, and a tenant with a large backlog takes turns with the others.

Server-side request forgery: a target must be https (unless WEBHOOK_ALLOW_HTTP) and, unless
WEBHOOK_ALLOW_PRIVATE_TARGETS, every address its host resolves to must be global. This is checked
when the target is created and again at every attempt, which connects to the very address it
checked (TLS still verifies the certificate against the host name), so a name that re-resolves to
an internal address between check and connect (DNS rebinding) gains nothing. Redirects are never
followed.

Secrets are `whsec_` + 32 random bytes (base64url). The database keeps them only Fernet-encrypted,
with a key derived (HKDF, its own label) from AUTH_JWT_SECRET: rotating that secret makes the stored
webhook secrets undecryptable, and their deliveries fail with "secret unavailable" until each
target's secret is rotated (POST .../rotate-secret).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cryptography.fernet import Fernet, InvalidToken

from shared.core import observability
from shared.core.db import DictPool, tenant_transaction
from shared.core.exceptions import UnsafeTarget
from shared.core.keys import derived_fernet
from shared.core.settings import Settings
from shared.core.sql import QUERIES, one_row

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
MAX_TARGETS_PER_RULE = 5
RESPONSE_EXCERPT_BYTES = 4096
SIGNATURE_VERSION = "v1"
USER_AGENT = "mqtt-saas-webhooks/1"
# Retries: 30 s after the first failure, doubling, at most an hour, each +-20 % so receivers that
# failed together are not retried together.
BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 3600.0
BACKOFF_JITTER = 0.2
# A lane's turn: this many deliveries, then the tenant goes to the back of the queue.
BATCH = 20
# Delivered and failed deliveries (with their attempts) are kept this long for debugging receivers.
RETENTION_DAYS = 30
PRUNE_BATCH = 5000
WORKERS = 4
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Cloud platforms' own endpoints, reachable from inside their networks. ipaddress calls Azure's
# 168.63.129.16 (WireServer: the VM agent's channel, platform DNS and health probes) "global", so it
# is named here; the others already fall in a range refused anyway (link-local, unique-local, CGNAT)
# and are named so that a test holds each to it.
PLATFORM_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "168.63.129.16/32",  # Azure WireServer
        "169.254.169.254/32",  # instance metadata: Azure IMDS, AWS, Google Cloud, Oracle, DigitalOcean
        "169.254.169.253/32",  # AWS Route 53 resolver
        "169.254.169.123/32",  # AWS time sync
        "169.254.170.2/32",  # AWS ECS task metadata
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "fd00:ec2::253/128",  # AWS resolver over IPv6
        "fd00:ec2::123/128",  # AWS time sync over IPv6
        "fd20:ce::254/128",  # Google Cloud metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
    )
)
_JITTER = random.Random()


# -- secrets -----------------------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _fernet(settings: Settings) -> Fernet:
    return derived_fernet(settings.auth_jwt_secret.get_secret_value(), "mqtt-saas webhook secrets v1")


def encrypt_secret(settings: Settings, secret: str) -> str:
    return _fernet(settings).encrypt(secret.encode()).decode()


def decrypt_secret(settings: Settings, token: str) -> str | None:
    """None when the key changed since (AUTH_JWT_SECRET was rotated): the target needs a new secret."""
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken:
        return None


# -- signing -----------------------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=<hex HMAC-SHA256 over "{timestamp}.{body}">`, keyed with the whole secret string (UTF-8)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def signed_headers(secret: str, delivery_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "Webhook-Id": delivery_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign(secret, timestamp, body),
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: int = 300, now: float | None = None
) -> bool:
    """The reference check a receiver makes: the timestamp within tolerance_s of now (a replayed old
    request fails), and one of the header's space-separated signatures equal, compared in constant time."""
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        timestamp = int(lowered["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in lowered.get("webhook-signature", "").split())


def body_of(delivery_id: str, payload: Mapping[str, Any]) -> bytes:
    """The request body: the payload fixed at enqueue time, with the delivery's id; the same bytes on every retry."""
    return json.dumps({"id": delivery_id, **payload}, sort_keys=True, separators=(",", ":")).encode()


# -- targets -----------------------------------------------------------------------------------------------------


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet: not private (RFC 1918, ULA), loopback, link-local
    (the 169.254.169.254 metadata endpoint), shared (CGNAT), multicast, reserved or unspecified, nor a
    cloud platform's own endpoint (PLATFORM_NETWORKS), also when wrapped in IPv6 (IPv4-mapped,
    NAT64, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and not any(address in network for network in PLATFORM_NETWORKS)
    )


def _split(url: str, settings: Settings) -> tuple[SplitResult, str, int]:
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeTarget("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeTarget("the URL cannot be parsed") from None
    allowed = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in allowed:
        raise UnsafeTarget(
            "the URL must use https" if not settings.webhook_allow_http else "the URL must use https or http"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeTarget("the URL must not carry a user name or password")
    if parts.fragment:
        raise UnsafeTarget("the URL must not have a fragment")
    host = parts.hostname
    if not host:
        raise UnsafeTarget("the URL has no host")
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to now (raises socket.gaierror when it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _check_addresses(addresses: list[str], settings: Settings) -> None:
    if settings.webhook_allow_private_targets:
        return
    for address in addresses:
        if not is_public_address(ipaddress.ip_address(address.split("%", 1)[0])):
            raise UnsafeTarget("the URL's host is, or resolves to, a private, loopback or link-local address")


def check_target(url: str, settings: Settings) -> list[str]:
    """Refuses (UnsafeTarget) a URL the app must not call; returns warnings for one it may call later
    (a host that does not resolve now is accepted: it is checked again at every delivery)."""
    _, host, port = _split(url, settings)
    literal = _literal_address(host)
    if literal is not None:
        _check_addresses([str(literal)], settings)
        return []
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError):
        return [f"the host {host!r} does not resolve now; deliveries fail until it does"]
    _check_addresses(addresses, settings)
    return []


# -- one attempt -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above, over TLS: SNI and certificate verification use the URL's host, not the address."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


@functools.lru_cache(maxsize=4)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    # Loading the trust store costs milliseconds; a context is safe to share between threads.
    return ssl.create_default_context(cafile=ca_file)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, UnsafeTarget):
        return f"refused: {exc}"
    if isinstance(exc, socket.gaierror):
        return "the host does not resolve"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not valid for the host: {exc.verify_message}"[:200]
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason}"[:200]
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset by the receiver"
    if isinstance(exc, http.client.HTTPException):
        return f"invalid HTTP answer ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"[:200]


def post(
    url: str, body: bytes, headers: Mapping[str, str], settings: Settings, ca_file: str | None = None
) -> AttemptResult:
    """One POST, checked again and pinned to the checked address, cut at WEBHOOK_TIMEOUT_S as a whole
    (a receiver trickling its answer byte by byte is cut too). Never raises for the receiver's doing."""
    started_at = datetime.now(UTC)
    started = time.monotonic()
    timeout_s = settings.webhook_timeout_s
    conn: http.client.HTTPConnection | None = None
    watchdog: threading.Timer | None = None
    status: int | None = None
    excerpt: str | None = None
    error: str | None = None
    try:
        parts, host, port = _split(url, settings)
        literal = _literal_address(host)
        addresses = [str(literal)] if literal is not None else resolve(host, port)
        _check_addresses(addresses, settings)
        for index, address in enumerate(addresses):
            remaining = max(0.05, timeout_s - (time.monotonic() - started))
            conn = (
                _PinnedHTTPSConnection(host, port, address, remaining, _tls_context(ca_file))
                if parts.scheme == "https"
                else _PinnedHTTPConnection(host, port, address, remaining)
            )
            try:
                conn.connect()
                break
            except ssl.SSLError:
                raise
            except OSError:
                # an unreachable address (often IPv6 without a route): the next checked one, while time is left
                conn.close()
                if index == len(addresses) - 1 or time.monotonic() - started >= timeout_s:
                    raise
        if conn is None:
            raise OSError("the host resolves to no address")
        watchdog = threading.Timer(max(0.0, timeout_s - (time.monotonic() - started)), _abort, (conn,))
        watchdog.daemon = True
        watchdog.start()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        )
        response = conn.getresponse()
        status = response.status
        excerpt = response.read(RESPONSE_EXCERPT_BYTES).decode("utf-8", "replace").replace("\x00", "\ufffd")
    except (OSError, UnsafeTarget, http.client.HTTPException, UnicodeError, ValueError) as exc:
        elapsed = time.monotonic() - started
        cut = elapsed >= timeout_s * 0.98 and not isinstance(exc, UnsafeTarget | socket.gaierror)
        error = f"no answer within {timeout_s:g} s" if cut else _describe(exc, timeout_s)
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if conn is not None:
            conn.close()
    if status is not None and error is None and not 200 <= status < 300:
        error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    return AttemptResult(started_at, int((time.monotonic() - started) * 1000), status, error, excerpt)


def _abort(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to cut
            sock.shutdown(socket.SHUT_RDWR)


# -- delivery ----------------------------------------------------------------------------------------------------


def retry_delay_s(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after attempt number `attempt` failed."""
    base = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(attempt - 1, 30))
    jitter = (rng or _JITTER).uniform(-BACKOFF_JITTER, BACKOFF_JITTER)
    return min(BACKOFF_MAX_S, base * (1 + jitter))


@dataclass
class DeliveryReport:
    tenants: int = 0
    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    lane_errors: list[str] = field(default_factory=list)
    pruned: int = 0
    duration_ms: float = 0.0

    def add(self, other: DeliveryReport) -> None:
        self.attempted += other.attempted
        self.delivered += other.delivered
        self.retrying += other.retrying
        self.failed += other.failed


def tenants_with_due_deliveries(pool: DictPool) -> list[str]:
    with pool.connection() as conn:
        return [
            str(row["tenant_id"]) for row in conn.execute(QUERIES["webhook_tenants_with_due_deliveries"]).fetchall()
        ]


def _lease_s(settings: Settings) -> float:
    # Long enough that an attempt (resolve, connect, answer) and its recording end well inside it;
    # a run that dies mid-attempt leaves the delivery to be retried once the lease ends.
    return 2 * settings.webhook_timeout_s + 60


def _claim(pool: DictPool, settings: Settings, tenant_id: str, skip: list[uuid.UUID]) -> dict[str, Any] | None:
    with tenant_transaction(pool, tenant_id) as conn:
        return conn.execute(
            QUERIES["claim_webhook_delivery"],
            {"tenant_id": tenant_id, "lease_s": _lease_s(settings), "skip_webhooks": skip},
        ).fetchone()


def _settle(
    pool: DictPool,
    settings: Settings,
    tenant_id: str,
    claimed: Mapping[str, Any],
    result: AttemptResult,
    rng: random.Random | None,
) -> str:
    attempt = int(claimed["attempts"]) + 1
    if result.ok:
        state = "delivered"
    elif result.status_code == 410 or attempt >= settings.webhook_max_attempts:
        state = "failed"
    else:
        state = "pending"
    with tenant_transaction(pool, tenant_id) as conn:
        conn.execute(
            QUERIES["insert_webhook_attempt"],
            {
                "tenant_id": tenant_id,
                "delivery_id": claimed["id"],
                "attempt": attempt,
                "started_at": result.started_at,
                "duration_ms": result.duration_ms,
                "status_code": result.status_code,
                "error": result.error,
                "response_excerpt": result.excerpt,
            },
        )
        conn.execute(
            QUERIES["settle_webhook_delivery"],
            {
                "tenant_id": tenant_id,
                "delivery_id": claimed["id"],
                "attempt": attempt,
                "state": state,
                "status_code": result.status_code,
                "error": result.error,
                "retry_in_s": retry_delay_s(attempt, rng),
            },
        )
        if result.status_code == 410:
            conn.execute(
                QUERIES["disable_webhook"],
                {
                    "tenant_id": tenant_id,
                    "webhook_id": claimed["webhook_id"],
                    "reason": "the receiver answered 410 Gone",
                },
            )
    observability.event(
        log,
        "webhook_attempt",
        {
            "tenant_id": tenant_id,
            "delivery_id": str(claimed["id"]),
            "webhook_id": str(claimed["webhook_id"]),
            "kind": claimed["kind"],
            "attempt": attempt,
            "status_code": result.status_code,
            "outcome": state,
            "duration_ms": result.duration_ms,
            "error": result.error,
        },
    )
    observability.WEBHOOK_DELIVERIES.add(1, {"outcome": state if state != "pending" else "retrying"})
    return state


def _attempt(settings: Settings, claimed: Mapping[str, Any], ca_file: str | None) -> AttemptResult:
    secret = decrypt_secret(settings, str(claimed["secret_encrypted"]))
    if secret is None:
        return AttemptResult(
            datetime.now(UTC), 0, error="secret unavailable (the app's key changed): rotate the target's secret"
        )
    delivery_id = str(claimed["id"])
    body = body_of(delivery_id, claimed["payload"])
    return post(str(claimed["url"]), body, signed_headers(secret, delivery_id, body), settings, ca_file)


def deliver_tenant(
    pool: DictPool,
    settings: Settings,
    tenant_id: str,
    deadline: float,
    limit: int = BATCH,
    ca_file: str | None = None,
    skip: list[uuid.UUID] | None = None,
    rng: random.Random | None = None,
) -> DeliveryReport:
    """One batch of a tenant's lane: claim one due delivery, send it, record it; until nothing is due,
    `limit` deliveries, or too little time is left for a whole attempt. A target that failed is added
    to `skip` and passed over from then on (its deliveries wait for their backoff or the next run)."""
    report = DeliveryReport(tenants=1)
    skip = [] if skip is None else skip
    while report.attempted < limit and time.monotonic() + settings.webhook_timeout_s <= deadline:
        claimed = _claim(pool, settings, tenant_id, skip)
        if claimed is None:
            break
        result = _attempt(settings, claimed, ca_file)
        state = _settle(pool, settings, tenant_id, claimed, result, rng)
        report.attempted += 1
        if state == "delivered":
            report.delivered += 1
        else:
            skip.append(claimed["webhook_id"])
            if state == "failed":
                report.failed += 1
            else:
                report.retrying += 1
    return report


def deliver_due(
    pool: DictPool,
    settings: Settings,
    budget_s: float | None = None,
    *,
    workers: int = WORKERS,
    batch: int = BATCH,
    ca_file: str | None = None,
) -> DeliveryReport:
    """Every tenant's due deliveries, within budget_s (WEBHOOK_DELIVERY_BUDGET_S); ends as soon as
    nothing is due, then prunes settled deliveries past RETENTION_DAYS (a bounded batch).
    ca_file: a CA bundle to trust instead of the system's (tests' local TLS receivers)."""
    started = time.monotonic()
    deadline = started + (settings.webhook_delivery_budget_s if budget_s is None else budget_s)
    report = DeliveryReport()
    tenants = tenants_with_due_deliveries(pool)
    if tenants:
        _run_lanes(pool, settings, tenants, deadline, workers, batch, ca_file, report)
    report.pruned = prune_deliveries(pool)
    report.duration_ms = (time.monotonic() - started) * 1000
    return report


def _run_lanes(
    pool: DictPool,
    settings: Settings,
    tenants: list[str],
    deadline: float,
    workers: int,
    batch: int,
    ca_file: str | None,
    report: DeliveryReport,
) -> None:
    """Each tenant's lane sends a batch, then goes to the back of the queue while it has more, so a
    tenant with thousands of deliveries or a slow receiver takes turns with the others instead of
    holding a worker. A lane that fails (its database work) is logged; the others go on."""
    skips: dict[str, list[uuid.UUID]] = {tenant_id: [] for tenant_id in tenants}
    outstanding = 0
    done = threading.Condition()

    with ThreadPoolExecutor(max_workers=min(workers, len(tenants)), thread_name_prefix="webhooks") as executor:

        def queue(tenant_id: str) -> None:
            nonlocal outstanding
            with done:
                outstanding += 1
            executor.submit(lane, tenant_id)

        def lane(tenant_id: str) -> None:
            nonlocal outstanding
            again = False
            try:
                result = deliver_tenant(pool, settings, tenant_id, deadline, batch, ca_file, skips[tenant_id])
                with done:
                    report.add(result)
                again = result.attempted >= batch
            except Exception:  # noqa: BLE001 - one tenant's failure must not stop the others' deliveries
                observability.event(log, "webhook.lane_failed", {"tenant_id": tenant_id}, logging.ERROR, exc_info=True)
                with done:
                    report.lane_errors.append(tenant_id)
            if again and time.monotonic() + settings.webhook_timeout_s <= deadline:
                queue(tenant_id)  # before this turn ends, so outstanding never reads 0 too early
            with done:
                outstanding -= 1
                done.notify_all()

        for tenant_id in tenants:
            queue(tenant_id)
        with done:
            done.wait_for(lambda: outstanding == 0)
    report.tenants = len(tenants) - len(report.lane_errors)


def prune_deliveries(pool: DictPool, keep_days: int = RETENTION_DAYS, max_rows: int = PRUNE_BATCH) -> int:
    """Deletes settled deliveries older than keep_days (a bounded batch; the next run takes the rest)."""
    with pool.connection() as conn:
        return int(
            one_row(
                conn.execute(QUERIES["prune_webhook_deliveries"], {"keep_days": keep_days, "max_rows": max_rows}),
                "prune_webhook_deliveries",
            )["pruned"]
        )
