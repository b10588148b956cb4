"""Anomaly rules against a real database, as the app role under RLS: the baseline is
the exponentially weighted mean and variance of bucket means, kept incrementally in alert_rule_state
(equal to a step-by-step reference, consuming only new buckets), silent during warm-up, and on a
labelled synthetic data set (spikes, level shifts, slow drift, noisy but normal series) it reaches
the precision and recall floors below. Time is replayed with evaluate_tenant(as_of=...): every reading
is real telemetry, stamped in the past."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.alerts.evaluator import ANOMALY_SETTLE_S, evaluate_tenant
from shared.core.db import tenant_transaction
from shared.http.routes.alerts import ANOMALY_DEFAULTS
from tests.support.anomaly import Baseline, reference_baseline
from tests.support.api import new_tenant
from tests.support.devices import unique_slug
from tests.support.registry import create_device, create_tenant

MINUTE = timedelta(minutes=1)


def add_anomaly_rule(app_pool, tenant, **fields: Any) -> str:
    values: dict[str, Any] = {
        "name": "anomaly",
        "scope": "all",
        "metric": "temperature",
        "consecutive": 1,
        **ANOMALY_DEFAULTS,
        **fields,
    }
    values.setdefault("clear_value", values["sensitivity"] / 2)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        row = conn.execute(
            "INSERT INTO alert_rules (tenant_id, name, kind, scope, metric, window_s, sensitivity, baseline_buckets,"
            " warmup_buckets, clear_value, consecutive)"
            " VALUES (%(tenant_id)s, %(name)s, 'anomaly', %(scope)s, %(metric)s, %(window_s)s, %(sensitivity)s,"
            " %(baseline_buckets)s, %(warmup_buckets)s, %(clear_value)s, %(consecutive)s) RETURNING id",
            {**values, "tenant_id": tenant["id"]},
        ).fetchone()
    assert row is not None
    return str(row["id"])


def write_series(app_pool, tenant, start: datetime, series: dict[int, list[float]]) -> None:
    """One reading per device and minute from `start`, 30 s into each minute."""
    rows = [
        (tenant["id"], device_id, start + i * MINUTE + timedelta(seconds=30), value)
        for device_id, values in series.items()
        for i, value in enumerate(values)
    ]
    # COPY is refused under row-level security; executemany pipelines the inserts instead
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.cursor().executemany(
            "INSERT INTO telemetry (tenant_id, device_id, ts, metric, value) VALUES (%s, %s, %s, 'temperature', %s)",
            rows,
        )


def as_of_after(start: datetime, buckets: int) -> datetime:
    """The evaluation time at which the first `buckets` one-minute buckets from `start` are complete."""
    return start + buckets * MINUTE + timedelta(seconds=ANOMALY_SETTLE_S)


def state(app_pool, tenant) -> dict[int, dict[str, Any]]:
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        return {row["device_id"]: row for row in conn.execute("SELECT * FROM alert_rule_state").fetchall()}


def open_events(app_pool, tenant) -> dict[int, dict[str, Any]]:
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        return {
            row["device_id"]: row
            for row in conn.execute("SELECT * FROM alert_events WHERE state <> 'resolved'").fetchall()
        }


def assert_state_equals(row: dict[str, Any], expected: Baseline) -> None:
    assert row["samples"] == expected.samples
    assert row["ewma_mean"] == pytest.approx(expected.mean, rel=1e-9)
    assert row["ewma_var"] == pytest.approx(expected.var, rel=1e-6)
    assert row["slow_mean"] == pytest.approx(expected.slow_mean, rel=1e-9)
    assert row["noise_var"] == pytest.approx(expected.noise_var, rel=1e-6)


@pytest.fixture
def plant(app_pool):
    tenant = new_tenant(app_pool)
    device = create_device(app_pool, str(tenant["id"]), "press-01")
    return tenant, int(device["id"])


def test_baseline_is_incremental_and_equals_the_step_by_step_ewma(app_pool, plant):
    # GIVEN three hours of a noisy series and a rule with a 60-bucket baseline
    tenant, device = plant
    rng = random.Random(1)
    values = [20 + rng.gauss(0, 0.5) for _ in range(180)]
    start = (datetime.now(UTC) - timedelta(hours=4)).replace(second=0, microsecond=0)
    write_series(app_pool, tenant, start, {device: values})
    add_anomaly_rule(app_pool, tenant, baseline_buckets=60, warmup_buckets=30)

    # WHEN the rule is first evaluated at bucket 120 THEN it seeds from the buckets it needs to be warm
    # (its span, and the bucket it judges)
    evaluate_tenant(app_pool, str(tenant["id"]), as_of=as_of_after(start, 120))
    first = state(app_pool, tenant)[device]
    assert first["samples"] == 61
    assert first["watermark"] == start + 120 * MINUTE

    # WHEN it is evaluated minute by minute (and once more with nothing new) THEN each run consumes only the
    # new bucket, and the baseline equals the step-by-step reference over the same buckets
    for bucket in range(121, 181):
        evaluate_tenant(app_pool, str(tenant["id"]), as_of=as_of_after(start, bucket))
    evaluate_tenant(app_pool, str(tenant["id"]), as_of=as_of_after(start, 180) + timedelta(seconds=20))
    last = state(app_pool, tenant)[device]
    assert last["samples"] == 121
    assert last["watermark"] == start + 180 * MINUTE
    assert_state_equals(last, reference_baseline(values[59:180], 60, 30, ANOMALY_DEFAULTS["sensitivity"]))
    assert last["last_value"] == pytest.approx(values[179])

    # WHEN ten buckets arrive at once (the evaluator was down) THEN one run catches up to the same baseline
    more = [20 + rng.gauss(0, 0.5) for _ in range(10)]
    write_series(app_pool, tenant, start + 180 * MINUTE, {device: more})
    evaluate_tenant(app_pool, str(tenant["id"]), as_of=as_of_after(start, 190))
    caught_up = state(app_pool, tenant)[device]
    assert caught_up["samples"] == 131
    assert_state_equals(caught_up, reference_baseline(values[59:180] + more, 60, 30, ANOMALY_DEFAULTS["sensitivity"]))


def test_warm_up_keeps_a_new_baseline_quiet_then_a_spike_opens_and_clears(app_pool, plant):
    # GIVEN a rule needing 30 buckets of baseline, on a device with no history, and a jump at bucket 10
    tenant, device = plant
    rng = random.Random(2)
    values = [50 + rng.gauss(0, 1) for _ in range(60)]
    values[10] = 80.0
    values[45] = 80.0
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    write_series(app_pool, tenant, start, {device: values})
    add_anomaly_rule(app_pool, tenant, warmup_buckets=30)

    opened_at_bucket = []
    for bucket in range(1, 61):
        evaluate_tenant(app_pool, str(tenant["id"]), as_of=as_of_after(start, bucket))
        if device in open_events(app_pool, tenant):
            opened_at_bucket.append(bucket)
    # THEN the jump during warm-up opened nothing; the one after it opened an event (value: the bucket's
    # mean) that the next normal bucket resolved
    assert opened_at_bucket == [46]
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        [event] = conn.execute("SELECT * FROM alert_events").fetchall()
    assert (event["state"], event["value"], event["resolved_by"]) == ("resolved", 80.0, None)


def test_disabled_rules_other_metrics_and_other_tenants_are_not_touched(app_pool, plant):
    # GIVEN a disabled anomaly rule, a rule on another metric, and another tenant's device with a spike
    tenant, device = plant
    other = new_tenant(app_pool)
    other_device = int(create_device(app_pool, str(other["id"]), "press-01")["id"])
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    flat = [10.0 + (i % 2) * 0.1 for i in range(60)]
    write_series(app_pool, tenant, start, {device: flat[:59] + [99.0]})
    write_series(app_pool, other, start, {other_device: flat[:59] + [99.0]})
    rule = add_anomaly_rule(app_pool, tenant, warmup_buckets=10)
    add_anomaly_rule(app_pool, tenant, metric="pressure", warmup_buckets=10)
    with tenant_transaction(app_pool, str(tenant["id"])) as conn:
        conn.execute("UPDATE alert_rules SET enabled = false WHERE id = %s", (rule,))

    # WHEN the tenant is evaluated THEN nothing is kept or opened: the enabled rule's metric never arrived
    evaluate_tenant(app_pool, str(tenant["id"]), as_of=as_of_after(start, 60))
    assert state(app_pool, tenant) == {}
    assert open_events(app_pool, tenant) == {}
    # AND the other tenant, with no rule, has neither
    assert state(app_pool, other) == {} and open_events(app_pool, other) == {}


# --- the labelled synthetic data set ---------------------------------------------------

HOURS = 6
BUCKETS = HOURS * 60
WARMUP = int(ANOMALY_DEFAULTS["warmup_buckets"])
# An event up to this many buckets after an episode ends still counts as finding it (the detector
# needs the next bucket to see a lasting change).
GRACE = 10


@dataclass
class Series:
    kind: str
    values: list[float]
    # [first, last] bucket of each labelled anomaly; empty for a normal series
    episodes: list[tuple[int, int]] = field(default_factory=list)


def synthetic(rng: random.Random) -> list[Series]:
    """Temperatures around a machine's own level with sensor noise and a slow daily-ish wave; anomalies
    start after the warm-up. Ten series of each kind."""

    def normal() -> list[float]:
        level, noise, wave = rng.uniform(20, 80), rng.uniform(0.2, 2.0), rng.uniform(0, 3)
        phase = rng.uniform(0, 2 * math.pi)
        return [
            level + wave * noise * math.sin(phase + 2 * math.pi * i / 360) + rng.gauss(0, noise) for i in range(BUCKETS)
        ]

    data: list[Series] = []
    for _ in range(10):
        data.append(Series("normal", normal()))
    for _ in range(10):
        values = normal()
        noise = _noise(values)
        episodes = []
        for at in rng.sample(range(WARMUP + 30, BUCKETS - 20, 40), 3):
            width = rng.choice((1, 1, 2))
            for i in range(at, at + width):
                values[i] += rng.choice((-1, 1)) * rng.uniform(8, 15) * noise
            episodes.append((at, at + width - 1))
        data.append(Series("spike", values, episodes))
    for _ in range(10):
        values, at = normal(), rng.randrange(WARMUP + 60, BUCKETS - 60)
        shift = rng.choice((-1, 1)) * rng.uniform(6, 12) * _noise(values)
        values[at:] = [v + shift for v in values[at:]]
        data.append(Series("level_shift", values, [(at, at + 5)]))
    for _ in range(10):
        # a bearing warming up: 10-20 noise widths over one to two hours, then staying there
        values, at, length = normal(), rng.randrange(WARMUP + 30, BUCKETS - 150), rng.randrange(60, 120)
        rise = rng.uniform(10, 20) * _noise(values)
        values = [v + rise * min(max(i - at, 0), length) / length for i, v in enumerate(values)]
        data.append(Series("slow_drift", values, [(at, at + length)]))
    return data


def _noise(values: list[float]) -> float:
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    return math.sqrt(sum(d * d for d in diffs) / len(diffs) / 2)


def test_labelled_synthetic_series_precision_and_recall(app_pool, capsys):
    # GIVEN 40 devices of one tenant, each with six hours of a labelled series, and one anomaly rule with
    # the API's defaults on all of them
    tenant = create_tenant(app_pool, unique_slug(), "Labelled Works", "professional")
    data = synthetic(random.Random(13))
    devices = [int(create_device(app_pool, str(tenant["id"]), f"m-{i:02d}")["id"]) for i in range(len(data))]
    start = (datetime.now(UTC) - timedelta(hours=HOURS + 1)).replace(second=0, microsecond=0)
    write_series(app_pool, tenant, start, {device: s.values for device, s in zip(devices, data, strict=True)})
    add_anomaly_rule(app_pool, tenant)

    # WHEN the evaluator replays them minute by minute (as the timer would), noting when events open
    opened: dict[int, list[int]] = {device: [] for device in devices}
    for bucket in range(1, BUCKETS + 1):
        before = open_events(app_pool, tenant)
        evaluate_tenant(app_pool, str(tenant["id"]), as_of=as_of_after(start, bucket))
        for device, event in open_events(app_pool, tenant).items():
            if device not in before or before[device]["id"] != event["id"]:
                opened[device].append(bucket - 1)  # the bucket that was judged

    # THEN precision (events inside a labelled episode) and recall (episodes found) reach the floors
    found = caught = events_total = 0
    per_kind: dict[str, list[int]] = {}
    for device, series in zip(devices, data, strict=True):
        windows = [(first, last + GRACE) for first, last in series.episodes]
        hits = [b for b in opened[device] if any(lo <= b <= hi for lo, hi in windows)]
        found_here = sum(any(lo <= b <= hi for b in opened[device]) for lo, hi in windows)
        events_total += len(opened[device])
        caught += len(hits)
        found += found_here
        tally = per_kind.setdefault(series.kind, [0, 0, 0, 0])  # episodes, found, events, false alarms
        tally[0] += len(windows)
        tally[1] += found_here
        tally[2] += len(opened[device])
        tally[3] += len(opened[device]) - len(hits)
    episodes = sum(len(s.episodes) for s in data)
    precision, recall = caught / max(events_total, 1), found / episodes
    with capsys.disabled():
        print(
            f"\nanomaly_detection precision={precision:.3f} recall={recall:.3f} events={events_total} "
            f"episodes={episodes} "
            + " ".join(f"{kind}:found={t[1]}/{t[0]},false_alarms={t[3]}" for kind, t in per_kind.items())
        )
    # (measured: precision 0.961, recall 0.980; the same detector replayed in Python on seeds 16-20 gives
    # 0.966 and 1.000, so these defaults are not fitted to this seed alone)
    assert precision >= 0.9
    assert recall >= 0.9
    assert per_kind["normal"][3] <= 1
    for kind in ("spike", "level_shift", "slow_drift"):
        assert per_kind[kind][1] >= 0.8 * per_kind[kind][0], kind
