"""The API's errors. Each docstring is the fixed message a client sees (RFC 9457 `detail`);
shared/api/problems.py is the one place that turns them, and everything else, into responses."""
from __future__ import annotations


class ApiError(Exception):
    """The request could not be completed."""

    status: int = 500
    title: str = "Internal Server Error"
    # The problem type is urn:mqtt-saas:problem:<kind> (a name, not a page: nothing to dereference)
    kind: str = "internal"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        self.headers = headers or {}
        super().__init__(self.detail)


class BadRequest(ApiError):
    """The request is malformed."""

    status, title, kind = 400, "Bad Request", "bad-request"


class InvalidCursor(BadRequest):
    """The cursor is not one this API returned; start again without it."""

    kind = "invalid-cursor"


class Unauthenticated(ApiError):
    """Send a valid, unexpired access token as 'Authorization: Bearer <token>'."""

    status, title, kind = 401, "Unauthorized", "unauthenticated"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="mqtt-saas"'})


class InvalidCredentials(Unauthenticated):
    """The tenant, email or password is wrong."""

    kind = "invalid-credentials"


class InvalidRefreshToken(Unauthenticated):
    """The refresh token is unknown, expired or revoked; log in again."""

    kind = "invalid-refresh-token"


class Forbidden(ApiError):
    """Your role does not allow this."""

    status, title, kind = 403, "Forbidden", "forbidden"


class NotFound(ApiError):
    """There is no such resource."""

    status, title, kind = 404, "Not Found", "not-found"


class UserNotFound(NotFound):
    """There is no such user in your tenant."""


class Conflict(ApiError):
    """The request conflicts with the current state."""

    status, title, kind = 409, "Conflict", "conflict"


class EmailTaken(Conflict):
    """A user with this email already exists in your tenant."""

    kind = "email-taken"


class LastOwner(Conflict):
    """A tenant must keep at least one owner: make another user owner first."""

    kind = "last-owner"


class TooManyLoginAttempts(ApiError):
    """Too many failed logins; wait before trying again (see Retry-After)."""

    status, title, kind = 429, "Too Many Requests", "too-many-login-attempts"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(headers={"Retry-After": str(max(1, retry_after_s))})


class ServiceUnavailable(ApiError):
    """The service cannot reach its database right now; try again shortly."""

    status, title, kind = 503, "Service Unavailable", "unavailable"


class NotConfigured(ApiError):
    """The service is not configured to issue or check tokens; an operator must set AUTH_JWT_SECRET."""

    status, title, kind = 500, "Internal Server Error", "not-configured"


class ExternalAuthNotConfigured(ApiError):
    """The external identity provider is misconfigured; an operator must check the AUTH_EXTERNAL_* settings."""

    status, title, kind = 500, "Internal Server Error", "external-auth-not-configured"


class IdentityProviderUnavailable(ApiError):
    """The identity provider's signing keys cannot be fetched right now; try again shortly."""

    status, title, kind = 503, "Service Unavailable", "identity-provider-unavailable"


# --- devices (issue 12 §3)

class DeviceNotFound(NotFound):
    """There is no such device in your tenant."""


class DeviceNameTaken(Conflict):
    """A device with this name already exists in your tenant."""

    kind = "device-name-taken"


class InvalidCsv(ApiError):
    """The CSV is not valid: see the line named."""

    status, title, kind = 422, "Unprocessable Content", "invalid-csv"


# --- commands to devices (issue 12 §4)

class DeviceDisabled(Conflict):
    """The device is disabled: it cannot connect to receive a command. Enable it first."""

    kind = "device-disabled"


class CommandTooLarge(ApiError):
    """The command's args are too large (at most 4096 bytes as JSON)."""

    status, title, kind = 422, "Unprocessable Content", "command-too-large"


class CommandArgsInvalid(ApiError):
    """The command's args may not contain the NUL character (\\u0000) in a key or a string."""

    status, title, kind = 422, "Unprocessable Content", "command-args-invalid"


class CommandNotDelivered(ApiError):
    """The broker cannot be reached: the command was recorded as failed and not sent; try again shortly."""

    status, title, kind = 503, "Service Unavailable", "command-not-delivered"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


class CommandRefused(ApiError):
    """The broker refused the command: it was recorded as failed; an operator must check the commander credential."""

    status, title, kind = 503, "Service Unavailable", "command-refused"


# --- reads for dashboards (issue 12 §5)

class InvalidRange(ApiError):
    """The time range is not valid: 'from' must be before 'to', within the maximum span."""

    status, title, kind = 422, "Unprocessable Content", "invalid-range"


class MetricNotNumeric(ApiError):
    """This metric's values are booleans or text: a series averages numbers only; GET .../latest shows them."""

    status, title, kind = 422, "Unprocessable Content", "metric-not-numeric"


# --- plans, quotas, audit and the platform operator (issue 12 §2, §6, §7)

class PlanLimitReached(ApiError):
    """Your plan's limit is reached: remove something or ask for a bigger plan (GET /api/usage shows each quota)."""

    status, title, kind = 402, "Payment Required", "plan-limit-reached"


class TenantNotFound(NotFound):
    """There is no such tenant."""


class TenantSlugTaken(Conflict):
    """A tenant with this slug already exists."""

    kind = "tenant-slug-taken"


class InvalidTenant(ApiError):
    """The tenant or its owner is not valid (slug, name or email); see the API document for each field's rules."""

    status, title, kind = 422, "Unprocessable Content", "invalid-tenant"


# --- alerts (issue 13)

class AlertRuleNotFound(NotFound):
    """There is no such alert rule in your tenant."""


class AlertEventNotFound(NotFound):
    """There is no such alert event in your tenant."""


class AlertEventResolved(Conflict):
    """The alert event is already resolved."""

    kind = "alert-event-resolved"


class AlertDeviceNotFound(ApiError):
    """The rule's device_id names no device of your tenant."""

    status, title, kind = 422, "Unprocessable Content", "alert-device-not-found"


# --- alert webhooks (issue 13 §3)

class WebhookNotFound(NotFound):
    """There is no such webhook target in your tenant (or on this rule)."""


class WebhookLimitReached(Conflict):
    """This rule already has the most webhook targets allowed (5); delete one first."""

    kind = "webhook-limit-reached"


class WebhookUrlRefused(ApiError):
    """The webhook URL is not one the app will call."""

    status, title, kind = 422, "Unprocessable Content", "webhook-url-refused"
