-- tenant_retention --
-- Each tenant's raw retention in days from its plan (plans.raw_retention_days, 0008; NULL:
-- unlimited). Read on every run, so a plan change (or a plan's new window) counts from the next.
SELECT t.id AS tenant_id, t.plan, p.raw_retention_days
FROM tenants t JOIN plans p ON p.name = t.plan
ORDER BY t.id;

-- archive_candidates --
-- (tenant, UTC day) pairs that need archiver work: days before the tenant's hot window that still
-- hold its rows (in a day partition, or in telemetry_default), and days whose manifest row is
-- not finished. Oldest first, so a run cut short by its budget resumes in order.
WITH retention AS (
    SELECT * FROM unnest(%(tenant_ids)s::uuid[], %(cutoffs)s::date[]) AS r (tenant_id, cutoff)
),
parts AS (
    SELECT to_date(substr(c.relname, 11), 'YYYYMMDD') AS day
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'public.telemetry'::regclass AND c.relname ~ '^telemetry_[0-9]{8}$'
),
days AS (
    SELECT r.tenant_id, p.day FROM retention r JOIN parts p ON p.day < r.cutoff
    WHERE EXISTS (SELECT 1 FROM telemetry x WHERE x.tenant_id = r.tenant_id
                  AND x.ts >= p.day::timestamp AT TIME ZONE 'UTC'
                  AND x.ts < (p.day + 1)::timestamp AT TIME ZONE 'UTC')
    UNION
    SELECT d.tenant_id, (d.ts AT TIME ZONE 'UTC')::date FROM telemetry_default d
    JOIN retention r ON r.tenant_id = d.tenant_id AND (d.ts AT TIME ZONE 'UTC')::date < r.cutoff
    UNION
    SELECT m.tenant_id, m.day FROM archive_manifest m WHERE m.state <> 'deleted'
)
SELECT tenant_id, day FROM days ORDER BY day, tenant_id;

-- count_day --
-- How many rows one tenant's day holds now.
SELECT count(*) AS rows FROM telemetry
WHERE tenant_id = %(tenant_id)s
  AND ts >= %(day)s::date::timestamp AT TIME ZONE 'UTC' AND ts < (%(day)s::date + 1)::timestamp AT TIME ZONE 'UTC';

-- delete_day --
-- Deletes one tenant's archived day; the caller compares the count with the manifest's.
DELETE FROM telemetry
WHERE tenant_id = %(tenant_id)s
  AND ts >= %(day)s::date::timestamp AT TIME ZONE 'UTC' AND ts < (%(day)s::date + 1)::timestamp AT TIME ZONE 'UTC';

-- get_manifest --
-- The manifest row of one tenant's day, locked until the step that reads it commits.
SELECT * FROM archive_manifest WHERE tenant_id = %(tenant_id)s AND day = %(day)s FOR UPDATE;

-- record_pending --
-- A freshly written file: (re)starts the day at pending with the file's figures.
INSERT INTO archive_manifest (tenant_id, day, state, blob_name, row_count, bytes, sha256, schema_version)
VALUES (%(tenant_id)s, %(day)s, 'pending', %(blob_name)s, %(row_count)s, %(bytes)s, %(sha256)s, %(schema_version)s)
ON CONFLICT (tenant_id, day) DO UPDATE
SET state = 'pending', blob_name = EXCLUDED.blob_name, row_count = EXCLUDED.row_count, bytes = EXCLUDED.bytes,
    sha256 = EXCLUDED.sha256, schema_version = EXCLUDED.schema_version, updated_at = now()
WHERE archive_manifest.state <> 'deleted';

-- set_manifest_state --
-- Moves a day one step on, only from the state the step started from.
UPDATE archive_manifest SET state = %(to)s, updated_at = now()
WHERE tenant_id = %(tenant_id)s AND day = %(day)s AND state = %(from)s;

-- archived_days --
-- A tenant's archived days in [from, to] (restore): verified blobs, whether or not the rows are deleted yet.
SELECT * FROM archive_manifest
WHERE tenant_id = %(tenant_id)s AND state IN ('verified', 'deleted') AND day BETWEEN %(from)s AND %(to)s
ORDER BY day;

-- tenant_by_slug_or_id --
-- The tenant a restore names, by slug or id.
SELECT id, slug FROM tenants WHERE slug = %(tenant)s OR id::text = %(tenant)s;

-- ensure_partitions_ahead --
-- Creates the missing day partitions in [from, to] (SECURITY DEFINER, from 0002).
SELECT ensure_telemetry_partitions(%(from)s, %(to)s) AS created;

-- drop_empty_partitions --
-- Drops the day partitions before a day that hold no rows (SECURITY DEFINER, from 0010).
SELECT drop_empty_telemetry_partitions(%(before)s) AS name;

-- try_archiver_lock --
-- One archiver at a time (session lock, released when the run ends or its connection drops).
SELECT pg_try_advisory_lock(hashtextextended('mqtt_saas.blob_archiver', 0)) AS locked;

-- release_archiver_lock --
-- Ends the run's hold on the archiver lock.
SELECT pg_advisory_unlock(hashtextextended('mqtt_saas.blob_archiver', 0)) AS released;

-- export_range_csv_raw --
-- One tenant's readings in [from, to), optionally one device's, in the archive's column order, as
-- CSV for pyarrow: the archiver's day files (as the maintenance role) and POST /api/exports as
-- Parquet (in the caller's tenant_transaction). ts and received_at as epoch microseconds: exact,
-- and no time-zone text to parse.
COPY (
    SELECT t.device_id, d.name, t.metric,
           (extract(epoch FROM t.ts) * 1000000)::bigint,
           t.seq,
           (extract(epoch FROM t.received_at) * 1000000)::bigint,
           t.value, t.value_bool, t.value_text
    FROM telemetry t LEFT JOIN devices d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
    WHERE t.tenant_id = %(tenant_id)s AND t.ts >= %(from)s AND t.ts < %(to)s
      AND (%(device_id)s::bigint IS NULL OR t.device_id = %(device_id)s)
    ORDER BY t.device_id, t.metric, t.ts, t.seq
) TO STDOUT (FORMAT csv);

-- export_range_rows --
-- POST /api/exports as CSV: the same rows for people and spreadsheets, UTC ISO 8601 timestamps
-- whatever the session's time zone. Rows, not COPY: every text cell goes through
-- shared/core/spreadsheet.py on its way into the file (a device's text reading may be a formula).
SELECT t.device_id, d.name AS device, t.metric,
       to_char(t.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ts, t.seq,
       to_char(t.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS received_at,
       t.value, t.value_bool, t.value_text
FROM telemetry t LEFT JOIN devices d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
WHERE t.tenant_id = %(tenant_id)s AND t.ts >= %(from)s AND t.ts < %(to)s
  AND (%(device_id)s::bigint IS NULL OR t.device_id = %(device_id)s)
ORDER BY t.device_id, t.metric, t.ts, t.seq;

-- delete_old_decoder_events --
-- What device decoders saw (Sparkplug gaps, rebirth requests, births, deaths) past its retention, oldest
-- first and at most max_rows a run: the next hourly run takes the rest.
WITH gone AS (
    DELETE FROM device_decoder_events e
    WHERE (e.tenant_id, e.id) IN (SELECT o.tenant_id, o.id FROM device_decoder_events o
                                  WHERE o.at < %(before)s ORDER BY o.at LIMIT %(max_rows)s)
    RETURNING 1
)
SELECT count(*) AS deleted FROM gone
