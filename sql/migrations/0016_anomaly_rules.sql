-- Anomaly rules (issue 13 §1): an adaptive baseline per (rule, device) over a metric's bucket means.
--
-- A rule of kind 'anomaly' looks at the mean of its metric per bucket of window_s seconds and keeps,
-- per (rule, device) in alert_rule_state, updated incrementally (a run reads only the complete
-- buckets after the state's watermark, never the history again):
--   * a fast baseline: the exponentially weighted mean and variance of the bucket means, span
--     baseline_buckets (alpha = 2 / (span + 1)). A bucket more than `sensitivity` of its standard
--     deviations away is sudden: a spike, a step.
--   * a slow mean, span 10 x baseline_buckets, and the sensor's noise (the EWMA of half the squared
--     bucket-to-bucket difference, which a trend or a slow wave hardly moves). When the fast mean
--     has moved more than 1.25 x sensitivity noise widths from the slow mean, the level is drifting:
--     a bearing warming over an hour, which the fast baseline alone would learn as normal.
-- Either fires once the baseline has seen warmup_buckets buckets. An event resolves when a bucket is
-- within clear_value standard deviations of the fast baseline and within 0.625 x sensitivity noise
-- widths of the slow mean (so a lasting step stays one event until the slow mean has learned it).
-- The defaults and their precision and recall come from tests/integration/test_anomaly_detection.py.

ALTER TABLE alert_rules
    ADD COLUMN sensitivity      double precision CHECK (sensitivity BETWEEN 1 AND 20),
    ADD COLUMN baseline_buckets integer CHECK (baseline_buckets BETWEEN 10 AND 10080),
    ADD COLUMN warmup_buckets   integer CHECK (warmup_buckets BETWEEN 1 AND 10080),
    ADD CONSTRAINT alert_rules_anomaly CHECK (kind <> 'anomaly' OR (
        metric IS NOT NULL AND window_s BETWEEN 60 AND 3600 AND sensitivity IS NOT NULL
        AND baseline_buckets IS NOT NULL AND warmup_buckets IS NOT NULL
        AND clear_value IS NOT NULL AND clear_value >= 0 AND clear_value < sensitivity));

-- The incremental baselines. samples counts the buckets seen; watermark is the end of the last bucket
-- consumed (the next run starts there); last_value (0013) is then the newest bucket's mean;
-- last_score its distance from the fast baseline in standard deviations and last_drift the fast
-- mean's from the slow one in noise widths (both signed: for the API and for tuning sensitivity).
ALTER TABLE alert_rule_state
    ADD COLUMN samples    integer NOT NULL DEFAULT 0,
    ADD COLUMN ewma_mean  double precision,
    ADD COLUMN ewma_var   double precision,
    ADD COLUMN slow_mean  double precision,
    ADD COLUMN noise_var  double precision,
    ADD COLUMN watermark  timestamptz,
    ADD COLUMN last_score double precision,
    ADD COLUMN last_drift double precision;

-- PostgreSQL raises "value out of range: underflow" where a float8 product or exp() rounds to zero,
-- and an EWMA's weights shrink geometrically: these keep the evaluator's arithmetic away from that
-- edge (a weight below 1e-100 is 0; a deviation below 1e-50 is 0), far below any sensor's precision.
CREATE FUNCTION anomaly_decay(alpha double precision, steps bigint) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN steps * ln(1 - alpha) < -230 THEN 0 ELSE exp(steps * ln(1 - alpha)) END $$;

CREATE FUNCTION anomaly_flush(x double precision) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN abs(x) < 1e-50 THEN 0 ELSE x END $$;
