-- The schema's owner sees its own tables, and the app role can no longer change a tenant's plan.
--
-- Every tenant table has FORCE'd row-level security with policies only TO the application roles.
-- A superuser (the local stack, the tests) bypasses RLS, so that never showed; but a managed
-- server's admin (Azure Database for PostgreSQL flexible server, Supabase's postgres) is neither
-- superuser nor BYPASSRLS. As such an owner every SECURITY DEFINER function (find_login, the
-- platform_* and broker_* functions, find_external_user), every script that connects as the owner
-- (create_user, create_operator) and the backfills of 0005 and 0007 would see no row at all:
-- login, operators and broker sync would silently find nothing.
--
-- The fix is a policy for the table's owner on every FORCE'd table. It grants the owner nothing
-- it does not already have (it may ALTER TABLE ... NO FORCE ROW LEVEL SECURITY or drop any
-- policy at will): FORCE stays what it was meant to be, a guard on the application roles'
-- paths, not a wall against the owner. A dedicated NOLOGIN role owning the definer functions with
-- narrower policies was weighed and not taken: the partition functions must run as the owner of
-- telemetry anyway (only the owner attaches and drops partitions), the owner's scripts and any
-- repair by hand need the owner to see rows too, and switching a function's owner needs
-- membership in the new role, which a managed admin may not be able to grant itself on PG16+.
--
-- The policy names the table's actual owner (not the role running this file), so a migration
-- run by a member of the owning role still targets the owner. A table FORCE'd by a later
-- migration must add its own owner_access policy (tests/integration/test_non_superuser_owner.py
-- checks that every FORCE'd table has one).

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.relname, pg_get_userbyid(c.relowner) AS owner
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relforcerowsecurity
        ORDER BY c.relname
    LOOP
        -- An application role owning a table would make this policy a hole across tenants.
        IF t.owner IN ('mqtt_saas_app', 'mqtt_saas_ingest', 'mqtt_saas_maintenance') THEN
            RAISE EXCEPTION 'table % is owned by application role %', t.relname, t.owner;
        END IF;
        IF NOT EXISTS (SELECT FROM pg_policies p
                       WHERE p.schemaname = 'public' AND p.tablename = t.relname AND p.policyname = 'owner_access') THEN
            EXECUTE format('CREATE POLICY owner_access ON public.%I TO %I USING (true) WITH CHECK (true)',
                           t.relname, t.owner);
        END IF;
    END LOOP;
END
$$;

-- 0005's backfill (a slot-a credential for each device provisioned before it) read devices as the
-- owner under FORCE'd RLS: for a non-superuser owner it found none, and the reconciliation would
-- take those devices' broker clients for strangers. Redone for exactly those devices: created
-- before 0005 was applied, with no credential row and no outbox command ever (so neither the API
-- nor the sync has touched them since, and a credential deleted on purpose stays deleted).
INSERT INTO device_credentials (tenant_id, device_id, slot, username)
SELECT d.tenant_id, d.id, 'a', t.slug || '.' || d.name
FROM devices d JOIN tenants t ON t.id = d.tenant_id
WHERE d.created_at <= (SELECT m.applied_at FROM schema_migrations m WHERE m.version = '0005_devices_and_credentials')
  AND NOT EXISTS (SELECT 1 FROM device_credentials c WHERE c.tenant_id = d.tenant_id AND c.device_id = d.id)
  AND NOT EXISTS (SELECT 1 FROM broker_outbox o WHERE o.device_key = t.slug || '.' || d.name)
ON CONFLICT DO NOTHING;

-- 0007's backfill (each metric's newest reading) had the same blind spot. Only the metrics still
-- missing are added (the drain has merged every reading since), and only when this runner is
-- bound by RLS: a superuser's 0007 did the work already, and this reads every telemetry row.
DO $$
BEGIN
    IF NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user) THEN
        INSERT INTO device_metrics (tenant_id, device_id, metric, first_seen, last_ts, last_seq,
                                    last_value, last_value_bool, last_value_text)
        SELECT DISTINCT ON (t.tenant_id, t.device_id, t.metric)
               t.tenant_id, t.device_id, t.metric, now(), t.ts, t.seq, t.value, t.value_bool, t.value_text
        FROM telemetry AS t
        JOIN devices AS d ON d.tenant_id = t.tenant_id AND d.id = t.device_id
        ORDER BY t.tenant_id, t.device_id, t.metric, t.ts DESC, t.seq DESC
        ON CONFLICT DO NOTHING;
    END IF;
END
$$;

-- A tenant's plan (its quotas, its retention) changes only through platform_set_plan, never
-- through a tenant-scoped path of the app role. UPDATE (name) stays: the quota trigger locks the
-- tenant row FOR NO KEY UPDATE as the app role, which needs UPDATE on some column.
REVOKE UPDATE ON tenants FROM mqtt_saas_app;
GRANT UPDATE (name) ON tenants TO mqtt_saas_app;
