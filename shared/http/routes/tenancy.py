"""Plans, quotas and usage, the audit log, and the platform operator's tenant administration.

/api/usage (any role) and /api/audit (owners) take a tenant user's token; /api/platform/* take
only an operator's token (POST /api/platform/auth/login), which no tenant endpoint accepts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from shared.accounts.passwords import MIN_PASSWORD_LENGTH, generate_password
from shared.broker.contract import TENANT_SLUG_PATTERN
from shared.core.exceptions import Unauthenticated
from shared.http.deps import PREFIX, Caller, Config, Pool, Source, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT, Page
from shared.platform import quotas, tenancy

router = APIRouter(prefix=PREFIX)

PlanName = Literal["free", "starter", "professional", "industrial"]
# The database's rule (one '@', no spaces), and no control characters: PostgreSQL text cannot
# hold NUL, which would otherwise reach it.
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$"
# An action as the audit log writes it: area.verb
AuditAction = Annotated[str, Query(pattern=r"^[a-z_]+\.[a-z_]+$", max_length=100)]

_operator_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="PlatformOperatorBearer",
    description="An operator token from POST /api/platform/auth/login.",
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quota(BaseModel):
    used: int
    limit: int | None = Field(description="null: unlimited on this plan.")
    percent: float | None = Field(description="used / limit in percent; null when unlimited.")


class Quotas(BaseModel):
    devices: Quota
    users: Quota
    alert_rules: Quota
    profiles: Quota = Field(description="Device profiles of the tenant's own (the built-ins are free).")
    messages_this_hour: Quota = Field(description="Messages the drain stored this UTC hour.")


class Usage(BaseModel):
    plan: PlanName
    hour: datetime = Field(description="The UTC hour messages_this_hour counts.")
    raw_retention_days: int | None = Field(description="Days raw telemetry is kept; null: kept.")
    quotas: Quotas
    messages_over_quota_this_hour: int = Field(
        description="Messages dead-lettered with reason quota this hour (see /api/admin/ingest)."
    )


class Plan(BaseModel):
    name: PlanName
    max_devices: int | None
    max_users: int | None
    max_alert_rules: int | None
    max_profiles: int | None
    messages_per_hour: int | None
    raw_retention_days: int | None


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_user_id: uuid.UUID | None = Field(description="null: a platform operator (see detail) or the system.")
    action: str = Field(examples=["device.create"])
    target_type: str | None
    target_id: str | None
    source_address: str | None
    detail: dict[str, Any]


class OperatorLoginRequest(_Body):
    email: str = Field(min_length=3, max_length=254, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=1, max_length=1024)


class OperatorToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires; log in again then.")


class TenantSummary(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: PlanName
    created_at: datetime
    devices: int
    users: int
    messages_this_hour: int


class CreateTenantRequest(_Body):
    slug: str = Field(
        pattern=TENANT_SLUG_PATTERN, description="The tenant's id in topics and logins.", examples=["acme"]
    )
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
    plan: PlanName = "free"
    owner_email: str = Field(min_length=3, max_length=254, pattern=EMAIL_PATTERN)
    owner_password: str | None = Field(
        None,
        min_length=MIN_PASSWORD_LENGTH,
        max_length=1024,
        description="Omit to have one generated and returned once.",
    )


class CreatedOwner(BaseModel):
    id: uuid.UUID
    email: str
    password: str | None = Field(description="The generated password, shown this once; null if you sent one.")


class CreatedTenant(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: PlanName
    owner: CreatedOwner


class ChangePlanRequest(_Body):
    plan: PlanName


class TenantPlan(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    plan: PlanName
    previous_plan: PlanName
    created_at: datetime


def operator(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_operator_bearer)], db: Pool, config: Config
) -> tenancy.Operator:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated()
    return tenancy.verify_operator_token(db, config, credentials.credentials)


PlatformOperator = Annotated[tenancy.Operator, Depends(operator)]


# --- a tenant's view


@router.get("/usage", tags=["quotas"], responses=problems(401))
def get_usage(db: Pool, caller: Caller) -> Usage:
    """Each quota's use, limit and percent on the tenant's plan (any role)."""
    return Usage.model_validate(quotas.usage(db, caller))


@router.get("/plans", tags=["quotas"], responses=problems(401))
def list_plans(db: Pool, caller: Caller) -> list[Plan]:
    """Every plan and its limits (null: unlimited), smallest first."""
    return [Plan.model_validate(row) for row in quotas.list_plans(db)]


@router.get("/audit", tags=["audit"], responses=problems(400, 401, 403, 422))
def list_audit(
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    action: AuditAction | None = None,
    actor: uuid.UUID | None = None,
    since: datetime | None = None,
) -> Page[AuditEntry]:
    """The tenant's audit log, newest first, a page at a time (owners only); filter by action,
    acting user, or time (since, inclusive)."""
    rows, next_cursor = tenancy.list_audit(db, caller, cursor, limit, action, actor, since)
    return Page[AuditEntry](items=[AuditEntry.model_validate(row) for row in rows], next_cursor=next_cursor)


# --- the platform operator


@router.post("/platform/auth/login", tags=["platform"], responses=problems(401, 422, 429))
def operator_login(body: OperatorLoginRequest, db: Pool, config: Config, source: Source) -> OperatorToken:
    """Exchanges an operator's email and password for an operator token (no refresh token)."""
    token = tenancy.operator_login(db, config, body.email, body.password, source)
    return OperatorToken(access_token=token, expires_in=config.platform_access_token_ttl_s)


@router.get("/platform/tenants", tags=["platform"], responses=problems(400, 401, 422))
def list_tenants(
    db: Pool,
    op: PlatformOperator,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[TenantSummary]:
    """Every tenant with its plan and use, oldest first, a page at a time."""
    rows, next_cursor = tenancy.list_tenants(db, op, cursor, limit)
    return Page[TenantSummary](items=[TenantSummary.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.post(
    "/platform/tenants", tags=["platform"], status_code=status.HTTP_201_CREATED, responses=problems(401, 409, 422)
)
def create_tenant(body: CreateTenantRequest, db: Pool, op: PlatformOperator, source: Source) -> CreatedTenant:
    """Creates a tenant and its first owner; without owner_password one is generated and returned once."""
    password = body.owner_password or generate_password()
    row = tenancy.create_tenant(db, op, body.slug, body.name, body.plan, body.owner_email, password, source)
    owner = {**row["owner"], "password": None if body.owner_password else password}
    return CreatedTenant.model_validate({**row, "owner": owner})


@router.patch("/platform/tenants/{tenant_id}", tags=["platform"], responses=problems(401, 404, 422))
def change_plan(
    tenant_id: uuid.UUID, body: ChangePlanRequest, db: Pool, op: PlatformOperator, source: Source
) -> TenantPlan:
    """Moves a tenant to another plan; its quotas change at once (a smaller plan refuses new rows
    over its limits but removes nothing)."""
    return TenantPlan.model_validate(tenancy.change_plan(db, op, tenant_id, body.plan, source))
