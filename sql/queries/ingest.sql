-- try_drain_lock --
-- One drain at a time: timers are at-least-once and a lost lease can start a second run while
-- the first still works. Session-level, so it holds across the run's transactions.
SELECT pg_try_advisory_lock(%(key)s)

-- release_drain_lock --
-- At the end of a run, before the session closes (a closed session's locks go only when its backend exits).
SELECT pg_advisory_unlock(%(key)s)

-- create_staging --
-- Per-connection staging for COPY; emptied by every commit.
CREATE TEMP TABLE IF NOT EXISTS ingest_staging (
    tenant_id uuid, device_id bigint, metric text, ts_us bigint, seq bigint,
    value double precision, value_bool boolean, value_text text
) ON COMMIT DELETE ROWS

-- copy_staging --
COPY ingest_staging (tenant_id, device_id, metric, ts_us, seq, value, value_bool, value_text) FROM STDIN

-- insert_from_staging --
-- A redelivered reading hits the dedup key and is skipped; rowcount is what was new.
INSERT INTO telemetry (tenant_id, device_id, ts, seq, value, value_bool, metric, value_text)
SELECT tenant_id, device_id, timestamptz 'epoch' + ts_us * interval '1 microsecond', seq,
       value, value_bool, metric, value_text
FROM ingest_staging
ON CONFLICT DO NOTHING

-- insert_dead_letter --
INSERT INTO dead_letters (tenant_id, device_id, topic, reason, detail, payload, payload_bytes, profile)
VALUES (%(tenant_id)s, %(device_id)s, %(topic)s, %(reason)s, %(detail)s, %(payload)s, %(payload_bytes)s,
        %(profile)s)

-- update_presence --
-- last_seen only moves forward; status_changed_at moves only when the status does, and each change
-- is appended to device_status_history. `o` is the row as the statement found it (a self-join sees
-- the old values), so the history knows what the status was.
WITH changed AS (
    UPDATE devices AS d
    SET last_seen = greatest(d.last_seen, v.last_seen),
        status = v.status,
        status_changed_at = CASE WHEN d.status = v.status THEN d.status_changed_at ELSE now() END
    FROM unnest(%(tenant_ids)s::uuid[], %(device_ids)s::bigint[],
                %(last_seen)s::timestamptz[], %(statuses)s::text[]) AS v (tenant_id, device_id, last_seen, status),
         devices AS o
    WHERE d.tenant_id = v.tenant_id AND d.id = v.device_id AND o.tenant_id = d.tenant_id AND o.id = d.id
    RETURNING d.tenant_id, d.id, d.status, o.status AS previous
)
INSERT INTO device_status_history (tenant_id, device_id, status, previous)
SELECT tenant_id, id, status, previous FROM changed WHERE status IS DISTINCT FROM previous

-- resolve_devices --
-- Topic names (tenant slug, device name) to ids, for the devices a batch mentions, with each one's
-- profile (a built-in's name, or the tenant profile's spec and version) and its decoder state.
SELECT t.slug, d.name, d.tenant_id, d.id, d.enabled, d.builtin_profile, p.id, p.name, p.spec, p.updated_at, s.state
FROM unnest(%(slugs)s::text[], %(names)s::text[]) AS k (slug, name)
JOIN tenants AS t ON t.slug = k.slug
JOIN devices AS d ON d.tenant_id = t.id AND d.name = k.name
LEFT JOIN device_profiles AS p ON p.tenant_id = d.tenant_id AND p.id = d.profile_id
LEFT JOIN device_decoder_state AS s ON s.tenant_id = d.tenant_id AND s.device_id = d.id

-- ensure_partitions --
SELECT ensure_telemetry_partitions(current_date - %(past_days)s, current_date + %(future_days)s)

-- start_run --
INSERT INTO ingest_runs DEFAULT VALUES RETURNING id

-- record_skipped_run --
INSERT INTO ingest_runs (status, finished_at, error) VALUES ('skipped', now(), %(error)s)

-- finish_run --
UPDATE ingest_runs
SET finished_at = now(), status = %(status)s, messages = %(messages)s, readings = %(readings)s,
    accepted = %(accepted)s, duplicates = %(duplicates)s, dead_lettered = %(dead_lettered)s,
    batches = %(batches)s, max_lag_ms = %(max_lag_ms)s, error = %(error)s
WHERE id = %(run_id)s

-- merge_device_metrics --
-- Once per batch, in its transaction: the distinct metrics of the staged readings, each with its
-- newest reading and the unit a /state payload of the batch gave (shared/telemetry/reads.py reads
-- them). last_* only move forward: a reading that is not newer changes nothing, so an old
-- redelivered /state cannot bring back an old unit. MERGE rather than ON CONFLICT because an
-- upsert's excluded.* needs SELECT on those columns: the drain may compare last_ts/last_seq and
-- the unit, never read a stored value. (Only one drain writes at a time: the run lock.)
MERGE INTO device_metrics AS m
USING (
    SELECT n.tenant_id, n.device_id, n.metric, u.unit, timestamptz 'epoch' + n.ts_us * interval '1 microsecond' AS ts,
           n.seq, n.value, n.value_bool, n.value_text
    -- The newest ts per metric by hashing (a few groups), then only the rows at that ts sorted:
    -- sorting the whole staged batch took most of this statement's time.
    FROM (SELECT DISTINCT ON (r.tenant_id, r.device_id, r.metric)
                 r.tenant_id, r.device_id, r.metric, r.ts_us, r.seq, r.value, r.value_bool, r.value_text
          FROM ingest_staging AS r
          JOIN (SELECT tenant_id, device_id, metric, max(ts_us) AS ts_us
                FROM ingest_staging GROUP BY tenant_id, device_id, metric) AS newest
            ON newest.tenant_id = r.tenant_id AND newest.device_id = r.device_id AND newest.metric = r.metric
           AND newest.ts_us = r.ts_us
          ORDER BY r.tenant_id, r.device_id, r.metric, r.seq DESC) AS n
    LEFT JOIN unnest(%(unit_tenant_ids)s::uuid[], %(unit_device_ids)s::bigint[], %(unit_metrics)s::text[],
                     %(units)s::text[]) AS u (tenant_id, device_id, metric, unit)
           ON u.tenant_id = n.tenant_id AND u.device_id = n.device_id AND u.metric = n.metric
) AS s
ON m.tenant_id = s.tenant_id AND m.device_id = s.device_id AND m.metric = s.metric
WHEN MATCHED AND (s.ts, s.seq) >= (m.last_ts, m.last_seq) THEN
    UPDATE SET unit = coalesce(s.unit, m.unit), last_ts = s.ts, last_seq = s.seq, last_value = s.value,
               last_value_bool = s.value_bool, last_value_text = s.value_text, updated_at = now()
WHEN NOT MATCHED THEN
    INSERT (tenant_id, device_id, metric, unit, last_ts, last_seq, last_value, last_value_bool, last_value_text)
    VALUES (s.tenant_id, s.device_id, s.metric, s.unit, s.ts, s.seq, s.value, s.value_bool, s.value_text)

-- count_ingest_minute --
-- Per tenant, messages and readings the batch stored and its dead letters, in this minute. The
-- join skips a tenant deleted during the run (its foreign key would fail the batch's last write).
INSERT INTO ingest_minute_counts AS c (tenant_id, minute, messages, readings, dead_lettered)
SELECT v.tenant_id, date_trunc('minute', now()), v.messages, v.readings, v.dead_lettered
FROM unnest(%(tenant_ids)s::uuid[], %(messages)s::bigint[], %(readings)s::bigint[],
            %(dead_lettered)s::bigint[]) AS v (tenant_id, messages, readings, dead_lettered)
JOIN tenants AS t ON t.id = v.tenant_id
ORDER BY v.tenant_id
ON CONFLICT (tenant_id, minute) DO UPDATE
SET messages = c.messages + excluded.messages, readings = c.readings + excluded.readings,
    dead_lettered = c.dead_lettered + excluded.dead_lettered

-- upsert_decoder_states --
-- What stateful decoders remember per device, as of this batch (a device deleted meanwhile is skipped).
INSERT INTO device_decoder_state AS s (tenant_id, device_id, state)
SELECT v.tenant_id, v.device_id, v.state
FROM unnest(%(tenant_ids)s::uuid[], %(device_ids)s::bigint[], %(states)s::jsonb[]) AS v (tenant_id, device_id, state)
JOIN devices AS d ON d.tenant_id = v.tenant_id AND d.id = v.device_id
ORDER BY v.tenant_id, v.device_id
ON CONFLICT (tenant_id, device_id) DO UPDATE SET state = excluded.state, updated_at = now()

-- insert_decoder_events --
INSERT INTO device_decoder_events (tenant_id, device_id, kind, detail)
SELECT v.tenant_id, v.device_id, v.kind, v.detail
FROM unnest(%(tenant_ids)s::uuid[], %(device_ids)s::bigint[], %(kinds)s::text[], %(details)s::jsonb[])
     WITH ORDINALITY AS v (tenant_id, device_id, kind, detail, n)
JOIN devices AS d ON d.tenant_id = v.tenant_id AND d.id = v.device_id
ORDER BY v.n
