-- What the drain could not store, and what each drain run did.

-- A message the drain rejected, with why. It was acknowledged on the broker, so this row is the
-- only copy: the payload is kept up to a cap (payload_bytes says how large it really was).
-- tenant_id / device_id are set when the topic named a known device.
CREATE TABLE dead_letters (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    tenant_id      uuid,
    device_id      bigint,
    topic          text NOT NULL,
    reason         text NOT NULL,
    detail         text,
    payload        bytea NOT NULL,
    payload_bytes  integer NOT NULL
);
CREATE INDEX dead_letters_tenant_received ON dead_letters (tenant_id, received_at);
CREATE INDEX dead_letters_received ON dead_letters (received_at);

ALTER TABLE dead_letters ENABLE ROW LEVEL SECURITY;
ALTER TABLE dead_letters FORCE ROW LEVEL SECURITY;
-- A tenant may see (and clear) its own rejected messages; rows of unknown tenants stay for
-- operators, who read them as the owner.
CREATE POLICY tenant_isolation ON dead_letters TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY ingest_write ON dead_letters FOR INSERT TO mqtt_saas_ingest WITH CHECK (true);
GRANT SELECT, DELETE ON dead_letters TO mqtt_saas_app;
GRANT INSERT ON dead_letters TO mqtt_saas_ingest;

-- One row per drain run, written when it starts and completed when it ends, so a run that
-- died shows as 'running' with no finished_at. Holds no tenant data.
CREATE TABLE ingest_runs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    status         text NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'ok', 'failed', 'skipped')),
    messages       integer NOT NULL DEFAULT 0,
    readings       integer NOT NULL DEFAULT 0,
    accepted       integer NOT NULL DEFAULT 0,
    duplicates     integer NOT NULL DEFAULT 0,
    dead_lettered  integer NOT NULL DEFAULT 0,
    batches        integer NOT NULL DEFAULT 0,
    max_lag_ms     bigint,
    error          text
);
CREATE INDEX ingest_runs_started ON ingest_runs (started_at);
GRANT SELECT, INSERT, UPDATE ON ingest_runs TO mqtt_saas_ingest;
GRANT SELECT ON ingest_runs TO mqtt_saas_app;
