"""The plans' messages-per-hour quota, as the drain applies it.

Each tenant's accepted messages are counted per UTC hour in usage_hourly, one upsert per tenant
per batch in the batch's own transaction, so the count commits exactly when the messages do. A
message over the tenant's plan is never stored and never dropped silently: it becomes a dead
letter with reason `quota`. Only messages that carry readings count (a status message is not
metered). A redelivered duplicate counts again: the broker did deliver it twice.

Cheap by design: the plan's rate and the hour's use are read once per tenant per run (and hour);
after that the drain counts on in memory, which is exact because it is the only writer of
usage_hourly and holds the drain lock for the whole run. A plan change reaches the next run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.core.observability import QUOTA_USAGE
from shared.core.sql import QUERIES
from shared.ingest.messages import DeadLetter, DeviceRef, InboundMessage, MessageSpan, PreparedBatch, TenantCounts

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

QUOTA_REASON = "quota"


def current_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(slots=True)
class _TenantQuota:
    hour: datetime
    slug: str
    plan: str
    per_hour: int | None  # None: unlimited
    used: int


class MessageMeter:
    """One drain run's view of every tenant's message quota."""

    def __init__(self) -> None:
        self._quotas: dict[str, _TenantQuota] = {}

    def _load(self, conn: psycopg.Connection[TupleRow], tenant_ids: list[str], hour: datetime) -> None:
        rows = conn.execute(QUERIES["quota_state"], {"tenant_ids": tenant_ids, "hour": hour}).fetchall()
        for tenant_id, slug, plan, per_hour, used in rows:
            self._quotas[str(tenant_id)] = _TenantQuota(hour, slug, plan, per_hour, used)

    def admissible(self, conn: psycopg.Connection[TupleRow], wanted: dict[str, int], hour: datetime) -> dict[str, int]:
        """How many of each tenant's wanted messages fit in its quota for this hour."""
        stale = sorted(t for t in wanted if (q := self._quotas.get(t)) is None or q.hour != hour)
        if stale:
            self._load(conn, stale, hour)
        admitted: dict[str, int] = {}
        for tenant_id, n in wanted.items():
            quota = self._quotas.get(tenant_id)
            if quota is None or quota.per_hour is None:
                admitted[tenant_id] = n  # a tenant deleted meanwhile: its rows fail on their own
            else:
                admitted[tenant_id] = max(0, min(n, quota.per_hour - quota.used))
        return admitted

    def describe(self, tenant_id: str) -> str:
        quota = self._quotas[tenant_id]
        return (
            f"the {quota.plan} plan allows {quota.per_hour} messages per hour and this hour's are used; "
            "messages are stored again from the next hour, or at once on a bigger plan"
        )

    def count(self, conn: psycopg.Connection[TupleRow], batch: PreparedBatch, hour: datetime) -> None:
        """Counts a metered batch's usage in the open transaction (one upsert for all its tenants)."""
        params = usage_params(batch, hour)
        if params is not None:
            conn.execute(QUERIES["count_usage"], params)

    def committed(self, batch: PreparedBatch, hour: datetime) -> None:
        """Adds what a batch counted once its transaction has committed, and reports each metered
        tenant's use (quota_usage_percent, as infra/queries/quota_usage.kql reads it)."""
        for tenant_id, n in counted(batch).items():
            quota = self._quotas.get(tenant_id)
            if quota is not None and quota.hour == hour:
                quota.used += n
                if quota.per_hour:
                    QUOTA_USAGE.record(
                        100.0 * quota.used / quota.per_hour, {"tenant": quota.slug, "quota": "messages_per_hour"}
                    )

    def meter(
        self,
        conn: psycopg.Connection[TupleRow],
        messages: Sequence[InboundMessage],
        batch: PreparedBatch,
        hour: datetime,
    ) -> PreparedBatch:
        """The batch with each tenant's messages beyond its quota turned into `quota` dead letters
        (the latest ones of the batch), its usage counted in the open transaction."""
        metered = self._metered(conn, messages, batch, hour)
        self.count(conn, metered, hour)
        return metered

    def _metered(
        self,
        conn: psycopg.Connection[TupleRow],
        messages: Sequence[InboundMessage],
        batch: PreparedBatch,
        hour: datetime,
    ) -> PreparedBatch:
        wanted = {tenant: counts.messages for tenant, counts in batch.tenant_counts.items() if counts.messages}
        if not wanted:
            return batch
        admitted = self.admissible(conn, wanted, hour)
        if all(admitted[t] == n for t, n in wanted.items()):
            return batch
        metered = PreparedBatch(
            dead_letters=list(batch.dead_letters),
            presence=batch.presence,
            oldest_ts_us=batch.oldest_ts_us,
            units=batch.units,
            tenant_counts={
                t: TenantCounts(c.messages, c.readings, c.dead_lettered) for t, c in batch.tenant_counts.items()
            },
            decoder_states=batch.decoder_states,
            decoder_events=batch.decoder_events,
            rebirths=batch.rebirths,
        )
        left = dict(admitted)
        for index, start, end in batch.spans:
            tenant_id, device_id, _ = batch.copy_lines[start].split("\t", 2)
            if left.get(tenant_id, 1) > 0:
                if tenant_id in left:
                    left[tenant_id] -= 1
                first = len(metered.copy_lines)
                metered.copy_lines.extend(batch.copy_lines[start:end])
                metered.spans.append(MessageSpan(index, first, len(metered.copy_lines)))
                continue
            message = messages[index]
            metered.dead_letters.append(
                DeadLetter(
                    message.topic,
                    QUOTA_REASON,
                    self.describe(tenant_id),
                    message.payload,
                    DeviceRef(tenant_id, int(device_id), True),
                )
            )
            counts = metered.tenant_counts[tenant_id]
            counts.messages -= 1
            counts.readings -= end - start
            counts.dead_lettered += 1
        return metered


def usage_params(batch: PreparedBatch, hour: datetime) -> dict[str, Any] | None:
    """count_usage's parameters for a batch about to commit; None when it meters nothing."""
    over = Counter(d.device.tenant_id for d in batch.dead_letters if d.reason == QUOTA_REASON and d.device)
    tenants = sorted({t for t, c in batch.tenant_counts.items() if c.messages} | set(over))
    if not tenants:
        return None
    return {
        "hour": hour,
        "tenant_ids": tenants,
        "messages": [batch.tenant_counts[t].messages if t in batch.tenant_counts else 0 for t in tenants],
        "over_quota": [over[t] for t in tenants],
    }


def counted(batch: PreparedBatch) -> dict[str, int]:
    return {t: c.messages for t, c in batch.tenant_counts.items() if c.messages}
