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


def reference_baseline(values: list[float], span: int, warmup: int, sensitivity: float,
                       clip: bool = True) -> Baseline:
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


def judge_first_run(values: list[float], span: int, warmup: int, sensitivity: float) -> bool:
    """Whether the newest bucket of `values` (oldest first) breaches in a pair's first evaluation, as
    the evaluator decides it: against the baselines of the buckets before it, nothing clipped."""
    before = reference_baseline(values[:-1], span, warmup, sensitivity, clip=False)
    if before.samples < warmup:
        return False
    floor = 1e-3 * max(abs(before.mean), 1)
    newest = values[-1]
    mean_after = before.mean + 2 / (span + 1) * (newest - before.mean)
    score = (newest - before.mean) / max(math.sqrt(before.var), floor)
    drift = (mean_after - before.slow_mean) / max(math.sqrt(before.noise_var), floor)
    return abs(score) > sensitivity or abs(drift) > 1.25 * sensitivity
