-- Rollups, retention and the blob archive (issue 14).
--
-- A third login role, mqtt_saas_maintenance, runs the rollup and archiver timers. They act for
-- every tenant, so it may read every tenant's telemetry and delete it, but only through narrow
-- policies; it owns nothing, is no superuser and has no BYPASSRLS, and it cannot write telemetry,
-- users or devices. What needs the owner (creating and dropping partitions) goes through
-- SECURITY DEFINER functions that check their own arguments.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mqtt_saas_maintenance') THEN
        CREATE ROLE mqtt_saas_maintenance NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO mqtt_saas_maintenance;
GRANT EXECUTE ON FUNCTION current_tenant_id() TO mqtt_saas_maintenance;

-- Which tenants exist and on which plan (the retention window is the plan's raw_retention_days).
CREATE POLICY maintenance_read ON tenants FOR SELECT TO mqtt_saas_maintenance USING (true);
GRANT SELECT (id, slug, plan) ON tenants TO mqtt_saas_maintenance;
GRANT SELECT ON plans TO mqtt_saas_maintenance;  -- raw_retention_days (0008)
-- Device names go into the archive files, so a data team can read them without our database.
CREATE POLICY maintenance_read ON devices FOR SELECT TO mqtt_saas_maintenance USING (true);
GRANT SELECT (tenant_id, id, name) ON devices TO mqtt_saas_maintenance;

-- Read every tenant's readings (rollups, archive export) and delete them once archived.
CREATE POLICY maintenance_read ON telemetry FOR SELECT TO mqtt_saas_maintenance USING (true);
CREATE POLICY maintenance_delete ON telemetry FOR DELETE TO mqtt_saas_maintenance USING (true);
GRANT SELECT, DELETE ON telemetry TO mqtt_saas_maintenance;
GRANT EXECUTE ON FUNCTION ensure_telemetry_partitions(date, date) TO mqtt_saas_maintenance;
-- Rows of a day that had no partition yet sit in telemetry_default; the archiver must find them
-- (a partition has no RLS of its own, and this role may read every tenant's rows anyway).
GRANT SELECT ON telemetry_default TO mqtt_saas_maintenance;

-- The rollups find rows by when they arrived (late data carries old ts). BRIN: a few pages per
-- partition, nearly free for the drain to maintain, since rows arrive in received_at order.
CREATE INDEX telemetry_received_at_brin ON telemetry USING brin (received_at) WITH (pages_per_range = 32);

-- 1-minute and 1-hour aggregates of numeric readings. avg is derived so it can never disagree
-- with sum/count; last is the value with the greatest (ts, seq) in the bucket.
CREATE TABLE telemetry_rollup_1m (
    tenant_id   uuid NOT NULL,
    device_id   bigint NOT NULL,
    metric      text NOT NULL,
    bucket      timestamptz NOT NULL,
    count       bigint NOT NULL CHECK (count > 0),
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    avg         double precision GENERATED ALWAYS AS (sum / count) STORED,
    last        double precision NOT NULL,
    last_ts     timestamptz NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (tenant_id, device_id, metric, bucket)
);
CREATE TABLE telemetry_rollup_1h (LIKE telemetry_rollup_1m INCLUDING ALL);
-- Retention deletes by bucket alone; buckets arrive nearly in order, so BRIN is enough and cheap.
CREATE INDEX telemetry_rollup_1m_bucket_brin ON telemetry_rollup_1m USING brin (bucket);
CREATE INDEX telemetry_rollup_1h_bucket_brin ON telemetry_rollup_1h USING brin (bucket);

-- One row per job: how far (in received_at) the rows have been rolled up.
CREATE TABLE rollup_state (
    name        text PRIMARY KEY,
    watermark   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rollup_state (name) VALUES ('telemetry');

ALTER TABLE telemetry_rollup_1m ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_rollup_1m FORCE ROW LEVEL SECURITY;
ALTER TABLE telemetry_rollup_1h ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_rollup_1h FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telemetry_rollup_1m FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY tenant_isolation ON telemetry_rollup_1h FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY maintenance_all ON telemetry_rollup_1m TO mqtt_saas_maintenance USING (true) WITH CHECK (true);
CREATE POLICY maintenance_all ON telemetry_rollup_1h TO mqtt_saas_maintenance USING (true) WITH CHECK (true);
GRANT SELECT ON telemetry_rollup_1m, telemetry_rollup_1h TO mqtt_saas_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON telemetry_rollup_1m, telemetry_rollup_1h TO mqtt_saas_maintenance;
GRANT SELECT, UPDATE ON rollup_state TO mqtt_saas_maintenance;

-- One row per tenant and archived UTC day. state only moves forward:
--   pending   the file was written locally; row_count/bytes/sha256 describe it
--   uploaded  the blob was written (overwriting any earlier attempt)
--   verified  the blob was read back: size, sha256 and row count equal the row's
--   deleted   the day's rows were deleted, in the same transaction that set this state
-- A crash leaves the row in the state of the last step that committed; the archiver redoes the
-- next step, and a pending row is redone from the start (re-export, overwrite).
CREATE TABLE archive_manifest (
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day             date NOT NULL,
    state           text NOT NULL CHECK (state IN ('pending', 'uploaded', 'verified', 'deleted')),
    blob_name       text NOT NULL,
    row_count       bigint NOT NULL CHECK (row_count >= 0),
    bytes           bigint NOT NULL CHECK (bytes >= 0),
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    schema_version  integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, day)
);
CREATE INDEX archive_manifest_open ON archive_manifest (day) WHERE state <> 'deleted';

ALTER TABLE archive_manifest ENABLE ROW LEVEL SECURITY;
ALTER TABLE archive_manifest FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON archive_manifest FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY maintenance_all ON archive_manifest TO mqtt_saas_maintenance USING (true) WITH CHECK (true);
GRANT SELECT ON archive_manifest TO mqtt_saas_app;
GRANT SELECT, INSERT, UPDATE ON archive_manifest TO mqtt_saas_maintenance;

-- Restored archives land here (scripts/restore_archive), never in telemetry itself: the data is
-- for analysis, and putting it back would fight the archiver.
CREATE SCHEMA archive_restore;
GRANT USAGE, CREATE ON SCHEMA archive_restore TO mqtt_saas_maintenance;

-- Drops the day partitions before p_before that hold no row any more; returns their names.
-- SECURITY DEFINER because only the owner may drop them. A partition is looked at directly
-- (partitions carry no row-level security), so FORCE'd RLS on the parent cannot make a
-- non-empty partition look empty. p_before is clamped to 32 days ago, so a mistaken argument
-- cannot drop the partitions the drain is writing to. lock_timeout keeps a busy partition from
-- stalling the drain: it is left for the next run.
CREATE FUNCTION drop_empty_telemetry_partitions(p_before date) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public SET lock_timeout = '2s'
AS $$
DECLARE
    part    text;
    cutoff  date := least(p_before, (now() AT TIME ZONE 'UTC')::date - 32);
    empty   boolean;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.telemetry'::regclass AND c.relname ~ '^telemetry_[0-9]{8}$'
          AND to_date(substr(c.relname, 11), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        -- Look first without a lock: a partition a longer window still needs is skipped at no cost.
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM ONLY public.%I)', part) INTO empty;
        CONTINUE WHEN NOT empty;
        BEGIN
            EXECUTE format('LOCK TABLE public.%I IN ACCESS EXCLUSIVE MODE', part);
            EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM ONLY public.%I)', part) INTO empty;
            IF empty THEN
                EXECUTE format('DROP TABLE public.%I', part);
                RETURN NEXT part;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'partition % busy; left for the next run', part;
        END;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION drop_empty_telemetry_partitions(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION drop_empty_telemetry_partitions(date) TO mqtt_saas_maintenance;
