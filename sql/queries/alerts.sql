-- insert_alert_rule --
-- A new rule; the plan-limit trigger refuses one over the tenant's max_alert_rules (MQ402).
INSERT INTO alert_rules (tenant_id, name, kind, scope, device_id, tag, device_type, metric, aggregation, window_s,
                         operator, value, clear_value, consecutive, no_data_minutes, sensitivity, baseline_buckets,
                         warmup_buckets, severity, enabled, created_by)
VALUES (%(tenant_id)s, %(name)s, %(kind)s, %(scope)s, %(device_id)s, %(tag)s, %(device_type)s, %(metric)s,
        %(aggregation)s, %(window_s)s, %(operator)s, %(value)s, %(clear_value)s, %(consecutive)s,
        %(no_data_minutes)s, %(sensitivity)s, %(baseline_buckets)s, %(warmup_buckets)s, %(severity)s, %(enabled)s,
        %(created_by)s)
RETURNING *

-- update_alert_rule --
-- Replaces a rule's definition; its per-device state (breach counts, anomaly baselines) starts over.
UPDATE alert_rules
SET name = %(name)s, kind = %(kind)s, scope = %(scope)s, device_id = %(device_id)s, tag = %(tag)s,
    device_type = %(device_type)s, metric = %(metric)s, aggregation = %(aggregation)s, window_s = %(window_s)s,
    operator = %(operator)s, value = %(value)s, clear_value = %(clear_value)s, consecutive = %(consecutive)s,
    no_data_minutes = %(no_data_minutes)s, sensitivity = %(sensitivity)s, baseline_buckets = %(baseline_buckets)s,
    warmup_buckets = %(warmup_buckets)s, severity = %(severity)s, enabled = %(enabled)s, updated_at = now()
WHERE tenant_id = %(tenant_id)s AND id = %(rule_id)s
RETURNING *

-- delete_alert_rule_state --
-- A changed rule counts its consecutive breaches afresh.
DELETE FROM alert_rule_state WHERE tenant_id = %(tenant_id)s AND rule_id = %(rule_id)s

-- get_alert_rule --
SELECT * FROM alert_rules WHERE tenant_id = %(tenant_id)s AND id = %(rule_id)s

-- delete_alert_rule --
-- Its state and events go with it (ON DELETE CASCADE).
DELETE FROM alert_rules WHERE tenant_id = %(tenant_id)s AND id = %(rule_id)s RETURNING id, name

-- list_alert_rules --
-- Oldest first by (created_at, id), a page at a time.
SELECT * FROM alert_rules
WHERE tenant_id = %(tenant_id)s
  AND (%(after_created_at)s::timestamptz IS NULL OR (created_at, id) > (%(after_created_at)s, %(after_id)s::uuid))
ORDER BY created_at, id
LIMIT %(limit)s

-- alert_device_exists --
SELECT EXISTS (SELECT 1 FROM devices WHERE tenant_id = %(tenant_id)s AND id = %(device_id)s) AS present

-- alert_metric_seen --
-- Whether any device of the tenant ever sent the metric (a rule on an unseen one only warns).
SELECT EXISTS (SELECT 1 FROM device_metrics WHERE tenant_id = %(tenant_id)s AND metric = %(metric)s) AS seen

-- list_alert_events --
-- Newest first by (opened_at, id), optionally one state, severity or device.
SELECT e.*, r.name AS rule_name, r.kind AS rule_kind, d.name AS device_name
FROM alert_events e
JOIN alert_rules r ON r.tenant_id = e.tenant_id AND r.id = e.rule_id
JOIN devices d ON d.tenant_id = e.tenant_id AND d.id = e.device_id
WHERE e.tenant_id = %(tenant_id)s
  AND (%(state)s::text IS NULL OR e.state = %(state)s)
  AND (%(severity)s::text IS NULL OR e.severity = %(severity)s)
  AND (%(device_id)s::bigint IS NULL OR e.device_id = %(device_id)s)
  AND (%(after_opened_at)s::timestamptz IS NULL OR (e.opened_at, e.id) < (%(after_opened_at)s, %(after_id)s::uuid))
ORDER BY e.opened_at DESC, e.id DESC
LIMIT %(limit)s

-- get_alert_event_for_update --
SELECT e.*, r.name AS rule_name, r.kind AS rule_kind, d.name AS device_name
FROM alert_events e
JOIN alert_rules r ON r.tenant_id = e.tenant_id AND r.id = e.rule_id
JOIN devices d ON d.tenant_id = e.tenant_id AND d.id = e.device_id
WHERE e.tenant_id = %(tenant_id)s AND e.id = %(event_id)s
FOR NO KEY UPDATE OF e

-- acknowledge_alert_event --
UPDATE alert_events
SET state = 'acknowledged', acknowledged_at = now(), acknowledged_by = %(user_id)s,
    comment = coalesce(%(comment)s, comment)
WHERE tenant_id = %(tenant_id)s AND id = %(event_id)s

-- resolve_alert_event --
UPDATE alert_events
SET state = 'resolved', resolved_at = now(), resolved_by = %(user_id)s, comment = coalesce(%(comment)s, comment)
WHERE tenant_id = %(tenant_id)s AND id = %(event_id)s

-- alert_tenants_with_rules --
-- The tenants the evaluator visits (a SECURITY DEFINER function: ids only, see 0013).
SELECT tenant_id FROM alert_tenants_with_rules()

-- alert_try_lock_tenant --
-- One evaluation per tenant at a time: an overlapping run skips a tenant another run holds, so two
-- runs never count the same evaluation twice towards a rule's consecutive breaches.
SELECT pg_try_advisory_xact_lock(hashtextextended('alert_evaluator:' || %(tenant_id)s::text, 0)) AS locked

-- evaluate_threshold --
-- Every enabled threshold rule of the tenant against every device in its scope, in one statement:
-- the aggregate over the rule's window (the telemetry dedup index serves device, metric and time),
-- whether it breaches, whether it has cleared (hysteresis: no longer past clear_value), and the run
-- of consecutive breaches. The aggregate is a LATERAL subquery: one index range scan per (rule,
-- device) inside the one statement, rather than a join the planner would hash over every partition.
-- No data in the window: neither breach nor clear ('count' is then 0).
WITH targets AS (
    SELECT r.id AS rule_id, d.id AS device_id, r.metric, r.aggregation, r.window_s, r.operator,
           r.value AS threshold, r.clear_value
    FROM alert_rules r
    JOIN devices d ON d.tenant_id = r.tenant_id AND d.enabled
     AND (r.scope = 'all' OR (r.scope = 'device' AND d.id = r.device_id) OR (r.scope = 'tag' AND r.tag = ANY (d.tags))
          OR (r.scope = 'type' AND d.type = r.device_type))
    WHERE r.tenant_id = %(tenant_id)s AND r.enabled AND r.kind = 'threshold'
), aggregated AS (
    SELECT t.rule_id, t.device_id, t.operator, t.threshold, t.clear_value, a.agg
    FROM targets t
    CROSS JOIN LATERAL (
        SELECT CASE t.aggregation
                   WHEN 'avg' THEN avg(x.value)
                   WHEN 'min' THEN min(x.value)
                   WHEN 'max' THEN max(x.value)
                   WHEN 'count' THEN count(x.value)::double precision
                   ELSE (array_agg(x.value ORDER BY x.ts DESC, x.seq DESC))[1]
               END AS agg
        FROM telemetry x
        WHERE x.tenant_id = %(tenant_id)s AND x.device_id = t.device_id AND x.metric = t.metric
          AND x.ts > now() - make_interval(secs => t.window_s) AND x.ts <= now() AND x.value IS NOT NULL
          -- the longest window, as a constant: partitions older than a day are pruned at plan time
          AND x.ts > now() - interval '1 day'
    ) a
), judged AS (
    SELECT rule_id, device_id, agg,
           coalesce(CASE operator WHEN '>' THEN agg > threshold WHEN '>=' THEN agg >= threshold
                                  WHEN '<' THEN agg < threshold ELSE agg <= threshold END, false) AS breach,
           coalesce(NOT CASE operator WHEN '>' THEN agg > clear_value WHEN '>=' THEN agg >= clear_value
                                      WHEN '<' THEN agg < clear_value ELSE agg <= clear_value END, false) AS cleared
    FROM aggregated
)
INSERT INTO alert_rule_state AS s (tenant_id, rule_id, device_id, breaches, cleared, last_value, evaluated_at)
SELECT %(tenant_id)s, rule_id, device_id, CASE WHEN breach THEN 1 ELSE 0 END, cleared, agg, now() FROM judged
ON CONFLICT (tenant_id, rule_id, device_id) DO UPDATE
SET breaches = CASE WHEN EXCLUDED.breaches = 1 THEN s.breaches + 1 ELSE 0 END,
    cleared = EXCLUDED.cleared, last_value = EXCLUDED.last_value, evaluated_at = EXCLUDED.evaluated_at

-- evaluate_no_data --
-- Every enabled no-data rule against every device in its scope, in one statement: silent when its
-- status topic says offline or nothing arrived for no_data_minutes (a device never seen counts from
-- its creation); back when neither holds. The value is how long it has been silent, in seconds.
WITH judged AS (
    SELECT r.id AS rule_id, d.id AS device_id,
           (d.status = 'offline' OR coalesce(d.last_seen, d.created_at) < now() - make_interval(mins => r.no_data_minutes))
               AS breach,
           extract(epoch FROM now() - coalesce(d.last_seen, d.created_at))::double precision AS silent_s
    FROM alert_rules r
    JOIN devices d ON d.tenant_id = r.tenant_id AND d.enabled
     AND (r.scope = 'all' OR (r.scope = 'device' AND d.id = r.device_id) OR (r.scope = 'tag' AND r.tag = ANY (d.tags))
          OR (r.scope = 'type' AND d.type = r.device_type))
    WHERE r.tenant_id = %(tenant_id)s AND r.enabled AND r.kind = 'no_data'
)
INSERT INTO alert_rule_state AS s (tenant_id, rule_id, device_id, breaches, cleared, last_value, evaluated_at)
SELECT %(tenant_id)s, rule_id, device_id, CASE WHEN breach THEN 1 ELSE 0 END, NOT breach, silent_s, now() FROM judged
ON CONFLICT (tenant_id, rule_id, device_id) DO UPDATE
SET breaches = CASE WHEN EXCLUDED.breaches = 1 THEN s.breaches + 1 ELSE 0 END,
    cleared = EXCLUDED.cleared, last_value = EXCLUDED.last_value, evaluated_at = EXCLUDED.evaluated_at

-- evaluate_anomaly --
-- Every enabled anomaly rule against every device in its scope, in one statement (0016 explains the
-- model). Per (rule, device): the complete buckets after the state's watermark (a first evaluation
-- seeds the baselines from the history they would have seen, warm-up included, so a new rule on a
-- device with history judges at once; never more than a day back) and each
-- bucket's mean; then every EWMA after all of them and just before the newest, in closed form
-- (weights (1 - alpha)^age: no recursion, one pass), centred on the previous mean so that
-- E[y^2] - E[y]^2 does not cancel. The newest bucket is judged against the baselines before it.
-- Deviations fed into the fast baseline and the noise are clipped at max(sensitivity, 3) of their
-- widths (from the state before this run), so one spike barely widens them while a lasting change
-- is still learned. A pair with no new complete bucket is left as it was. A bucket is complete once
-- settle_s has passed since its end (its late readings have arrived by then).
-- targets is MATERIALIZED so that since and upto reach the telemetry scan as plain values. Inlined,
-- they are COALESCE/GREATEST/date_bin expressions over the joined rows, and as the app role (under
-- row-level security; not as the owner) PostgreSQL 15 put them in a Filter instead of the index
-- condition: every row of each device's day was read (measured: 0.8-1.0 s against 0.17 s for 300
-- pairs). The threshold query's plainer bounds (now() - make_interval(...)) stay index conditions.
WITH targets AS MATERIALIZED (
    SELECT r.id AS rule_id, d.id AS device_id, r.window_s, r.sensitivity, r.clear_value, r.warmup_buckets,
           2.0::double precision / (r.baseline_buckets + 1) AS alpha,
           2.0::double precision / (10 * r.baseline_buckets + 1) AS slow_alpha,
           coalesce(s.samples, 0) AS samples0, s.ewma_mean AS mean0, anomaly_flush(coalesce(s.ewma_var, 0)) AS var0,
           s.slow_mean AS slow0, anomaly_flush(coalesce(s.noise_var, 0)) AS noise0, s.last_value AS prev0, u.upto,
           greatest(coalesce(s.watermark, u.upto - make_interval(
                                 secs => r.window_s * (greatest(r.baseline_buckets, r.warmup_buckets) + 1))),
                    coalesce(%(as_of)s::timestamptz, now()) - interval '1 day') AS since, r.metric
    FROM alert_rules r
    JOIN devices d ON d.tenant_id = r.tenant_id AND d.enabled
     AND (r.scope = 'all' OR (r.scope = 'device' AND d.id = r.device_id) OR (r.scope = 'tag' AND r.tag = ANY (d.tags))
          OR (r.scope = 'type' AND d.type = r.device_type))
    LEFT JOIN alert_rule_state s ON s.tenant_id = r.tenant_id AND s.rule_id = r.id AND s.device_id = d.id
    CROSS JOIN LATERAL (
        SELECT date_bin(make_interval(secs => r.window_s),
                        coalesce(%(as_of)s::timestamptz, now()) - make_interval(secs => %(settle_s)s),
                        timestamptz 'epoch') AS upto
    ) u
    WHERE r.tenant_id = %(tenant_id)s AND r.enabled AND r.kind = 'anomaly'
), buckets AS (
    SELECT t.*, b.x, count(*) OVER w_pair - row_number() OVER w_asc AS age,
           first_value(b.x) OVER w_asc AS first_x, coalesce(lag(b.x) OVER w_asc, t.prev0) AS prev_x
    FROM targets t
    CROSS JOIN LATERAL (
        SELECT date_bin(make_interval(secs => t.window_s), x.ts, timestamptz 'epoch') AS bucket, avg(x.value) AS x
        FROM telemetry x
        WHERE x.tenant_id = %(tenant_id)s AND x.device_id = t.device_id AND x.metric = t.metric
          AND x.ts >= t.since AND x.ts < t.upto AND x.value IS NOT NULL
          -- a reading past 1e100 would overflow the squares; no sensor means it
          AND abs(x.value) <= 1e100
          -- the longest catch-up, as a constant: partitions older than a day are pruned
          AND x.ts >= coalesce(%(as_of)s::timestamptz, now()) - interval '1 day'
        GROUP BY 1
    ) b
    WINDOW w_pair AS (PARTITION BY t.rule_id, t.device_id), w_asc AS (w_pair ORDER BY b.bucket)
), deviations AS MATERIALIZED (
    -- each bucket's weights now and before the newest (a weight of 0 stays 0 before: below 1e-100).
    -- MATERIALIZED: inlined, every use of y or a weight below would repeat its whole expression.
    SELECT b.*, c.centre, anomaly_flush(b.x - c.centre) AS u, w.fast, w.fast / (1 - b.alpha) AS fast_before,
           w.slow, w.slow / (1 - b.slow_alpha) AS slow_before,
           anomaly_flush(CASE WHEN c.warm AND b.var0 > 0
                              THEN least(greatest(b.x - c.centre, -c.bound * sqrt(b.var0)), c.bound * sqrt(b.var0))
                              ELSE b.x - c.centre END) AS y,
           anomaly_flush(CASE WHEN c.warm AND b.noise0 > 0
                              THEN least(greatest(b.x - b.prev_x, -c.bound * sqrt(2 * b.noise0)),
                                         c.bound * sqrt(2 * b.noise0))
                              ELSE b.x - b.prev_x END) AS dd
    FROM buckets b
    CROSS JOIN LATERAL (
        SELECT coalesce(b.mean0, b.first_x) AS centre, b.samples0 >= b.warmup_buckets AS warm,
               greatest(b.sensitivity, 3) AS bound
    ) c
    CROSS JOIN LATERAL (SELECT anomaly_decay(b.alpha, b.age) AS fast, anomaly_decay(b.slow_alpha, b.age) AS slow) w
), sums AS (
    SELECT rule_id, device_id, count(*) AS k, max(alpha) AS alpha, max(slow_alpha) AS slow_alpha,
           max(samples0) AS samples0, max(var0) AS var0, max(noise0) AS noise0, max(centre) AS centre,
           anomaly_flush(coalesce(max(slow0) - max(centre), 0)) AS slow0, max(upto) AS upto,
           max(sensitivity) AS sensitivity, max(clear_value) AS clear_value, max(warmup_buckets) AS warmup_buckets,
           max(x) FILTER (WHERE age = 0) AS newest,
           -- after every new bucket (fast mean and variance, slow mean, noise) ...
           sum(fast * y) AS y1, sum(fast * y * y) AS y2, sum(slow * u) AS u1,
           coalesce(sum(fast * dd * dd), 0) / 2 AS d2,
           -- ... and before the newest one
           coalesce(sum(fast_before * y) FILTER (WHERE age >= 1), 0) AS py1,
           coalesce(sum(fast_before * y * y) FILTER (WHERE age >= 1), 0) AS py2,
           coalesce(sum(slow_before * u) FILTER (WHERE age >= 1), 0) AS pu1,
           coalesce(sum(fast_before * dd * dd) FILTER (WHERE age >= 1), 0) / 2 AS pd2
    FROM deviations
    GROUP BY rule_id, device_id
), baselines AS (
    SELECT s.*, m.*,
           s.centre + m.after1 AS mean_after, greatest(m.after2 - m.after1 * m.after1, 0) AS var_after,
           -- a baseline that never moved still has a width: a thousandth of its level, at least 0.001
           greatest(sqrt(greatest(m.before2 - m.before1 * m.before1, 0)),
                    1e-3 * greatest(abs(s.centre + m.before1), 1)) AS sd_before,
           greatest(sqrt(m.noise_before), 1e-3 * greatest(abs(s.centre + m.before1), 1)) AS noise_sd_before
    FROM sums s
    CROSS JOIN LATERAL (
        SELECT anomaly_flush(s.alpha * s.py1) AS before1, anomaly_flush(s.alpha * s.y1) AS after1,
               anomaly_decay(s.alpha, s.k - 1) * s.var0 + s.alpha * s.py2 AS before2,
               anomaly_decay(s.alpha, s.k) * s.var0 + s.alpha * s.y2 AS after2,
               s.centre + anomaly_decay(s.slow_alpha, s.k - 1) * s.slow0 + s.slow_alpha * s.pu1 AS slow_before,
               s.centre + anomaly_decay(s.slow_alpha, s.k) * s.slow0 + s.slow_alpha * s.u1 AS slow_after,
               anomaly_decay(s.alpha, s.k - 1) * s.noise0 + s.alpha * s.pd2 AS noise_before,
               anomaly_decay(s.alpha, s.k) * s.noise0 + s.alpha * s.d2 AS noise_after
    ) m
), judged AS (
    SELECT b.*, z.score, z.drift, z.level, b.samples0 + b.k - 1 >= b.warmup_buckets AS warm
    FROM baselines b
    CROSS JOIN LATERAL (
        SELECT (b.newest - (b.centre + b.before1)) / b.sd_before AS score,
               (b.mean_after - b.slow_before) / b.noise_sd_before AS drift,
               (b.newest - b.slow_before) / b.noise_sd_before AS level
    ) z
)
INSERT INTO alert_rule_state AS s (tenant_id, rule_id, device_id, breaches, cleared, last_value, evaluated_at,
                                   samples, ewma_mean, ewma_var, slow_mean, noise_var, watermark, last_score,
                                   last_drift)
SELECT %(tenant_id)s, rule_id, device_id,
       CASE WHEN warm AND (abs(score) > sensitivity OR abs(drift) > 1.25 * sensitivity) THEN 1 ELSE 0 END,
       NOT warm OR (abs(score) <= clear_value AND abs(level) <= 0.625 * sensitivity),
       newest, now(), samples0 + k, mean_after, var_after, slow_after, noise_after, upto, score, drift
FROM judged
ON CONFLICT (tenant_id, rule_id, device_id) DO UPDATE
SET breaches = CASE WHEN EXCLUDED.breaches = 1 THEN s.breaches + 1 ELSE 0 END,
    cleared = EXCLUDED.cleared, last_value = EXCLUDED.last_value, evaluated_at = EXCLUDED.evaluated_at,
    samples = EXCLUDED.samples, ewma_mean = EXCLUDED.ewma_mean, ewma_var = EXCLUDED.ewma_var,
    slow_mean = EXCLUDED.slow_mean, noise_var = EXCLUDED.noise_var, watermark = EXCLUDED.watermark,
    last_score = EXCLUDED.last_score, last_drift = EXCLUDED.last_drift

-- open_alert_events --
-- An event for each (rule, device) evaluated in this transaction with enough consecutive breaches;
-- one already open or acknowledged stays the only one (the partial unique index), so repeated and
-- overlapping runs add nothing.
INSERT INTO alert_events (tenant_id, rule_id, device_id, severity, value)
SELECT s.tenant_id, s.rule_id, s.device_id, r.severity, s.last_value
FROM alert_rule_state s
JOIN alert_rules r ON r.tenant_id = s.tenant_id AND r.id = s.rule_id
WHERE s.tenant_id = %(tenant_id)s AND s.evaluated_at = now() AND s.breaches >= r.consecutive
ON CONFLICT (tenant_id, rule_id, device_id) WHERE state <> 'resolved' DO NOTHING
RETURNING id

-- resolve_cleared_alert_events --
-- Open and acknowledged events whose condition cleared in this transaction's evaluation; resolved_by
-- stays NULL (the evaluator, not a user).
UPDATE alert_events e
SET state = 'resolved', resolved_at = now()
FROM alert_rule_state s
WHERE e.tenant_id = %(tenant_id)s AND s.tenant_id = e.tenant_id AND s.rule_id = e.rule_id
  AND s.device_id = e.device_id AND e.state <> 'resolved' AND s.evaluated_at = now() AND s.cleared
RETURNING e.id

-- reset_alert_breaches --
-- A user resolved the event: the rule counts its N consecutive breaches afresh before opening another.
UPDATE alert_rule_state SET breaches = 0
WHERE tenant_id = %(tenant_id)s AND rule_id = %(rule_id)s AND device_id = %(device_id)s
