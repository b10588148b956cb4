-- Telemetry: one row per reading, range-partitioned by day (UTC).
--
-- tenant_id leads every key and index so the table can later be distributed by tenant (Citus /
-- Azure Cosmos DB for PostgreSQL). The unique constraint is the dedup key: a message the broker
-- redelivers (the drain died between COMMIT and its acks) inserts nothing the second time. It is
-- also the only index, and it serves the common query (one device's metric over a time range).
--
-- Exactly one of value / value_bool / value_text is set: numbers, booleans and short strings
-- all survive. seq is the device's optional counter (0 when absent), so two readings a device
-- sends for the same metric and instant stay distinct when it numbers them.

CREATE TABLE telemetry (
    tenant_id    uuid NOT NULL,
    device_id    bigint NOT NULL,
    ts           timestamptz NOT NULL,
    seq          bigint NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL DEFAULT now(),
    value        double precision,
    value_bool   boolean,
    metric       text NOT NULL,
    value_text   text,
    CONSTRAINT telemetry_one_value CHECK (num_nonnulls(value, value_bool, value_text) = 1),
    CONSTRAINT telemetry_dedup UNIQUE (tenant_id, device_id, metric, ts, seq)
) PARTITION BY RANGE (ts);

-- Catches a reading whose day has no partition yet, so a missed partition job never fails an
-- ingest batch (which would hold every message behind it on the broker). Normally empty.
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

-- Creates the daily partitions covering [p_from, p_to] that do not exist yet; returns how many
-- it created. SECURITY DEFINER because only the table owner may attach partitions, and the
-- drain calls it once per run. A day whose rows already sit in telemetry_default cannot get its
-- own partition until they are moved; that is reported as a WARNING, never an error.
CREATE FUNCTION ensure_telemetry_partitions(p_from date, p_to date) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    day      date;
    part     text;
    created  integer := 0;
BEGIN
    IF p_to - p_from > 400 THEN
        RAISE EXCEPTION 'refusing to create more than 400 partitions at once (% to %)', p_from, p_to;
    END IF;
    FOR day IN SELECT d::date FROM generate_series(p_from, p_to, interval '1 day') AS d LOOP
        part := 'telemetry_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('public.' || part) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE public.%I PARTITION OF public.telemetry FOR VALUES FROM (%L) TO (%L)',
                part, day::text || ' 00:00:00+00', (day + 1)::text || ' 00:00:00+00');
            created := created + 1;
        EXCEPTION
            WHEN duplicate_table THEN
                NULL;  -- another session created it first
            WHEN check_violation THEN
                RAISE WARNING 'partition % not created: telemetry_default holds rows of that day', part;
        END;
    END LOOP;
    RETURN created;
END
$$;
REVOKE ALL ON FUNCTION ensure_telemetry_partitions(date, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_telemetry_partitions(date, date) TO mqtt_saas_ingest;

SELECT ensure_telemetry_partitions(current_date - 31, current_date + 7);

ALTER TABLE telemetry ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telemetry TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
-- The drain writes every tenant's readings and reads none back.
CREATE POLICY ingest_write ON telemetry FOR INSERT TO mqtt_saas_ingest WITH CHECK (true);

-- Privileges are on the parent only: partitions are reached through it, where RLS applies.
GRANT SELECT, INSERT, DELETE ON telemetry TO mqtt_saas_app;
GRANT INSERT ON telemetry TO mqtt_saas_ingest;
