-- Roles, tenants and devices.
--
-- Objects are owned by whoever runs the migrations (the database admin). The application never
-- connects as that owner: it uses two login roles that are neither owner nor superuser and have
-- no BYPASSRLS, so FORCE'd row-level security binds them:
--   mqtt_saas_app     the HTTP API and the timers that act for one tenant at a time; it sees only
--                     the tenant named by app.tenant_id, set per transaction with set_config(.., true)
--   mqtt_saas_ingest  the drain; it must route every tenant's messages, so it may READ the device
--                     registry and INSERT readings for any tenant, but it can read no telemetry.
-- Passwords are set outside migrations (scripts/dev locally, the deployment in Azure).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mqtt_saas_app') THEN
        CREATE ROLE mqtt_saas_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mqtt_saas_ingest') THEN
        CREATE ROLE mqtt_saas_ingest NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- The tenant of the current transaction, or NULL when none is set. nullif() matters: after a
-- SET LOCAL transaction ends the setting reads '' (not NULL), and ''::uuid would raise instead
-- of failing closed.
CREATE FUNCTION current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    plan        text NOT NULL DEFAULT 'free'
                CHECK (plan IN ('free', 'starter', 'professional', 'industrial')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- name is the device's id in its topics (t/{tenant slug}/d/{name}/...) and in its broker
-- credential; id is the compact key telemetry rows carry.
CREATE TABLE devices (
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id                 bigint GENERATED ALWAYS AS IDENTITY,
    name               text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    display_name       text,
    enabled            boolean NOT NULL DEFAULT true,
    status             text NOT NULL DEFAULT 'never_seen'
                       CHECK (status IN ('never_seen', 'online', 'offline')),
    status_changed_at  timestamptz,
    last_seen          timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants TO mqtt_saas_app
    USING (id = current_tenant_id()) WITH CHECK (id = current_tenant_id());
-- The drain resolves a topic's tenant slug to its id for every tenant.
CREATE POLICY ingest_routing ON tenants FOR SELECT TO mqtt_saas_ingest USING (true);

ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON devices TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
CREATE POLICY ingest_routing ON devices FOR SELECT TO mqtt_saas_ingest USING (true);
CREATE POLICY ingest_presence ON devices FOR UPDATE TO mqtt_saas_ingest USING (true) WITH CHECK (true);

GRANT USAGE ON SCHEMA public TO mqtt_saas_app, mqtt_saas_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, devices TO mqtt_saas_app;
GRANT SELECT (id, slug) ON tenants TO mqtt_saas_ingest;
GRANT SELECT (tenant_id, id, name, enabled, status, status_changed_at, last_seen) ON devices TO mqtt_saas_ingest;
GRANT UPDATE (status, status_changed_at, last_seen) ON devices TO mqtt_saas_ingest;
GRANT EXECUTE ON FUNCTION current_tenant_id() TO mqtt_saas_app, mqtt_saas_ingest;
