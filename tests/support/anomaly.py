"""The anomaly detector bucket by bucket in Python: the reference the evaluator's closed-form SQL
(sql/queries/alerts.sql evaluate_anomaly) must equal, used by its test and by the benchmark's naive
loop."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Baseline:
    mean: float
    var: float
    slow_mean: float
    noise_var: float
    samples: int


def reference_baseline(values: list[float], span: int, warmup: int, sensitivity: float, clip: bool = True) -> Baseline:
    """Bucket by bucket, as the SQL's closed form must equal: the West/Finch EWMA mean and variance, the
    slow mean (span x 10) and the noise (EWMA of half the squared bucket-to-bucket difference);
    deviations into the fast baseline and the noise clipped at max(sensitivity, 3) widths once warm
    (clip=False: as in the evaluator's first run of a pair, which has no warm baseline to clip against)."""
    alpha, slow_alpha = 2 / (span + 1), 2 / (10 * span + 1)
    mean, var, slow, noise, n, prev = values[0], 0.0, values[0], 0.0, 0, None
    bound = max(sensitivity, 3)
    for x in values:
        warm = clip and n >= warmup
        diff = x - mean
        if warm and var > 0:
            diff = max(-bound * math.sqrt(var), min(bound * math.sqrt(var), diff))
        if prev is not None:
            step = x - prev
            if warm and noise > 0:
                step = max(-bound * math.sqrt(2 * noise), min(bound * math.sqrt(2 * noise), step))
            noise = (1 - alpha) * noise + alpha * step * step / 2
        slow += slow_alpha * (x - slow)
        mean, var, n, prev = mean + alpha * diff, (1 - alpha) * (var + alpha * diff * diff), n + 1, x
    return Baseline(mean, var, slow, noise, n)


@dataclass
class PairState:
    """What alert_rule_state keeps for an anomaly (rule, device) pair."""

    mean: float
    var: float
    slow_mean: float
    noise_var: float
    samples: int
    last_value: float | None


def evaluate_pair(
    state: PairState | None, buckets: list[float], span: int, warmup: int, sensitivity: float
) -> tuple[PairState, bool]:
    """One evaluation of a pair over its new complete buckets (oldest first), exactly as the SQL does it:
    the moments centred on the run's starting mean, deviations clipped against the run's starting
    widths; returns the new state and whether the newest bucket breaches."""
    alpha, slow_alpha = 2 / (span + 1), 2 / (10 * span + 1)
    if state is None:
        state = PairState(buckets[0], 0.0, buckets[0], 0.0, 0, None)
    centre, bound = state.mean, max(sensitivity, 3)
    warm_at_start = state.samples >= warmup
    s1, s2, slow, noise, prev = 0.0, state.var, state.slow_mean - centre, state.noise_var, state.last_value
    before = (s1, s2, slow, noise)
    for x in buckets:
        before = (s1, s2, slow, noise)
        y = x - centre
        if warm_at_start and state.var > 0:
            y = max(-bound * math.sqrt(state.var), min(bound * math.sqrt(state.var), y))
        s1, s2 = (1 - alpha) * s1 + alpha * y, (1 - alpha) * s2 + alpha * y * y
        slow = (1 - slow_alpha) * slow + slow_alpha * (x - centre)
        if prev is not None:
            step = x - prev
            if warm_at_start and state.noise_var > 0:
                limit = bound * math.sqrt(2 * state.noise_var)
                step = max(-limit, min(limit, step))
            noise = (1 - alpha) * noise + alpha * step * step / 2
        prev = x
    b1, b2, bslow, bnoise = before
    newest, mean_before = buckets[-1], centre + b1
    floor = 1e-3 * max(abs(mean_before), 1)
    score = (newest - mean_before) / max(math.sqrt(max(b2 - b1 * b1, 0)), floor)
    drift = (centre + s1 - (centre + bslow)) / max(math.sqrt(bnoise), floor)
    warm = state.samples + len(buckets) - 1 >= warmup
    breach = warm and (abs(score) > sensitivity or abs(drift) > 1.25 * sensitivity)
    return PairState(
        centre + s1, max(s2 - s1 * s1, 0), centre + slow, noise, state.samples + len(buckets), newest
    ), breach
