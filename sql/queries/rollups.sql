-- jit_off --
-- For this transaction only. The rollup and series statements are many small index lookups the
-- planner prices high (one per bucket): past jit_above_cost PostgreSQL spends a second or more
-- compiling each one, far more than running it.
SELECT set_config('jit', 'off', true);

-- lock_rollup_state --
-- The job's watermark, locked for this transaction; no row when another run holds it, so two
-- overlapping timer runs never roll up the same window twice at once.
SELECT watermark, now() AS now FROM rollup_state WHERE name = %(name)s FOR UPDATE SKIP LOCKED;

-- first_received_at --
-- Where a job that has never run starts: just before the oldest row.
SELECT min(received_at) - interval '1 microsecond' AS watermark FROM telemetry;

-- advance_rollup_state --
-- Moves the watermark in the transaction that wrote the rollups up to it.
UPDATE rollup_state SET watermark = %(watermark)s, updated_at = now() WHERE name = %(name)s;

-- rollup_minutes --
-- Recomputes from raw every minute bucket that got a numeric row with received_at in
-- (from, to], whatever its ts (late data), and upserts it: a re-run writes the same values.
-- min_ts prunes partitions: the drain accepts no reading older than its INGEST_MAX_PAST_DAYS.
-- LATERAL: one index range scan (tenant, device, metric, ts) per touched bucket, in the one
-- partition its ts falls in; a plain join lets the planner sort-merge the whole table.
WITH touched AS (
    SELECT DISTINCT tenant_id, device_id, metric, date_trunc('minute', ts) AS bucket
    FROM telemetry
    WHERE received_at > %(from)s AND received_at <= %(to)s AND ts >= %(min_ts)s AND value IS NOT NULL
)
INSERT INTO telemetry_rollup_1m AS r (tenant_id, device_id, metric, bucket, count, sum, min, max, last, last_ts, last_seq)
SELECT k.tenant_id, k.device_id, k.metric, k.bucket, a.count, a.sum, a.min, a.max, a.last, a.last_ts, a.last_seq
FROM touched k
CROSS JOIN LATERAL (
    SELECT count(*) AS count, sum(t.value) AS sum, min(t.value) AS min, max(t.value) AS max,
           (array_agg(t.value ORDER BY t.ts DESC, t.seq DESC))[1] AS last,
           max(t.ts) AS last_ts,
           (array_agg(t.seq ORDER BY t.ts DESC, t.seq DESC))[1] AS last_seq
    FROM telemetry t
    WHERE t.tenant_id = k.tenant_id AND t.device_id = k.device_id AND t.metric = k.metric
      AND t.ts >= k.bucket AND t.ts < k.bucket + interval '1 minute' AND t.value IS NOT NULL
) a
ON CONFLICT (tenant_id, device_id, metric, bucket) DO UPDATE
SET count = EXCLUDED.count, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
    last = EXCLUDED.last, last_ts = EXCLUDED.last_ts, last_seq = EXCLUDED.last_seq
RETURNING date_trunc('hour', r.bucket) AS hour, r.tenant_id, r.device_id, r.metric;

-- rollup_hours --
-- Recomputes the given hour buckets from their minute buckets (which outlive the raw rows).
WITH touched AS (
    SELECT DISTINCT * FROM unnest(%(tenant_ids)s::uuid[], %(device_ids)s::bigint[], %(metrics)s::text[],
                                  %(hours)s::timestamptz[]) AS k (tenant_id, device_id, metric, bucket)
)
INSERT INTO telemetry_rollup_1h (tenant_id, device_id, metric, bucket, count, sum, min, max, last, last_ts, last_seq)
SELECT k.tenant_id, k.device_id, k.metric, k.bucket, a.count, a.sum, a.min, a.max, a.last, a.last_ts, a.last_seq
FROM touched k
CROSS JOIN LATERAL (
    SELECT sum(m.count) AS count, sum(m.sum) AS sum, min(m.min) AS min, max(m.max) AS max,
           (array_agg(m.last ORDER BY m.last_ts DESC, m.last_seq DESC))[1] AS last,
           max(m.last_ts) AS last_ts,
           (array_agg(m.last_seq ORDER BY m.last_ts DESC, m.last_seq DESC))[1] AS last_seq
    FROM telemetry_rollup_1m m
    WHERE m.tenant_id = k.tenant_id AND m.device_id = k.device_id AND m.metric = k.metric
      AND m.bucket >= k.bucket AND m.bucket < k.bucket + interval '1 hour'
) a
WHERE a.count IS NOT NULL
ON CONFLICT (tenant_id, device_id, metric, bucket) DO UPDATE
SET count = EXCLUDED.count, sum = EXCLUDED.sum, min = EXCLUDED.min, max = EXCLUDED.max,
    last = EXCLUDED.last, last_ts = EXCLUDED.last_ts, last_seq = EXCLUDED.last_seq;

-- delete_old_rollups_1m --
-- Minute rollups past their retention (a setting; they outlive the raw rows).
DELETE FROM telemetry_rollup_1m WHERE bucket < %(before)s;

-- delete_old_rollups_1h --
-- Hour rollups past their retention.
DELETE FROM telemetry_rollup_1h WHERE bucket < %(before)s;

-- series_from_rollup_1m --
-- A device's metric bucketed by %(bucket)s over [from, to), as series_buckets (reads.sql) answers
-- from raw: whole minutes in [body_from, body_to) from the 1-minute rollups, the ragged head and
-- the recent tail (which the rollups may not hold yet) from raw, merged per output bucket.
WITH parts AS (
    SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00') AS ts,
           count(value) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
    FROM telemetry
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND ts >= %(from)s AND ts < %(body_from)s AND value IS NOT NULL
    GROUP BY 1
    UNION ALL
    SELECT date_bin(%(bucket)s::interval, bucket, timestamptz '2000-01-01 00:00:00+00'),
           sum(count), sum(sum), min(min), max(max)
    FROM telemetry_rollup_1m
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND bucket >= %(body_from)s AND bucket < %(body_to)s
    GROUP BY 1
    UNION ALL
    SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00'),
           count(value), sum(value), min(value), max(value)
    FROM telemetry
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND ts >= %(body_to)s AND ts < %(to)s AND value IS NOT NULL
    GROUP BY 1
)
SELECT ts, sum(sum) / sum(count)::double precision AS avg, min(min) AS min, max(max) AS max,
       sum(count)::bigint AS count
FROM parts GROUP BY ts ORDER BY ts;

-- series_from_rollup_1h --
-- As series_from_rollup_1m, with whole hours from the 1-hour rollups.
WITH parts AS (
    SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00') AS ts,
           count(value) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
    FROM telemetry
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND ts >= %(from)s AND ts < %(body_from)s AND value IS NOT NULL
    GROUP BY 1
    UNION ALL
    SELECT date_bin(%(bucket)s::interval, bucket, timestamptz '2000-01-01 00:00:00+00'),
           sum(count), sum(sum), min(min), max(max)
    FROM telemetry_rollup_1h
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND bucket >= %(body_from)s AND bucket < %(body_to)s
    GROUP BY 1
    UNION ALL
    SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00'),
           count(value), sum(value), min(value), max(value)
    FROM telemetry
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND ts >= %(body_to)s AND ts < %(to)s AND value IS NOT NULL
    GROUP BY 1
)
SELECT ts, sum(sum) / sum(count)::double precision AS avg, min(min) AS min, max(max) AS max,
       sum(count)::bigint AS count
FROM parts GROUP BY ts ORDER BY ts;
