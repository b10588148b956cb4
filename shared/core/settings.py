"""All settings, read once from the environment into one typed object.

Nothing else in the app reads os.environ. Secrets (database URLs carry passwords) are SecretStr:
no repr, log line or validation error shows them; code that needs one calls get_secret_value().
Every key here is listed, with a safe local value, in local.settings.json.example; Bicep sets the
same keys as app settings in Azure.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from shared.core.exceptions import ConfigurationError


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    # PostgreSQL, as the application role (not owner, not superuser, no BYPASSRLS).
    database_url: SecretStr = Field(alias="DATABASE_URL")
    database_pool_max: int = Field(4, alias="DATABASE_POOL_MAX", ge=1, le=50)
    # The drain's own role: may write every tenant's readings, may read none of them.
    ingest_database_url: SecretStr = Field(alias="INGEST_DATABASE_URL")

    # The broker, over TLS; the CA file verifies its certificate (there is no insecure mode).
    mqtt_host: str = Field("localhost", alias="MQTT_HOST")
    mqtt_port: int = Field(8883, alias="MQTT_PORT")
    mqtt_ca_file: str | None = Field(None, alias="MQTT_CA_FILE")

    # The drain's own broker credential, bound by dynamic security to one client id.
    mqtt_ingest_username: str = Field("mqtt-saas-ingest", alias="MQTT_INGEST_USERNAME")
    mqtt_ingest_password: SecretStr = Field(SecretStr(""), alias="MQTT_INGEST_PASSWORD")
    mqtt_ingest_client_id: str = Field("mqtt-saas-ingest", alias="MQTT_INGEST_CLIENT_ID")

    # The dynamic-security client that provisions device credentials. Mosquitto's control topic
    # cannot be scoped, so whoever holds this may do anything on the broker: only the code that
    # provisions reads it.
    mqtt_provisioner_username: str = Field("mqtt-saas-provisioner", alias="MQTT_PROVISIONER_USERNAME")
    mqtt_provisioner_password: SecretStr = Field(SecretStr(""), alias="MQTT_PROVISIONER_PASSWORD")

    # mqtt_ingest: when it runs and how much one run may do.
    ingest_schedule: str = Field("0 */1 * * * *", alias="INGEST_SCHEDULE")
    ingest_batch_size: int = Field(5000, alias="INGEST_BATCH_SIZE", ge=1, le=30000)
    ingest_flush_interval_s: float = Field(1.0, alias="INGEST_FLUSH_INTERVAL_S", gt=0, le=10)
    ingest_time_budget_s: float = Field(50.0, alias="INGEST_TIME_BUDGET_S", gt=0)
    ingest_idle_exit_s: float = Field(3.0, alias="INGEST_IDLE_EXIT_S", gt=0)
    ingest_db_retry_s: float = Field(30.0, alias="INGEST_DB_RETRY_S", ge=0)
    ingest_session_expiry_s: int = Field(7 * 24 * 3600, alias="INGEST_SESSION_EXPIRY_S", ge=3600)
    ingest_max_payload_bytes: int = Field(65536, alias="INGEST_MAX_PAYLOAD_BYTES", ge=256)
    ingest_max_metrics: int = Field(100, alias="INGEST_MAX_METRICS", ge=1)
    ingest_max_records: int = Field(1000, alias="INGEST_MAX_RECORDS", ge=1)
    ingest_max_past_days: int = Field(30, alias="INGEST_MAX_PAST_DAYS", ge=1, le=365)
    ingest_max_future_s: int = Field(3600, alias="INGEST_MAX_FUTURE_S", ge=0)

    # Blob storage (Azurite locally) for the cold archive.
    storage_connection_string: SecretStr | None = Field(None, alias="STORAGE_CONNECTION_STRING")

    # Application Insights: set in Azure (Bicep); unset locally, where metrics are recorded and not exported.
    # Not a secret: the component refuses ingestion keys (local auth off), the managed identity is what counts.
    applicationinsights_connection_string: str | None = Field(None, alias="APPLICATIONINSIGHTS_CONNECTION_STRING")
    # "Authorization=AAD" (optionally ";ClientId=<user-assigned identity>"): ingestion with the app's
    # managed identity, as the host does; the component refuses instrumentation keys.
    applicationinsights_authentication_string: str | None = Field(
        None, alias="APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
    )

    # The admin API's access tokens: HS256 JWTs signed with this secret (at least 32 bytes; the
    # API refuses to issue or accept tokens while it is shorter), for this issuer and audience.
    auth_jwt_secret: SecretStr = Field(SecretStr(""), alias="AUTH_JWT_SECRET")
    auth_jwt_issuer: str = Field("mqtt-saas", alias="AUTH_JWT_ISSUER")
    auth_jwt_audience: str = Field("mqtt-saas-api", alias="AUTH_JWT_AUDIENCE")
    auth_access_token_ttl_s: int = Field(900, alias="AUTH_ACCESS_TOKEN_TTL_S", ge=60, le=3600)
    auth_refresh_token_ttl_s: int = Field(30 * 24 * 3600, alias="AUTH_REFRESH_TOKEN_TTL_S", ge=3600)
    # Failed logins allowed per window: per (tenant, email, source address), and per source address.
    # A stranger elsewhere cannot lock a user out: their failures count against their own address.
    auth_login_window_s: int = Field(900, alias="AUTH_LOGIN_WINDOW_S", ge=60)
    auth_login_max_failures_per_account: int = Field(5, alias="AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", ge=1)
    auth_login_max_failures_per_source: int = Field(50, alias="AUTH_LOGIN_MAX_FAILURES_PER_SOURCE", ge=1)

    # --- auth: an external identity provider (e.g. Supabase Auth); off while the issuer is empty.
    # Its tokens are checked against this issuer and audience, with either a shared HS256 secret or
    # the provider's JWKS (RS256/ES256; keys cached, fetched with a timeout), never both. The tenant
    # (slug or id) and an optional role come from claims (dotted paths); the user is one of ours,
    # found by subject or, until it is linked, by email: our stored role wins, the claim only narrows.
    auth_external_issuer: str = Field("", alias="AUTH_EXTERNAL_ISSUER")
    auth_external_audience: str = Field("", alias="AUTH_EXTERNAL_AUDIENCE")
    auth_external_secret: SecretStr = Field(SecretStr(""), alias="AUTH_EXTERNAL_SECRET")
    auth_external_jwks_url: str = Field("", alias="AUTH_EXTERNAL_JWKS_URL")
    # Where the dashboard sends a reader to sign in at the provider (its authorization URL; the page
    # adds state and redirect_uri, or fills a {state} placeholder). Empty: no such button, and the
    # page takes no token from its URL (a pasted one still works).
    auth_external_sign_in_url: str = Field("", alias="AUTH_EXTERNAL_SIGN_IN_URL")
    auth_external_jwks_timeout_s: float = Field(5.0, alias="AUTH_EXTERNAL_JWKS_TIMEOUT_S", gt=0, le=30)
    auth_external_jwks_cache_s: int = Field(300, alias="AUTH_EXTERNAL_JWKS_CACHE_S", ge=0)
    auth_external_tenant_claim: str = Field("app_metadata.tenant", alias="AUTH_EXTERNAL_TENANT_CLAIM")
    auth_external_role_claim: str = Field("app_metadata.role", alias="AUTH_EXTERNAL_ROLE_CLAIM")
    auth_external_email_claim: str = Field("email", alias="AUTH_EXTERNAL_EMAIL_CLAIM")

    # --- archive: rollups, retention and the blob archive, run by the maintenance timers
    # as their own role (reads and deletes every tenant's telemetry through narrow policies; owns nothing).
    maintenance_database_url: SecretStr | None = Field(None, alias="MAINTENANCE_DATABASE_URL")
    rollup_schedule: str = Field("0 */5 * * * *", alias="ROLLUP_SCHEDULE")
    rollup_time_budget_s: float = Field(240.0, alias="ROLLUP_TIME_BUDGET_S", gt=0)
    # Rows younger than this are left for the next run: a drain transaction still open could yet
    # commit rows with received_at (its start time) below the watermark.
    rollup_lag_s: int = Field(120, alias="ROLLUP_LAG_S", ge=0)
    rollup_chunk_s: int = Field(900, alias="ROLLUP_CHUNK_S", ge=1)
    rollup_1m_retention_days: int = Field(400, alias="ROLLUP_1M_RETENTION_DAYS", ge=1)
    rollup_1h_retention_days: int = Field(3650, alias="ROLLUP_1H_RETENTION_DAYS", ge=1)
    archive_schedule: str = Field("0 15 * * * *", alias="ARCHIVE_SCHEDULE")
    archive_time_budget_s: float = Field(480.0, alias="ARCHIVE_TIME_BUDGET_S", gt=0)
    archive_container: str = Field("telemetry-archive", alias="ARCHIVE_CONTAINER")
    partition_ahead_days: int = Field(7, alias="PARTITION_AHEAD_DAYS", ge=1, le=60)
    # In Azure: the account's blob endpoint, reached with the managed identity (no key anywhere).
    # Locally STORAGE_CONNECTION_STRING (Azurite) wins when set.
    storage_account_url: str | None = Field(None, alias="STORAGE_ACCOUNT_URL")
    # POST /api/exports: files in their own container, read through a link valid this long
    # (a user delegation SAS in Azure, a service SAS with the account key locally).
    export_container: str = Field("exports", alias="EXPORT_CONTAINER")
    export_link_ttl_s: int = Field(3600, alias="EXPORT_LINK_TTL_S", ge=1, le=7 * 24 * 3600)
    export_max_days: int = Field(31, alias="EXPORT_MAX_DAYS", ge=1, le=366)

    # --- commands to devices: the API's own broker credential, which may only publish
    # to devices' command topics (the broker contract's commander role), never the provisioner's.
    mqtt_commander_username: str = Field("mqtt-saas-commander", alias="MQTT_COMMANDER_USERNAME")
    mqtt_commander_password: SecretStr = Field(SecretStr(""), alias="MQTT_COMMANDER_PASSWORD")
    # How long a command waits for the broker (connect, PUBACK) before it is recorded as failed.
    mqtt_command_timeout_s: float = Field(5.0, alias="MQTT_COMMAND_TIMEOUT_S", gt=0, le=30)
    # A command queued for an offline device (persistent session) is dropped by the broker after this.
    mqtt_command_expiry_s: int = Field(3600, alias="MQTT_COMMAND_EXPIRY_S", ge=1)

    # --- platform operators: their tokens are signed like users' but carry this
    # audience (and no tenant), so neither kind of token is accepted where the other belongs.
    platform_jwt_audience: str = Field("mqtt-saas-platform", alias="PLATFORM_JWT_AUDIENCE", min_length=1)
    platform_access_token_ttl_s: int = Field(900, alias="PLATFORM_ACCESS_TOKEN_TTL_S", ge=60, le=3600)

    # --- alerts: the alert_evaluator timer's NCRONTAB schedule (second 30: off the drain's minute)
    alert_schedule: str = Field("30 */1 * * * *", alias="ALERT_SCHEDULE")

    # --- alert webhooks: delivered by the alert_evaluator timer after its evaluation.
    # Off Azure only: plain http targets, and targets on private, loopback or link-local addresses
    # (in Azure a tenant must not make the app call into its own network or the metadata endpoint).
    webhook_allow_http: bool = Field(False, alias="WEBHOOK_ALLOW_HTTP")
    webhook_allow_private_targets: bool = Field(False, alias="WEBHOOK_ALLOW_PRIVATE_TARGETS")
    # One attempt (connect, send, answer) is cut after this; one run's deliveries stop after the budget.
    webhook_timeout_s: float = Field(5.0, alias="WEBHOOK_TIMEOUT_S", gt=0, le=30)
    webhook_delivery_budget_s: float = Field(20.0, alias="WEBHOOK_DELIVERY_BUDGET_S", gt=0, le=240)
    # Attempts before a delivery is given up (state failed); backoff 30 s doubling to 1 h between them.
    webhook_max_attempts: int = Field(10, alias="WEBHOOK_MAX_ATTEMPTS", ge=1, le=30)

    # --- broker with a Let's Encrypt certificate: Bicep sets MQTT_CA_FILE to "" and the
    # system CA store verifies the broker; paho would try to open "" as a file, so empty means unset.
    @field_validator("mqtt_ca_file")
    @classmethod
    def _empty_ca_file_means_system_store(cls, value: str | None) -> str | None:
        return value or None


def settings_from(environ: dict[str, str]) -> Settings:
    try:
        return Settings.model_validate(environ)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return settings_from(dict(os.environ))
