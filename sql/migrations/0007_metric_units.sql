-- Metric metadata and per-minute ingest counts, both kept by the drain in the transaction of the
-- batch they describe (issue 12 §3 "metric metadata", §5 "reads for dashboards").

-- One row per (tenant, device, metric) the device ever sent: the unit its /state payloads give
-- (telemetry payloads carry none, so a later telemetry reading keeps the unit) and its newest
-- reading, so "latest values" reads a handful of rows instead of the telemetry partitions.
-- The drain merges the distinct metrics of a batch once per batch, never once per reading.
-- first_seen is when the drain first stored the metric (wall clock), not a device timestamp.
CREATE TABLE device_metrics (
    tenant_id        uuid NOT NULL,
    device_id        bigint NOT NULL,
    metric           text NOT NULL,
    unit             text CHECK (length(unit) BETWEEN 1 AND 32),
    first_seen       timestamptz NOT NULL DEFAULT now(),
    last_ts          timestamptz NOT NULL,
    last_seq         bigint NOT NULL DEFAULT 0,
    last_value       double precision,
    last_value_bool  boolean,
    last_value_text  text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id, metric),
    -- A deleted device takes its metadata with it (RI actions run as the table owner, past RLS).
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT device_metrics_one_value CHECK (num_nonnulls(last_value, last_value_bool, last_value_text) = 1)
);

ALTER TABLE device_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_metrics FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_metrics FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
-- The drain merges for every tenant (sql/queries/ingest.sql merge_device_metrics). MERGE also needs
-- a SELECT policy on the existing rows; the column grants below keep the values themselves
-- unreadable to it (it compares only last_ts/last_seq and keeps the unit).
CREATE POLICY ingest_insert ON device_metrics FOR INSERT TO mqtt_saas_ingest WITH CHECK (true);
CREATE POLICY ingest_update ON device_metrics FOR UPDATE TO mqtt_saas_ingest USING (true) WITH CHECK (true);
CREATE POLICY ingest_conflict ON device_metrics FOR SELECT TO mqtt_saas_ingest USING (true);
GRANT SELECT ON device_metrics TO mqtt_saas_app;
GRANT SELECT (tenant_id, device_id, metric, unit, last_ts, last_seq) ON device_metrics TO mqtt_saas_ingest;
GRANT INSERT (tenant_id, device_id, metric, unit, last_ts, last_seq, last_value, last_value_bool, last_value_text)
    ON device_metrics TO mqtt_saas_ingest;
GRANT UPDATE (unit, last_ts, last_seq, last_value, last_value_bool, last_value_text, updated_at)
    ON device_metrics TO mqtt_saas_ingest;

-- Readings stored before this migration: their newest value per metric (no unit was kept).
INSERT INTO device_metrics (tenant_id, device_id, metric, first_seen, last_ts, last_seq,
                            last_value, last_value_bool, last_value_text)
SELECT DISTINCT ON (t.tenant_id, t.device_id, t.metric)
       t.tenant_id, t.device_id, t.metric, now(), t.ts, t.seq, t.value, t.value_bool, t.value_text
FROM telemetry AS t
JOIN devices AS d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
ORDER BY t.tenant_id, t.device_id, t.metric, t.ts DESC, t.seq DESC;

-- Messages (and readings) the drain stored per tenant and minute (its transaction's clock), and
-- the dead letters it could attribute to a tenant: GET /api/admin/ingest's messages per minute,
-- without scanning telemetry (which has no index on received_at). One upsert per tenant per batch;
-- 1,440 small rows per active tenant and day (retention is the data-retention job's, issue 14).
CREATE TABLE ingest_minute_counts (
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    minute         timestamptz NOT NULL,
    messages       bigint NOT NULL DEFAULT 0,
    readings       bigint NOT NULL DEFAULT 0,
    dead_lettered  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, minute)
);

ALTER TABLE ingest_minute_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE ingest_minute_counts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ingest_minute_counts FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY ingest_insert ON ingest_minute_counts FOR INSERT TO mqtt_saas_ingest WITH CHECK (true);
CREATE POLICY ingest_update ON ingest_minute_counts FOR UPDATE TO mqtt_saas_ingest USING (true) WITH CHECK (true);
CREATE POLICY ingest_conflict ON ingest_minute_counts FOR SELECT TO mqtt_saas_ingest USING (true);
GRANT SELECT ON ingest_minute_counts TO mqtt_saas_app;
GRANT SELECT, INSERT, UPDATE (messages, readings, dead_lettered) ON ingest_minute_counts TO mqtt_saas_ingest;
