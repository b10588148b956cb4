-- jit_off --
-- For this transaction only. The rollup and series statements are many small index lookups the
-- planner prices high (one per bucket): past jit_above_cost PostgreSQL spends a second or more
-- compiling each one, far more than running it.
SELECT set_config('jit', 'off', true);

-- rollup_watermark --
-- For the series read (app role, 0011): how far the rollups are complete; NULL before a first run.
SELECT watermark FROM rollup_state WHERE name = %(name)s;

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
    -- date_bin, not date_trunc: UTC minutes and hours whatever the session's TimeZone (a zone
    -- offset by half an hour would shift date_trunc's hours off the series read's buckets).
    SELECT DISTINCT tenant_id, device_id, metric,
           date_bin(interval '1 minute', ts, timestamptz '2000-01-01 00:00:00+00') AS bucket
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
RETURNING date_bin(interval '1 hour', r.bucket, timestamptz '2000-01-01 00:00:00+00') AS hour, r.tenant_id, r.device_id, r.metric;

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

-- series_from_rollup --
-- A device's metric bucketed by %(bucket)s over [from, to), exactly as series_buckets (reads.sql)
-- answers from raw. {rollup} is the minute or the hour rollup table (shared/telemetry/rollups.py names it)
-- and %(width)s its bucket width. The rollups hold every bucket in [body_from, body_to) except
-- the "dirty" ones: a bucket that got a reading received after the watermark (late data, or rows the
-- next run has not reached) may not be in its rollup yet, so it is read from raw. Every other
-- bucket had all its readings received at or before the watermark, hence rolled up after they
-- were committed (ROLLUP_LAG_S covers the drain's commit delay). The head [from, body_from) and
-- the tail [body_to, to) come from raw. Each reading is counted in exactly one part.
-- The dirty search reads rows received after the watermark (BRIN on received_at): a few minutes
-- of traffic when the timer keeps up, not the range's rows.
WITH dirty AS (
    SELECT DISTINCT date_bin(%(width)s::interval, ts, timestamptz '2000-01-01 00:00:00+00') AS bucket
    FROM telemetry
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND ts >= %(body_from)s AND ts < %(body_to)s AND received_at > %(watermark)s AND value IS NOT NULL
), parts AS (
    -- Head and tail apart: an OR of the two ranges would keep every partition (no pruning).
    SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00') AS ts,
           count(value) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
    FROM telemetry
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND ts >= %(from)s AND ts < %(body_from)s AND value IS NOT NULL
    GROUP BY 1
    UNION ALL
    SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00'),
           count(value), sum(value), min(value), max(value)
    FROM telemetry
    WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
      AND ts >= %(body_to)s AND ts < %(to)s AND value IS NOT NULL
    GROUP BY 1
    UNION ALL
    SELECT date_bin(%(bucket)s::interval, r.bucket, timestamptz '2000-01-01 00:00:00+00'),
           sum(r.count), sum(r.sum), min(r.min), max(r.max)
    FROM {rollup} AS r
    WHERE r.tenant_id = %(tenant_id)s AND r.device_id = %(device_id)s AND r.metric = %(metric)s
      AND r.bucket >= %(body_from)s AND r.bucket < %(body_to)s
      AND NOT EXISTS (SELECT FROM dirty AS d WHERE d.bucket = r.bucket)
    GROUP BY 1
    UNION ALL
    SELECT date_bin(%(bucket)s::interval, d.bucket, timestamptz '2000-01-01 00:00:00+00'),
           sum(a.count), sum(a.sum), min(a.min), max(a.max)
    FROM dirty AS d
    CROSS JOIN LATERAL (
        SELECT count(t.value) AS count, sum(t.value) AS sum, min(t.value) AS min, max(t.value) AS max
        FROM telemetry AS t
        WHERE t.tenant_id = %(tenant_id)s AND t.device_id = %(device_id)s AND t.metric = %(metric)s
          AND t.ts >= d.bucket AND t.ts < d.bucket + %(width)s::interval AND t.value IS NOT NULL
          -- the body's bounds again, constants: the plan keeps only the body's partitions
          AND t.ts >= %(body_from)s AND t.ts < %(body_to)s
    ) AS a
    GROUP BY 1
)
SELECT ts, sum(sum) / sum(count)::double precision AS avg, min(min) AS min, max(max) AS max,
       sum(count)::bigint AS count
FROM parts GROUP BY ts ORDER BY ts;

