-- Reads for dashboards (shared/telemetry/reads.py). Every query runs in tenant_transaction and also
-- names the tenant, so RLS and the index prefix (tenant_id first everywhere) agree.

-- device_exists --
SELECT id FROM devices WHERE tenant_id = %(tenant_id)s AND id = %(device_id)s

-- latest_metrics --
-- The newest reading of each metric the device sent (device_metrics, kept by the drain).
SELECT metric, unit, last_ts AS ts, last_value AS value, last_value_bool AS value_bool,
       last_value_text AS value_text, first_seen
FROM device_metrics
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s
ORDER BY metric

-- metric_meta --
SELECT unit, last_value IS NOT NULL AS numeric
FROM device_metrics
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s

-- fleet_counts --
-- A disabled device counts as disabled whatever its last status was.
SELECT count(*) FILTER (WHERE enabled AND status = 'online') AS online,
       count(*) FILTER (WHERE enabled AND status = 'offline') AS offline,
       count(*) FILTER (WHERE enabled AND status = 'never_seen') AS never_seen,
       count(*) FILTER (WHERE NOT enabled) AS disabled,
       count(*) AS total
FROM devices
WHERE tenant_id = %(tenant_id)s

-- series_buckets --
-- One metric of one device in [from, to), bucketed: the dedup index (tenant_id, device_id,
-- metric, ts, seq) finds the range in each day partition the ts bounds leave (pruned at plan time:
-- the bounds are parameters, not now()). Only numbers are aggregated: a row of another type has
-- value NULL and adds nothing. Buckets start on multiples of the width from 2000-01-01 UTC, so
-- the same width always gives the same bucket boundaries.
SELECT date_bin(%(bucket)s::interval, ts, timestamptz '2000-01-01 00:00:00+00') AS ts,
       avg(value) AS avg, min(value) AS min, max(value) AS max, count(value) AS count
FROM telemetry
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND metric = %(metric)s
  AND ts >= %(from)s AND ts < %(to)s AND value IS NOT NULL
GROUP BY 1
ORDER BY 1

-- ingest_per_minute --
-- What the drain stored for this tenant per minute (ingest_minute_counts, kept by the drain).
SELECT minute, messages, readings, dead_lettered
FROM ingest_minute_counts
WHERE tenant_id = %(tenant_id)s AND minute >= date_trunc('minute', now()) - %(minutes)s * interval '1 minute'
ORDER BY minute

-- dead_letters_by_reason --
SELECT reason, count(*) AS count, max(received_at) AS last_at
FROM dead_letters
WHERE tenant_id = %(tenant_id)s AND received_at >= now() - %(minutes)s * interval '1 minute'
GROUP BY reason
ORDER BY count DESC, reason

-- dead_letters_page --
-- Newest first; the cursor is the last id of the previous page (ids only grow).
SELECT dl.id, dl.received_at, dl.device_id, d.name AS device_name, dl.topic, dl.reason, dl.detail,
       dl.payload, dl.payload_bytes
FROM dead_letters AS dl
LEFT JOIN devices AS d ON d.tenant_id = dl.tenant_id AND d.id = dl.device_id
WHERE dl.tenant_id = %(tenant_id)s AND (%(before_id)s::bigint IS NULL OR dl.id < %(before_id)s)
ORDER BY dl.id DESC
LIMIT %(limit)s

-- recent_ingest_runs --
-- Platform-wide runs: only when and how each went, and its lag. Their message counts and error
-- texts are left out: they describe every tenant's traffic and the platform's internals.
SELECT started_at, finished_at, status, max_lag_ms,
       extract(epoch FROM finished_at - started_at) * 1000 AS duration_ms
FROM ingest_runs
ORDER BY started_at DESC
LIMIT %(limit)s

-- quiet_devices --
-- Enabled devices that stored nothing lately: seen, but not within the window, or never seen
-- though their messages were dead-lettered (a device that has sent nothing at all is not news).
SELECT d.id, d.name, d.status, d.last_seen, coalesce(dl.dead_letters, 0) AS dead_letters,
       dl.last_reason
FROM devices AS d
LEFT JOIN LATERAL (
    SELECT count(*) AS dead_letters,
           (array_agg(reason ORDER BY received_at DESC))[1] AS last_reason
    FROM dead_letters
    WHERE tenant_id = d.tenant_id AND device_id = d.id
      AND received_at >= now() - %(quiet_minutes)s * interval '1 minute'
) AS dl ON true
WHERE d.tenant_id = %(tenant_id)s AND d.enabled
  AND (d.last_seen < now() - %(quiet_minutes)s * interval '1 minute'
       OR (d.last_seen IS NULL AND dl.dead_letters > 0))
ORDER BY d.last_seen NULLS FIRST, d.id
LIMIT %(limit)s

-- status_history --
-- One device's status changes, newest first, before the cursor's id if given (ids grow with time:
-- one drain writes at a time).
SELECT id, status, previous, at
FROM device_status_history
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s
