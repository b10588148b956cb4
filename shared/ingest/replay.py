"""Nothing lost while a device's mapping is wrong: its dead letters, decoded again.

A dry run decodes the device's recent dead letters with a candidate profile (a name, an unsaved spec,
or the device's own) through the drain's own batch preparation, and answers what each would store,
writing nothing. A replay decodes them with the device's current profile and stores what now
decodes, exactly as the drain would: through the same staging COPY and ON CONFLICT DO NOTHING on the
dedup key (device, metric, ts, seq), marking those dead letters replayed in the same transaction. A
dead letter keeps the time it was received, which is the ts of a reading without one, so replaying
it again stores nothing more, and a replay already done is skipped.

The replay writes as the drain does (the ingest role) while holding the drain's run lock, so it never
interleaves with a run; what the device's decoder remembers is read after taking the lock. Old
messages change neither the device's presence nor a Sparkplug node's sequence and aliases; the
entities a replayed Home Assistant discovery config announces are kept.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.accounts.access import acting_user, audit
from shared.accounts.tokens import Principal
from shared.broker.contract import BUILTIN_PROFILES
from shared.core.db import DictPool, tenant_transaction
from shared.core.exceptions import DeviceNotFound, ProfileNotFound, ReplayBusy
from shared.core.settings import Settings
from shared.core.sql import QUERIES
from shared.ingest.batch import prepare_batch
from shared.ingest.builtin_profiles import builtin_decoder
from shared.ingest.decoding import Decoder, compile_spec
from shared.ingest.messages import DeviceRef, InboundMessage, PreparedBatch, TimeWindow
from shared.ingest.profiles import WRITERS, validate_spec
from shared.ingest.store import IngestStore, tenant_decoder
from shared.ingest.validation import Limits

MAX_DEAD_LETTERS = 500
SHOWN_READINGS = 20
LOCK_WAIT_S = 15.0
# Not a decoding problem: a replay would store what the plan or the owner refused.
NOT_REPLAYABLE = ("quota", "device_disabled", "unknown_device")


@dataclass
class _OneDevice:
    """The batch preparation's directory, for the one device whose dead letters are decoded."""

    tenant: str
    name: str
    ref: DeviceRef
    decoder_state: dict[str, Any]

    def get(self, tenant: str, device: str) -> DeviceRef | None:
        return self.ref if (tenant, device) == (self.tenant, self.name) else None

    def state(self, key: tuple[str, int]) -> dict[str, Any]:
        return self.decoder_state


def _decoder_of(conn: Any, principal: Principal, device: dict[str, Any], name: str | None, spec: Any) -> Decoder | None:
    if spec is not None:
        return compile_spec("candidate", validate_spec(spec))
    if name is None:
        if device["builtin_profile"] is not None:
            return builtin_decoder(device["builtin_profile"])
        return tenant_decoder(
            str(principal.tenant_id), device["profile_id"], device["profile"], device["spec"], device["updated_at"]
        )
    if name in BUILTIN_PROFILES:
        return builtin_decoder(name)
    row = conn.execute(QUERIES["get_profile"], {"tenant_id": principal.tenant_id, "name": name}).fetchone()
    if row is None:
        raise ProfileNotFound()
    return tenant_decoder(str(principal.tenant_id), row["id"], row["name"], row["spec"], row["updated_at"])


def _prepare(
    settings: Settings,
    principal: Principal,
    device: dict[str, Any],
    decoder: Decoder | None,
    profile: str,
    rows: list[dict[str, Any]],
) -> tuple[PreparedBatch, list[dict[str, Any]]]:
    replayable = [r for r in rows if r["reason"] not in NOT_REPLAYABLE and len(r["payload"]) == r["payload_bytes"]]
    ref = DeviceRef(str(principal.tenant_id), device["id"], True, profile, decoder)
    directory = _OneDevice(device["tenant_slug"], device["name"], ref, copy.deepcopy(device["state"] or {}))
    messages = [
        InboundMessage(r["topic"], bytes(r["payload"]), int(r["received_at"].timestamp() * 1_000_000))
        for r in replayable
    ]
    limits = Limits(settings.ingest_max_payload_bytes, settings.ingest_max_metrics, settings.ingest_max_records)
    window = TimeWindow(settings.ingest_max_past_days * 86400, settings.ingest_max_future_s)
    return prepare_batch(messages, directory, limits, window, time.time_ns() // 1000), replayable


def _outcomes(
    rows: list[dict[str, Any]], replayable: list[dict[str, Any]], batch: PreparedBatch
) -> list[dict[str, Any]]:
    stored = {index: batch.copy_lines[start:end] for index, start, end in batch.spans}
    by_topic_payload = {(d.topic, d.payload): d for d in batch.dead_letters}
    position = {id(r): i for i, r in enumerate(replayable)}
    out = []
    for row in rows:
        view: dict[str, Any] = {
            "id": row["id"],
            "received_at": row["received_at"],
            "topic": row["topic"],
            "reason": row["reason"],
            "profile": row["profile"],
            "replayed_at": row["replayed_at"],
        }
        index = position.get(id(row))
        if index is None:
            view.update(outcome="not_replayable", readings=[], new_reason=None, new_detail=None)
        elif index in stored:
            lines = stored[index]
            view.update(
                outcome="stored",
                readings=[_reading(line) for line in lines[:SHOWN_READINGS]],
                reading_count=len(lines),
                new_reason=None,
                new_detail=None,
            )
        else:
            dead = by_topic_payload.get((row["topic"], bytes(row["payload"])))
            view.update(
                outcome="failed",
                readings=[],
                reading_count=0,
                new_reason=dead.reason if dead else "no_readings",
                new_detail=dead.detail if dead else "the message stores nothing (a status or discovery message)",
            )
        view.setdefault("reading_count", 0)
        out.append(view)
    return out


def _reading(line: str) -> dict[str, Any]:
    _, _, metric, ts_us, seq, value, value_bool, value_text = line.rstrip("\n").split("\t")
    shown: Any
    if value != "\\N":
        shown = float(value)
    elif value_bool != "\\N":
        shown = value_bool == "t"
    else:
        shown = value_text.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r").replace("\\\\", "\\")
    return {
        "metric": metric,
        "ts": datetime.fromtimestamp(int(ts_us) / 1_000_000, UTC),
        "seq": int(seq),
        "value": shown,
    }


def _read(
    pool: DictPool,
    principal: Principal,
    device_id: int,
    name: str | None,
    spec: Any,
    limit: int,
    include_replayed: bool,
) -> tuple[dict[str, Any], Decoder | None, str, list[dict[str, Any]]]:
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
        device = conn.execute(
            QUERIES["device_profile"], {"tenant_id": principal.tenant_id, "device_id": device_id}
        ).fetchone()
        if device is None:
            raise DeviceNotFound()
        decoder = _decoder_of(conn, principal, device, name, spec)
        profile = "candidate" if spec is not None else name or device["profile"]
        rows = conn.execute(
            QUERIES["device_dead_letters"],
            {
                "tenant_id": principal.tenant_id,
                "device_id": device_id,
                "limit": min(limit, MAX_DEAD_LETTERS),
                "include_replayed": include_replayed,
            },
        ).fetchall()
    return device, decoder, profile, rows


def dry_run(
    pool: DictPool,
    settings: Settings,
    principal: Principal,
    device_id: int,
    *,
    profile: str | None = None,
    spec: Any = None,
    limit: int = 100,
) -> dict[str, Any]:
    """What the device's recent dead letters would store under a profile (none given: its own); no write."""
    device, decoder, used, rows = _read(pool, principal, device_id, profile, spec, limit, include_replayed=False)
    batch, replayable = _prepare(settings, principal, device, decoder, used, rows)
    items = _outcomes(rows, replayable, batch)
    return {"profile": used, "items": items, **_totals(items)}


def _totals(items: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "dead_letters": len(items),
        "would_store": sum(1 for i in items if i["outcome"] == "stored"),
        "readings": sum(i["reading_count"] for i in items),
        "still_failing": sum(1 for i in items if i["outcome"] == "failed"),
        "not_replayable": sum(1 for i in items if i["outcome"] == "not_replayable"),
    }


def replay(
    pool: DictPool,
    settings: Settings,
    principal: Principal,
    device_id: int,
    source: str,
    *,
    include_replayed: bool = False,
) -> dict[str, Any]:
    """Stores what the device's dead letters now decode to with its current profile (each once)."""
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        acting_user(conn, principal, *WRITERS)
    store = IngestStore(settings.ingest_database_url.get_secret_value())
    deadline = time.monotonic() + LOCK_WAIT_S
    while not store.connect():
        if time.monotonic() > deadline:
            raise ReplayBusy()
        time.sleep(0.25)
    try:
        device, decoder, used, rows = _read(
            pool, principal, device_id, None, None, MAX_DEAD_LETTERS, include_replayed=include_replayed
        )
        batch, replayable = _prepare(settings, principal, device, decoder, used, rows)
        items = _outcomes(rows, replayable, batch)
        stored_ids = [item["id"] for item in items if item["outcome"] == "stored"]
        keep = {
            k: v
            for k, v in batch.decoder_states.items()
            if decoder is not None and decoder.name == "homeassistant-discovery"
        }
        accepted = store.write_replay(batch, stored_ids, keep) if stored_ids or keep else 0
    finally:
        store.close()
    totals = _totals(items)
    result = {
        "profile": used,
        "items": items,
        **totals,
        "replayed": len(stored_ids),
        "stored_readings": accepted,
        "duplicates": totals["readings"] - accepted,
    }
    with tenant_transaction(pool, str(principal.tenant_id)) as conn:
        detail = {k: result[k] for k in ("profile", "replayed", "stored_readings", "duplicates", "still_failing")}
        audit(
            conn,
            principal.tenant_id,
            principal.user_id,
            "device.replay_dead_letters",
            "device",
            str(device_id),
            source,
            detail,
        )
    return result
