"""Every error the app raises on purpose, in one hierarchy. Each docstring is the default message.

Two kinds hang from MqttSaasError:
- RequestError: the caller may be told. Its category (NotFound, Conflict, ...) says what went wrong in
  the caller's terms, `kind` names it for machines, and the message is fixed text (never a driver's
  message or a value the caller sent). The HTTP layer maps each category to a status, in one table.
- everything else (ConfigurationError, BrokerUnavailable, ...): the operator's problem. An API caller
  sees only that the request failed; the log says why.
"""

from __future__ import annotations


class MqttSaasError(Exception):
    """An mqtt-saas operation failed."""

    def __init__(self, message: str | None = None) -> None:
        self.detail = message or (self.__doc__ or "").strip()
        super().__init__(self.detail)


# --- the operator's problems ---------------------------------------------------------------------------------------


class ConfigurationError(MqttSaasError):
    """A setting is missing or invalid."""


class BrokerUnavailable(MqttSaasError):
    """The MQTT broker could not be reached or refused the connection."""


class BrokerConnectionLost(BrokerUnavailable):
    """The connection to the MQTT broker was lost (e.g. the broker restarted); a new one may work at once."""


class DynsecError(MqttSaasError):
    """The broker's dynamic-security plugin refused a command."""


class MigrationChanged(MqttSaasError):
    """An applied migration file no longer matches what was applied."""


class ArchiveVerificationError(MqttSaasError):
    """The blob read back does not match the manifest."""


class UnsafeTarget(MqttSaasError, ValueError):
    """A webhook URL the app will not call; the message says why (a fixed phrase, never the URL)."""


# --- what a caller may be told -------------------------------------------------------------------------------------


class RequestError(MqttSaasError):
    """The request could not be completed."""

    # Problem types are urn:mqtt-saas:problem:<kind>: a stable name a client can switch on.
    kind: str = "internal"
    # Seconds the caller should wait before trying again, where waiting helps.
    retry_after_s: int | None = None


class InvalidRequest(RequestError):
    """The request is malformed."""

    kind = "bad-request"


class Unauthenticated(RequestError):
    """Send a valid, unexpired access token as 'Authorization: Bearer <token>'."""

    kind = "unauthenticated"


class Forbidden(RequestError):
    """Your role does not allow this."""

    kind = "forbidden"


class NotFound(RequestError):
    """There is no such resource."""

    kind = "not-found"


class Conflict(RequestError):
    """The request conflicts with the current state."""

    kind = "conflict"


class Unprocessable(RequestError):
    """The request is well-formed but its content is not valid."""

    kind = "validation"


class PlanLimitReached(RequestError):
    """Your plan's limit is reached: remove something or ask for a bigger plan (GET /api/usage shows each quota)."""

    kind = "plan-limit-reached"


class TooManyRequests(RequestError):
    """Too many requests; wait before trying again."""

    kind = "too-many-requests"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__()
        self.retry_after_s = max(1, retry_after_s)


class Unavailable(RequestError):
    """A service the request needs cannot be reached right now; try again shortly."""

    kind = "unavailable"


class ServerMisconfigured(RequestError):
    """The service is misconfigured; an operator must check its settings."""


# --- paging and accounts -------------------------------------------------------------------------------------------


class InvalidCursor(InvalidRequest):
    """The cursor is not one this API returned; start again without it."""

    kind = "invalid-cursor"


class InvalidCredentials(Unauthenticated):
    """The tenant, email or password is wrong."""

    kind = "invalid-credentials"


class InvalidRefreshToken(Unauthenticated):
    """The refresh token is unknown, expired or revoked; log in again."""

    kind = "invalid-refresh-token"


class TooManyLoginAttempts(TooManyRequests):
    """Too many failed logins; wait before trying again (see Retry-After)."""

    kind = "too-many-login-attempts"


class UserNotFound(NotFound):
    """There is no such user in your tenant."""


class EmailTaken(Conflict):
    """A user with this email already exists in your tenant."""

    kind = "email-taken"


class LastOwner(Conflict):
    """A tenant must keep at least one owner: make another user owner first."""

    kind = "last-owner"


class DatabaseUnavailable(Unavailable):
    """The service cannot reach its database right now; try again shortly."""

    retry_after_s = 5


class NotConfigured(ServerMisconfigured):
    """The service is not configured to issue or check tokens; an operator must set AUTH_JWT_SECRET."""

    kind = "not-configured"


class ExternalAuthNotConfigured(ServerMisconfigured):
    """The external identity provider is misconfigured; an operator must check the AUTH_EXTERNAL_* settings."""

    kind = "external-auth-not-configured"


class IdentityProviderUnavailable(Unavailable):
    """The identity provider's signing keys cannot be fetched right now; try again shortly."""

    kind = "identity-provider-unavailable"


# --- devices and commands ------------------------------------------------------------------------------------------


class DeviceNotFound(NotFound):
    """There is no such device in your tenant."""


class DeviceNameTaken(Conflict):
    """A device with this name already exists in your tenant."""

    kind = "device-name-taken"


class InvalidCsv(Unprocessable):
    """The CSV is not valid: see the line named."""

    kind = "invalid-csv"


class ProfileNotFound(NotFound):
    """There is no such device profile (built in or of your tenant)."""


class ProfileNameTaken(Conflict):
    """A device profile with this name already exists in your tenant."""

    kind = "profile-name-taken"


class ProfileInUse(Conflict):
    """Devices still use this profile: give them another one first."""

    kind = "profile-in-use"


class BuiltinProfile(Conflict):
    """A built-in profile cannot be changed: create one of your own from its spec."""

    kind = "builtin-profile"


class InvalidProfile(Unprocessable):
    """The profile's spec is not valid: see the detail."""

    kind = "invalid-profile"


class ReplayBusy(Unavailable):
    """The drain is storing a batch right now: try the replay again in a few seconds."""

    kind = "replay-busy"
    retry_after_s = 5


class DeviceDisabled(Conflict):
    """The device is disabled: it cannot connect to receive a command. Enable it first."""

    kind = "device-disabled"


class CommandTooLarge(Unprocessable):
    """The command's args are too large (at most 4096 bytes as JSON)."""

    kind = "command-too-large"


class CommandArgsInvalid(Unprocessable):
    """The command's args may not contain the NUL character (\\u0000) in a key or a string."""

    kind = "command-args-invalid"


class CommandNotDelivered(Unavailable):
    """The broker cannot be reached: the command was recorded as failed and not sent; try again shortly."""

    kind = "command-not-delivered"
    retry_after_s = 5


class CommandRefused(Unavailable):
    """The broker refused the command: it was recorded as failed; an operator must check the commander credential."""

    kind = "command-refused"


# --- telemetry reads -----------------------------------------------------------------------------------------------


class InvalidRange(Unprocessable):
    """The time range is not valid: 'from' must be before 'to', within the maximum span."""

    kind = "invalid-range"


class MetricNotNumeric(Unprocessable):
    """This metric's values are booleans or text: a series averages numbers only; GET .../latest shows them."""

    kind = "metric-not-numeric"


# --- tenants and plans ---------------------------------------------------------------------------------------------


class TenantNotFound(NotFound):
    """There is no such tenant."""


class TenantSlugTaken(Conflict):
    """A tenant with this slug already exists."""

    kind = "tenant-slug-taken"


class InvalidTenant(Unprocessable):
    """The tenant or its owner is not valid (slug, name or email); see the API document for each field's rules."""

    kind = "invalid-tenant"


# --- alerts and their webhooks -------------------------------------------------------------------------------------


class AlertRuleNotFound(NotFound):
    """There is no such alert rule in your tenant."""


class AlertEventNotFound(NotFound):
    """There is no such alert event in your tenant."""


class AlertEventResolved(Conflict):
    """The alert event is already resolved."""

    kind = "alert-event-resolved"


class AlertDeviceNotFound(Unprocessable):
    """The rule's device_id names no device of your tenant."""

    kind = "alert-device-not-found"


class WebhookNotFound(NotFound):
    """There is no such webhook target in your tenant (or on this rule)."""


class WebhookLimitReached(Conflict):
    """This rule already has the most webhook targets allowed (5); delete one first."""

    kind = "webhook-limit-reached"


class WebhookUrlRefused(Unprocessable):
    """The webhook URL is not one the app will call."""

    kind = "webhook-url-refused"
