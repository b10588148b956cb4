-- Devices as the admin API manages them, their broker credentials, and the outbox that carries
-- every credential change to Mosquitto's dynamic-security plugin.
--
-- The broker is a second store the database cannot enlist in its transactions. So a device change
-- and the broker commands it implies (broker_outbox rows) commit together, and a sync step applies
-- the commands afterwards, retrying while the broker is unreachable: nothing the API promised is
-- lost to a broker outage, and nothing reaches the broker for a change that rolled back.
--
-- Who reads what across tenants: the app role acts for one tenant at a time (RLS). The sync and
-- the reconciliation (the broker_sync timer, also the API right after its commit) must see every
-- tenant's pending commands and wanted credentials. Rather than a policy that shows the app role
-- every tenant's rows, the SECURITY DEFINER functions below each do one narrow thing (take a
-- device's pending commands, mark one applied or failed, list the wanted broker clients, retire
-- ended overlaps, flag a lost credential) and return only the broker-facing columns: no display
-- names, tags or telemetry. Only the app role may call them; search_path is pinned.

ALTER TABLE devices
    ADD COLUMN type text CHECK (length(type) BETWEEN 1 AND 100),
    ADD COLUMN location text CHECK (length(location) BETWEEN 1 AND 200),
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(tags) <= 20 AND array_position(tags, NULL) IS NULL),
    -- Set by the reconciliation when the broker lost a client whose password only the device
    -- knows (the broker kept a hash, we kept nothing): a rotation issues a new one.
    ADD COLUMN credential_needs_rotation boolean NOT NULL DEFAULT false;
CREATE INDEX devices_tags ON devices USING gin (tags);

-- A device's live broker clients, one per slot (broker_contract.CREDENTIAL_SLOTS). A slot with
-- expires_at is the old credential of a rotation, valid until then; no row: no client wanted.
CREATE TABLE device_credentials (
    tenant_id   uuid NOT NULL,
    device_id   bigint NOT NULL,
    slot        text NOT NULL CHECK (slot IN ('a', 'b')),
    username    text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (tenant_id, device_id, slot),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);
-- Devices provisioned before this migration (shared/registry.py) hold a slot-a client: record it,
-- or the reconciliation would take it for a stranger and delete it.
INSERT INTO device_credentials (tenant_id, device_id, slot, username)
SELECT d.tenant_id, d.id, 'a', t.slug || '.' || d.name
FROM devices d JOIN tenants t ON t.id = d.tenant_id;
CREATE INDEX device_credentials_expiring ON device_credentials (expires_at) WHERE expires_at IS NOT NULL;

-- Broker commands waiting to be applied, in id order per device_key (the device's slot-a
-- username, "{tenant}.{device}": stable across a delete and re-create of the same name, whose
-- commands must not overtake each other). Rows carry everything the command needs, so a deleted
-- device's commands still apply. password_enc is the password createClient must set, encrypted
-- (shared/credentials.py), and erased the moment the command is applied.
CREATE TABLE broker_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    device_id        bigint,
    device_key       text NOT NULL,
    op               text NOT NULL CHECK (op IN ('ensure_role', 'create_client', 'delete_client',
                                                 'disable_client', 'enable_client', 'delete_role')),
    tenant_slug      text NOT NULL,
    device_name      text NOT NULL,
    username         text,
    password_enc     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    applied_at       timestamptz
);
CREATE INDEX broker_outbox_pending ON broker_outbox (device_key, id) WHERE applied_at IS NULL;

ALTER TABLE device_credentials ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_credentials FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_credentials TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON device_credentials TO mqtt_saas_app;

-- The app role appends its tenant's commands and reads their progress, never the password column;
-- changing a row (applied, failed) goes through the functions below.
ALTER TABLE broker_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE broker_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON broker_outbox FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY tenant_append ON broker_outbox FOR INSERT TO mqtt_saas_app
    WITH CHECK (tenant_id = current_tenant_id());
GRANT INSERT ON broker_outbox TO mqtt_saas_app;
GRANT SELECT (id, tenant_id, device_id, device_key, op, tenant_slug, device_name, username, created_at,
              attempts, last_error, next_attempt_at, applied_at) ON broker_outbox TO mqtt_saas_app;
-- INSERT ... RETURNING id needs SELECT on id only, which the grant above gives.

-- Device keys whose first pending command is due (p_all: due or not), oldest first.
CREATE FUNCTION broker_outbox_due_keys(p_limit integer, p_all boolean)
    RETURNS TABLE (device_key text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT h.device_key FROM (
        SELECT DISTINCT ON (o.device_key) o.device_key, o.id, o.next_attempt_at
        FROM public.broker_outbox o WHERE o.applied_at IS NULL ORDER BY o.device_key, o.id
    ) h
    WHERE p_all OR h.next_attempt_at <= now()
    ORDER BY h.id
    LIMIT p_limit
$$;

-- The pending commands of one device, in order, locked for this transaction, so two syncs never
-- interleave one device's commands. When another transaction holds the device: p_wait (a request
-- applying what it just committed) waits for it, else (the timer) none, the device is skipped.
CREATE FUNCTION broker_outbox_take(p_device_key text, p_wait boolean)
    RETURNS TABLE (id bigint, op text, tenant_slug text, device_name text, username text, password_enc text)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    IF p_wait THEN
        PERFORM pg_advisory_xact_lock(hashtext('broker_outbox'), hashtext(p_device_key));
    ELSIF NOT pg_try_advisory_xact_lock(hashtext('broker_outbox'), hashtext(p_device_key)) THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT o.id, o.op, o.tenant_slug, o.device_name, o.username, o.password_enc
        FROM public.broker_outbox o
        WHERE o.device_key = p_device_key AND o.applied_at IS NULL
        ORDER BY o.id
        FOR UPDATE;
END
$$;

CREATE FUNCTION broker_outbox_applied(p_id bigint) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.broker_outbox
    SET applied_at = now(), password_enc = NULL, last_error = NULL, attempts = attempts + 1
    WHERE id = p_id
$$;

-- Exponential backoff from 2 s, capped at 5 minutes.
CREATE FUNCTION broker_outbox_failed(p_id bigint, p_error text) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.broker_outbox
    SET attempts = attempts + 1, last_error = left(p_error, 500),
        next_attempt_at = now() + least(300, 2 ^ least(attempts + 1, 20)) * interval '1 second'
    WHERE id = p_id
$$;

-- Credentials whose overlap ended: the rows go, and a delete_client command for each is queued in
-- the same statement. Returns how many.
CREATE FUNCTION broker_retire_expired_credentials() RETURNS integer
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH gone AS (
        DELETE FROM public.device_credentials c WHERE c.expires_at <= now()
        RETURNING c.tenant_id, c.device_id, c.username
    ), queued AS (
        INSERT INTO public.broker_outbox (tenant_id, device_id, device_key, op, tenant_slug, device_name, username)
        SELECT g.tenant_id, g.device_id, t.slug || '.' || d.name, 'delete_client', t.slug, d.name, g.username
        FROM gone g
        JOIN public.devices d ON d.tenant_id = g.tenant_id AND d.id = g.device_id
        JOIN public.tenants t ON t.id = g.tenant_id
        RETURNING 1
    )
    SELECT count(*)::integer FROM queued
$$;

-- Every device of every tenant as the broker should see it: its role, whether enabled, its wanted
-- clients (live slots), and whether commands for it are still pending (the reconciliation leaves
-- those to the outbox).
CREATE FUNCTION broker_wanted_devices()
    RETURNS TABLE (tenant_id uuid, device_id bigint, tenant_slug text, device_name text, enabled boolean,
                   usernames text[], pending boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT d.tenant_id, d.id, t.slug, d.name, d.enabled,
           coalesce(array_agg(c.username ORDER BY c.slot) FILTER (WHERE c.username IS NOT NULL), '{}'),
           EXISTS (SELECT 1 FROM public.broker_outbox o
                   WHERE o.device_key = t.slug || '.' || d.name AND o.applied_at IS NULL)
    FROM public.devices d
    JOIN public.tenants t ON t.id = d.tenant_id
    LEFT JOIN public.device_credentials c
        ON c.tenant_id = d.tenant_id AND c.device_id = d.id AND (c.expires_at IS NULL OR c.expires_at > now())
    GROUP BY d.tenant_id, d.id, t.slug, d.name, d.enabled
$$;

-- Device keys with pending commands (the reconciliation leaves their clients alone).
CREATE FUNCTION broker_pending_keys() RETURNS TABLE (device_key text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT o.device_key FROM public.broker_outbox o WHERE o.applied_at IS NULL
$$;

CREATE FUNCTION broker_flag_needs_rotation(p_tenant_id uuid, p_device_id bigint) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    UPDATE public.devices SET credential_needs_rotation = true
    WHERE tenant_id = p_tenant_id AND id = p_device_id AND NOT credential_needs_rotation
$$;

REVOKE ALL ON FUNCTION broker_outbox_due_keys(integer, boolean), broker_outbox_take(text, boolean),
    broker_outbox_applied(bigint), broker_outbox_failed(bigint, text), broker_retire_expired_credentials(),
    broker_wanted_devices(), broker_pending_keys(), broker_flag_needs_rotation(uuid, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker_outbox_due_keys(integer, boolean), broker_outbox_take(text, boolean),
    broker_outbox_applied(bigint), broker_outbox_failed(bigint, text), broker_retire_expired_credentials(),
    broker_wanted_devices(), broker_pending_keys(), broker_flag_needs_rotation(uuid, bigint) TO mqtt_saas_app;
