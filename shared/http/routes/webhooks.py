"""Alert webhooks: /api/alerts/rules/{rule_id}/webhooks (a rule's signed webhook targets) and
/api/alerts/webhooks/{webhook_id}/deliveries (what was sent and how each attempt went). Staff and
owners only: a target's URL often carries the receiver's credential."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from shared.alerts import webhooks
from shared.alerts.delivery import MAX_URL_LENGTH
from shared.http.deps import PREFIX, Caller, Config, Pool, Source, problems
from shared.http.models import DEFAULT_LIMIT, MAX_LIMIT, Page

router = APIRouter(prefix=PREFIX, tags=["alerts"])

DeliveryState = Literal["pending", "delivered", "failed"]
EventKind = Literal["alert.opened", "alert.acknowledged", "alert.resolved"]
RuleId = Annotated[uuid.UUID, Path(description="The alert rule's id.")]
WebhookId = Annotated[uuid.UUID, Path(description="The webhook target's id.")]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        pattern=r"^[^\x00-\x20\x7f]+$",
        examples=["https://hooks.example.com/mqtt-saas"],
        description="Where events are POSTed: https (http only where the deployment allows it), "
        "no user name or password, a public address.",
    )
    description: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")


class Webhook(BaseModel):
    id: str
    rule_id: str
    url: str
    description: str | None
    enabled: bool = Field(description="False once the receiver answered 410 Gone (see disabled_reason).")
    disabled_reason: str | None
    created_by: str | None
    created_at: datetime
    secret_rotated_at: datetime | None


class WebhookWithSecret(Webhook):
    secret: str = Field(description="The signing secret (whsec_...). Shown only in this answer: store it now.")
    warnings: list[str] = Field(
        description="What may keep deliveries from arriving, e.g. a host that does not resolve yet."
    )


class Attempt(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None = Field(description="The receiver's HTTP status; null when there was none.")
    error: str | None = Field(
        description="Why the attempt failed: a timeout, a refused connection, a TLS "
        "error, a non-2xx status; null when it delivered."
    )
    response_excerpt: str | None = Field(description="The start of the receiver's answer (at most 4 KiB).")


class Delivery(BaseModel):
    id: str = Field(description="The delivery's id: the Webhook-Id header, the same on every retry.")
    webhook_id: str
    event_id: str
    kind: EventKind
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending only).")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[Attempt]


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _webhook(row: dict[str, Any]) -> Webhook:
    return Webhook.model_validate(
        {**row, "id": str(row["id"]), "rule_id": str(row["rule_id"]), "created_by": _str(row["created_by"])}
    )


def _with_secret(row: dict[str, Any], secret: str, warnings: list[str]) -> WebhookWithSecret:
    return WebhookWithSecret.model_validate({**_webhook(row).model_dump(), "secret": secret, "warnings": warnings})


def _delivery(row: dict[str, Any]) -> Delivery:
    return Delivery.model_validate(
        {
            **row,
            "id": str(row["id"]),
            "webhook_id": str(row["webhook_id"]),
            "event_id": str(row["event_id"]),
            "next_attempt_at": row["next_attempt_at"] if row["state"] == "pending" else None,
        }
    )


@router.post(
    "/alerts/rules/{rule_id}/webhooks", status_code=status.HTTP_201_CREATED, responses=problems(401, 403, 404, 409, 422)
)
def create_webhook(
    rule_id: RuleId, body: WebhookRequest, db: Pool, config: Config, caller: Caller, source: Source
) -> WebhookWithSecret:
    """Adds a webhook target to a rule (staff, owners; at most 5 per rule, 409 past it). Every event of the
    rule (opened, acknowledged, resolved) is POSTed to it, signed with the secret this answer shows once."""
    row, secret, warnings = webhooks.create_webhook(db, config, caller, rule_id, body.url, body.description, source)
    return _with_secret(row, secret, warnings)


@router.get("/alerts/rules/{rule_id}/webhooks", responses=problems(401, 403, 404, 422))
def list_webhooks(
    rule_id: RuleId,
    db: Pool,
    caller: Caller,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[Webhook]:
    """A rule's webhook targets, oldest first, a page at a time (staff, owners); never their secrets."""
    rows, next_cursor = webhooks.list_webhooks(db, caller, rule_id, cursor, limit)
    return Page[Webhook](items=[_webhook(row) for row in rows], next_cursor=next_cursor)


@router.delete(
    "/alerts/rules/{rule_id}/webhooks/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(401, 403, 404, 422),
)
def delete_webhook(rule_id: RuleId, webhook_id: WebhookId, db: Pool, caller: Caller, source: Source) -> Response:
    """Deletes a webhook target and its deliveries; pending ones are never sent (staff, owners)."""
    webhooks.delete_webhook(db, caller, rule_id, webhook_id, source)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/alerts/rules/{rule_id}/webhooks/{webhook_id}/rotate-secret", responses=problems(401, 403, 404, 422))
def rotate_secret(
    rule_id: RuleId, webhook_id: WebhookId, db: Pool, config: Config, caller: Caller, source: Source
) -> WebhookWithSecret:
    """Replaces a target's signing secret and shows the new one once (staff, owners); every attempt from now
    on, retries included, is signed with it."""
    row, secret = webhooks.rotate_secret(db, config, caller, rule_id, webhook_id, source)
    return _with_secret(row, secret, [])


@router.get("/alerts/webhooks/{webhook_id}/deliveries", responses=problems(400, 401, 403, 404, 422))
def list_deliveries(
    webhook_id: WebhookId,
    db: Pool,
    caller: Caller,
    state: DeliveryState | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Page[Delivery]:
    """A target's deliveries, newest first, a page at a time, each with every attempt (status code, error,
    duration, the start of the answer), optionally one state (staff, owners)."""
    rows, next_cursor = webhooks.list_deliveries(db, caller, webhook_id, state, cursor, limit)
    return Page[Delivery](items=[_delivery(row) for row in rows], next_cursor=next_cursor)
