-- insert_devices --
-- Create one or many devices in one statement (the API's single create and the CSV bulk create):
-- a constraint or a quota trigger refusing any row refuses them all. rows is a JSON array of
-- {name, display_name, type, location, tags}.
INSERT INTO devices (tenant_id, name, display_name, type, location, tags)
SELECT %(tenant_id)s, r.name, r.display_name, r.type, r.location, coalesce(r.tags, '{}')
FROM ROWS FROM (jsonb_to_recordset(%(rows)s::jsonb)
                AS (name text, display_name text, type text, location text, tags text[])) WITH ORDINALITY
     AS r(name, display_name, type, location, tags, n)
ORDER BY r.n
RETURNING id, name

-- insert_credentials --
-- The live credential slot of each new (or re-credentialed) device; rows is a JSON array of
-- {device_id, slot, username}.
INSERT INTO device_credentials (tenant_id, device_id, slot, username)
SELECT %(tenant_id)s, r.device_id, r.slot, r.username
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(device_id bigint, slot text, username text)

-- insert_outbox --
-- Broker commands for the sync to apply, in array order (ids follow it); rows is a JSON array of
-- {device_id, device_key, op, tenant_slug, device_name, username, password_enc}.
INSERT INTO broker_outbox (tenant_id, device_id, device_key, op, tenant_slug, device_name, username, password_enc)
SELECT %(tenant_id)s, r.device_id, r.device_key, r.op, r.tenant_slug, r.device_name, r.username, r.password_enc
FROM ROWS FROM (jsonb_to_recordset(%(rows)s::jsonb)
                AS (device_id bigint, device_key text, op text, tenant_slug text, device_name text, username text,
                    password_enc text)) WITH ORDINALITY
     AS r(device_id, device_key, op, tenant_slug, device_name, username, password_enc, n)
ORDER BY r.n

-- device_view --
-- Devices as the API shows them, with their live credential slots and unapplied broker commands.
SELECT d.id, d.name, d.display_name, d.type, d.location, d.tags, d.enabled, d.status, d.last_seen,
       d.created_at, d.credential_needs_rotation,
       coalesce(d.builtin_profile, (SELECT p.name FROM device_profiles p
                                    WHERE p.tenant_id = d.tenant_id AND p.id = d.profile_id)) AS profile,
       coalesce((SELECT jsonb_agg(jsonb_build_object('slot', c.slot, 'username', c.username,
                                                     'expires_at', c.expires_at) ORDER BY c.slot)
                 FROM device_credentials c WHERE c.tenant_id = d.tenant_id AND c.device_id = d.id),
                '[]'::jsonb) AS credentials,
       (SELECT count(*) FROM broker_outbox o
        WHERE o.tenant_id = d.tenant_id AND o.device_id = d.id AND o.applied_at IS NULL) AS sync_pending,
       (SELECT o.last_error FROM broker_outbox o
        WHERE o.tenant_id = d.tenant_id AND o.device_id = d.id AND o.applied_at IS NULL
        ORDER BY o.id LIMIT 1) AS sync_error
FROM devices d
WHERE d.tenant_id = %(tenant_id)s AND d.id = ANY(%(device_ids)s::bigint[])
ORDER BY d.id

-- list_devices --
-- A page of the tenant's devices in id (creation) order, after the cursor's id. Filters are
-- optional: status (online, offline, never_seen for enabled devices; disabled), a name prefix, a
-- case-insensitive substring of name or display name, a tag.
SELECT d.id, d.name, d.display_name, d.type, d.location, d.tags, d.enabled, d.status, d.last_seen,
       d.created_at, d.credential_needs_rotation,
       coalesce(d.builtin_profile, (SELECT p.name FROM device_profiles p
                                    WHERE p.tenant_id = d.tenant_id AND p.id = d.profile_id)) AS profile,
       coalesce((SELECT jsonb_agg(jsonb_build_object('slot', c.slot, 'username', c.username,
                                                     'expires_at', c.expires_at) ORDER BY c.slot)
                 FROM device_credentials c WHERE c.tenant_id = d.tenant_id AND c.device_id = d.id),
                '[]'::jsonb) AS credentials,
       (SELECT count(*) FROM broker_outbox o
        WHERE o.tenant_id = d.tenant_id AND o.device_id = d.id AND o.applied_at IS NULL) AS sync_pending,
       (SELECT o.last_error FROM broker_outbox o
        WHERE o.tenant_id = d.tenant_id AND o.device_id = d.id AND o.applied_at IS NULL
        ORDER BY o.id LIMIT 1) AS sync_error
FROM devices d
WHERE d.tenant_id = %(tenant_id)s
  AND (%(after_id)s::bigint IS NULL OR d.id > %(after_id)s::bigint)
  AND (%(status)s::text IS NULL
       OR (%(status)s::text = 'disabled' AND NOT d.enabled)
       OR (d.enabled AND d.status = %(status)s::text))
  AND (%(name_prefix)s::text IS NULL OR starts_with(d.name, %(name_prefix)s::text))
  AND (%(name_contains)s::text IS NULL
       OR strpos(lower(d.name), lower(%(name_contains)s::text)) > 0
       OR strpos(lower(coalesce(d.display_name, '')), lower(%(name_contains)s::text)) > 0)
  AND (%(tag)s::text IS NULL OR d.tags @> ARRAY[%(tag)s::text])
ORDER BY d.id
LIMIT %(limit)s

-- lock_device --
-- The device a change applies to, locked so concurrent changes to it serialise (and their broker
-- commands queue in the order they commit).
SELECT d.id, d.name, d.enabled, t.slug AS tenant_slug
FROM devices d JOIN tenants t ON t.id = d.tenant_id
WHERE d.tenant_id = %(tenant_id)s AND d.id = %(device_id)s
FOR UPDATE OF d

-- tenant_slug --
SELECT slug FROM tenants WHERE id = %(tenant_id)s

-- update_device --
-- Only the fields given change (null keeps the stored value; clear_* set it to null).
UPDATE devices SET
    display_name = CASE WHEN %(clear_display_name)s THEN NULL ELSE coalesce(%(display_name)s, display_name) END,
    type = CASE WHEN %(clear_type)s THEN NULL ELSE coalesce(%(type)s, type) END,
    location = CASE WHEN %(clear_location)s THEN NULL ELSE coalesce(%(location)s, location) END,
    tags = coalesce(%(tags)s::text[], tags)
WHERE tenant_id = %(tenant_id)s AND id = %(device_id)s

-- set_enabled --
UPDATE devices SET enabled = %(enabled)s WHERE tenant_id = %(tenant_id)s AND id = %(device_id)s

-- delete_device --
-- Its credential rows go with it (ON DELETE CASCADE); telemetry keeps the device id.
DELETE FROM devices WHERE tenant_id = %(tenant_id)s AND id = %(device_id)s

-- device_credentials --
SELECT slot, username, expires_at FROM device_credentials
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s
ORDER BY slot

-- expire_credential --
-- The old slot of a rotation: valid until the overlap ends, rounded up to the broker_sync timer's
-- next run (a whole multiple of its period on the clock), which retires it then.
UPDATE device_credentials
SET expires_at = to_timestamp(ceil(extract(epoch FROM now() + make_interval(secs => %(overlap_s)s))
                                   / %(period_s)s) * %(period_s)s)
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND slot = %(slot)s

-- drop_credential --
DELETE FROM device_credentials WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s AND slot = %(slot)s

-- drop_credentials --
DELETE FROM device_credentials WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s

-- clear_needs_rotation --
UPDATE devices SET credential_needs_rotation = false WHERE tenant_id = %(tenant_id)s AND id = %(device_id)s

-- outbox_due_keys --
SELECT device_key FROM broker_outbox_due_keys(%(limit)s, %(all)s)

-- outbox_take --
SELECT id, op, tenant_slug, device_name, username, password_enc FROM broker_outbox_take(%(device_key)s, %(wait)s)

-- outbox_applied --
SELECT broker_outbox_applied(%(id)s)

-- outbox_failed --
SELECT broker_outbox_failed(%(id)s, %(error)s)

-- retire_expired_credentials --
SELECT broker_retire_expired_credentials() AS retired

-- next_credential_expiry --
-- Seconds until the next overlap ends (NULL: none), by the database's clock.
SELECT broker_next_credential_expiry_s() AS seconds

-- wanted_devices --
SELECT tenant_id, device_id, tenant_slug, device_name, enabled, usernames, pending, builtin_profile, publish_forms,
       subscribe_forms
FROM broker_wanted_devices()

-- device_profile_topics --
-- A device's profile as its broker role needs it (no row: the device is gone).
SELECT builtin_profile, publish_forms, subscribe_forms FROM broker_device_profile(%(tenant_slug)s, %(device_name)s)

-- flag_needs_rotation --
SELECT broker_flag_needs_rotation(%(tenant_id)s, %(device_id)s)

-- pending_keys --
-- Devices ("{tenant}.{device}") with broker commands not yet applied: the reconciliation leaves them to the outbox.
SELECT device_key FROM broker_pending_keys()
