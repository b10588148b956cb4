-- list_profiles --
-- The tenant's own profiles, with how many devices use each.
SELECT p.id, p.name, p.description, p.spec, p.publish_forms, p.subscribe_forms, p.created_at, p.updated_at,
       (SELECT count(*) FROM devices d WHERE d.tenant_id = p.tenant_id AND d.profile_id = p.id) AS devices
FROM device_profiles p
WHERE p.tenant_id = %(tenant_id)s
ORDER BY p.name

-- builtin_profile_use --
SELECT builtin_profile AS name, count(*) AS devices
FROM devices WHERE tenant_id = %(tenant_id)s AND builtin_profile IS NOT NULL
GROUP BY builtin_profile

-- get_profile --
SELECT p.id, p.name, p.description, p.spec, p.publish_forms, p.subscribe_forms, p.created_at, p.updated_at,
       (SELECT count(*) FROM devices d WHERE d.tenant_id = p.tenant_id AND d.profile_id = p.id) AS devices
FROM device_profiles p
WHERE p.tenant_id = %(tenant_id)s AND p.name = %(name)s

-- lock_profile --
SELECT id FROM device_profiles WHERE tenant_id = %(tenant_id)s AND name = %(name)s FOR UPDATE

-- insert_profile --
-- The plan-limit trigger refuses one over the tenant's max_profiles (MQ402).
INSERT INTO device_profiles (tenant_id, name, description, spec, publish_forms, subscribe_forms)
VALUES (%(tenant_id)s, %(name)s, %(description)s, %(spec)s, %(publish_forms)s, %(subscribe_forms)s)
RETURNING id

-- update_profile --
UPDATE device_profiles
SET description = %(description)s, spec = %(spec)s, publish_forms = %(publish_forms)s,
    subscribe_forms = %(subscribe_forms)s, updated_at = now()
WHERE tenant_id = %(tenant_id)s AND id = %(id)s

-- delete_profile --
DELETE FROM device_profiles WHERE tenant_id = %(tenant_id)s AND id = %(id)s

-- devices_of_profile --
-- Devices whose broker role must follow a change of this profile, locked in id order.
SELECT d.id, d.name FROM devices d
WHERE d.tenant_id = %(tenant_id)s AND d.profile_id = %(id)s
ORDER BY d.id
FOR UPDATE

-- set_device_profile --
UPDATE devices SET builtin_profile = %(builtin)s, profile_id = %(profile_id)s
WHERE tenant_id = %(tenant_id)s AND id = %(device_id)s

-- device_profile --
-- A device's profile, its spec (a tenant profile's) and what its decoder remembers.
SELECT d.id, d.name, t.slug AS tenant_slug, coalesce(d.builtin_profile, p.name) AS profile, d.builtin_profile,
       p.id AS profile_id, p.spec, p.updated_at, s.state
FROM devices d
JOIN tenants t ON t.id = d.tenant_id
LEFT JOIN device_profiles p ON p.tenant_id = d.tenant_id AND p.id = d.profile_id
LEFT JOIN device_decoder_state s ON s.tenant_id = d.tenant_id AND s.device_id = d.id
WHERE d.tenant_id = %(tenant_id)s AND d.id = %(device_id)s

-- decoder_events --
-- One device's decoder events, newest first, before the cursor's id.
SELECT id, at, kind, detail FROM device_decoder_events
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s

-- device_dead_letters --
-- A device's recent dead letters, oldest first (the order they were received, the order a replay
-- stores them in): the newest `limit` of them, replayed ones only when asked.
SELECT * FROM (
    SELECT dl.id, dl.received_at, dl.topic, dl.reason, dl.detail, dl.payload, dl.payload_bytes, dl.profile,
           dl.replayed_at
    FROM dead_letters dl
    WHERE dl.tenant_id = %(tenant_id)s AND dl.device_id = %(device_id)s
      AND (%(include_replayed)s OR dl.replayed_at IS NULL)
    ORDER BY dl.id DESC
    LIMIT %(limit)s
) AS recent
ORDER BY id

-- mark_replayed --
-- In the replay's own transaction (as the ingest role), with the readings it stored.
UPDATE dead_letters SET replayed_at = now() WHERE id = ANY(%(ids)s::bigint[]) AND replayed_at IS NULL
