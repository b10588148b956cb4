-- Device profiles: how the drain decodes what a device publishes when it is not our native JSON (a
-- Tasmota plug, a Shelly relay, an ESPHome node with Home Assistant discovery, a Sparkplug B gateway),
-- and which topics the device's broker role allows. Built-in profiles live in the code
-- (shared/broker/contract.py for their topics, shared/ingest/builtin_profiles.py for their decoders);
-- a tenant's own profiles are rows here: a declarative spec (JMESPath paths, never code), and the
-- topic forms it declares, which the broker sync turns into the devices' ACLs.

ALTER TABLE plans ADD COLUMN max_profiles integer CHECK (max_profiles >= 0);
UPDATE plans SET max_profiles = CASE name WHEN 'free' THEN 3 WHEN 'starter' THEN 20 WHEN 'professional' THEN 100 END;

CREATE TABLE device_profiles (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id               bigint GENERATED ALWAYS AS IDENTITY,
    -- The built-in names are taken (contract.BUILTIN_PROFILES; a test proves the lists agree).
    name             text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'
                                          AND name NOT IN ('native', 'tasmota', 'shelly-gen2',
                                                           'homeassistant-discovery', 'sparkplug-b')),
    description      text CHECK (length(description) <= 500),
    spec             jsonb NOT NULL,
    -- What the spec declares, below the device prefix (validated by contract.validate_profile_form).
    publish_forms    text[] NOT NULL CHECK (cardinality(publish_forms) BETWEEN 1 AND 32),
    subscribe_forms  text[] NOT NULL DEFAULT '{}' CHECK (cardinality(subscribe_forms) <= 32),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

ALTER TABLE device_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_profiles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_profiles TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());
-- The drain compiles the profiles of the devices a batch names.
CREATE POLICY ingest_routing ON device_profiles FOR SELECT TO mqtt_saas_ingest USING (true);
CREATE POLICY owner_access ON device_profiles TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON device_profiles TO mqtt_saas_app;
GRANT SELECT (tenant_id, id, name, spec, updated_at) ON device_profiles TO mqtt_saas_ingest;

CREATE TRIGGER device_profiles_plan_limit AFTER INSERT ON device_profiles
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION enforce_plan_limit('max_profiles');

-- A device has a built-in profile or one of its tenant's (which cannot be deleted while in use).
ALTER TABLE devices
    ADD COLUMN builtin_profile text DEFAULT 'native'
        CHECK (builtin_profile IN ('native', 'tasmota', 'shelly-gen2', 'homeassistant-discovery', 'sparkplug-b')),
    ADD COLUMN profile_id bigint,
    ADD CONSTRAINT devices_profile_fkey FOREIGN KEY (tenant_id, profile_id) REFERENCES device_profiles (tenant_id, id),
    ADD CONSTRAINT devices_one_profile CHECK ((builtin_profile IS NULL) <> (profile_id IS NULL));
CREATE INDEX devices_profile ON devices (tenant_id, profile_id) WHERE profile_id IS NOT NULL;
GRANT SELECT (builtin_profile, profile_id) ON devices TO mqtt_saas_ingest;

-- What a decoder learnt from a device's own messages and must remember across drain runs: the Home
-- Assistant entities its discovery configs announced, a Sparkplug node's aliases, sequence number,
-- bdSeq and sub-devices. One row per device, written by the drain in the batch's transaction.
CREATE TABLE device_decoder_state (
    tenant_id   uuid NOT NULL,
    device_id   bigint NOT NULL,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);
ALTER TABLE device_decoder_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_decoder_state FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_decoder_state FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY ingest_write ON device_decoder_state TO mqtt_saas_ingest USING (true) WITH CHECK (true);
CREATE POLICY owner_access ON device_decoder_state TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT ON device_decoder_state TO mqtt_saas_app;
GRANT SELECT, INSERT, UPDATE ON device_decoder_state TO mqtt_saas_ingest;

-- What a decoder saw that a person should see: a Sparkplug sequence gap, a rebirth the drain asked
-- for, a node or device death, metrics of a type that cannot be stored.
CREATE TABLE device_decoder_events (
    tenant_id   uuid NOT NULL,
    device_id   bigint NOT NULL,
    id          bigint GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL CHECK (kind IN ('seq_gap', 'rebirth_requested', 'node_birth', 'node_death',
                                              'device_birth', 'device_death', 'unsupported_metrics')),
    detail      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX device_decoder_events_device ON device_decoder_events (tenant_id, device_id, id DESC);
-- The archiver's hourly run deletes events past their retention, oldest first (shared/telemetry/retention.py).
CREATE INDEX device_decoder_events_at ON device_decoder_events (at);
ALTER TABLE device_decoder_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_decoder_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_decoder_events FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY ingest_write ON device_decoder_events FOR INSERT TO mqtt_saas_ingest WITH CHECK (true);
CREATE POLICY maintenance_read ON device_decoder_events FOR SELECT TO mqtt_saas_maintenance USING (true);
CREATE POLICY maintenance_delete ON device_decoder_events FOR DELETE TO mqtt_saas_maintenance USING (true);
CREATE POLICY owner_access ON device_decoder_events TO CURRENT_USER USING (true) WITH CHECK (true);
GRANT SELECT ON device_decoder_events TO mqtt_saas_app;
GRANT INSERT ON device_decoder_events TO mqtt_saas_ingest;
GRANT SELECT (tenant_id, id, at), DELETE ON device_decoder_events TO mqtt_saas_maintenance;

-- A dead letter names the profile that could not decode it, and when a replay stored it. The replay
-- (shared/ingest/replay.py) stores and marks in one transaction as the ingest role, which may only
-- set replayed_at.
ALTER TABLE dead_letters ADD COLUMN profile text, ADD COLUMN replayed_at timestamptz;
CREATE INDEX dead_letters_device ON dead_letters (tenant_id, device_id, id DESC) WHERE device_id IS NOT NULL;
CREATE POLICY ingest_replay_read ON dead_letters FOR SELECT TO mqtt_saas_ingest USING (true);
CREATE POLICY ingest_replay ON dead_letters FOR UPDATE TO mqtt_saas_ingest USING (true) WITH CHECK (true);
GRANT SELECT (id, replayed_at) ON dead_letters TO mqtt_saas_ingest;
GRANT UPDATE (replayed_at) ON dead_letters TO mqtt_saas_ingest;

-- The broker sync needs each device's profile to build its role's ACLs: the built-in's name, or the
-- tenant profile's declared forms. broker_wanted_devices gains them (a new return type: dropped and
-- made again), and broker_device_profile answers for the one device an ensure_role command is for.
DROP FUNCTION broker_wanted_devices();
CREATE FUNCTION broker_wanted_devices()
    RETURNS TABLE (tenant_id uuid, device_id bigint, tenant_slug text, device_name text, enabled boolean,
                   usernames text[], pending boolean, builtin_profile text, publish_forms text[],
                   subscribe_forms text[])
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT d.tenant_id, d.id, t.slug, d.name, d.enabled,
           coalesce(array_agg(c.username ORDER BY c.slot) FILTER (WHERE c.username IS NOT NULL), '{}'),
           EXISTS (SELECT 1 FROM public.broker_outbox o
                   WHERE o.device_key = t.slug || '.' || d.name AND o.applied_at IS NULL),
           d.builtin_profile, p.publish_forms, p.subscribe_forms
    FROM public.devices d
    JOIN public.tenants t ON t.id = d.tenant_id
    LEFT JOIN public.device_profiles p ON p.tenant_id = d.tenant_id AND p.id = d.profile_id
    LEFT JOIN public.device_credentials c
        ON c.tenant_id = d.tenant_id AND c.device_id = d.id AND (c.expires_at IS NULL OR c.expires_at > now())
    GROUP BY d.tenant_id, d.id, t.slug, d.name, d.enabled, d.builtin_profile, p.publish_forms, p.subscribe_forms
$$;

-- No row: the device is gone (its role is being deleted; ensure_role then keeps the native forms).
CREATE FUNCTION broker_device_profile(p_tenant_slug text, p_device_name text)
    RETURNS TABLE (builtin_profile text, publish_forms text[], subscribe_forms text[])
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT d.builtin_profile, p.publish_forms, p.subscribe_forms
    FROM public.devices d
    JOIN public.tenants t ON t.id = d.tenant_id
    LEFT JOIN public.device_profiles p ON p.tenant_id = d.tenant_id AND p.id = d.profile_id
    WHERE t.slug = p_tenant_slug AND d.name = p_device_name
$$;

REVOKE ALL ON FUNCTION broker_wanted_devices(), broker_device_profile(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker_wanted_devices(), broker_device_profile(text, text) TO mqtt_saas_app;
