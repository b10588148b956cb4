-- find_login --
-- The one lookup that runs before a tenant is known (see find_login() in 0004_identity.sql).
SELECT user_id, tenant_id, role, password_hash FROM find_login(%(tenant_slug)s, %(email)s)

-- set_password_hash --
-- A login whose hash used weaker parameters stores the rehash (inside the user's tenant).
UPDATE users SET password_hash = %(password_hash)s WHERE tenant_id = %(tenant_id)s AND id = %(user_id)s

-- get_acting_user --
-- The user a request's access token speaks for, while its session lasts: a session id (our own
-- tokens) must still have a live refresh token, so a logout ends its access tokens at once. NULL
-- session (an external provider's token): the provider's expiry alone.
SELECT u.id, u.tenant_id, t.slug AS tenant_slug, u.email, u.role, u.created_at
FROM users u JOIN tenants t ON t.id = u.tenant_id
WHERE u.tenant_id = %(tenant_id)s AND u.id = %(user_id)s
  AND (%(session_id)s::uuid IS NULL OR EXISTS (
        SELECT 1 FROM refresh_tokens r
        WHERE r.tenant_id = u.tenant_id AND r.session_id = %(session_id)s AND r.user_id = u.id
          AND r.revoked_at IS NULL AND r.expires_at > now()))

-- get_user --
-- The acting user of a request, or a user an owner asks about; no row if gone or in another tenant.
SELECT u.id, u.tenant_id, t.slug AS tenant_slug, u.email, u.role, u.created_at
FROM users u JOIN tenants t ON t.id = u.tenant_id
WHERE u.tenant_id = %(tenant_id)s AND u.id = %(user_id)s

-- list_users --
-- One page of a tenant's users in a stable order, (created_at, id), after the cursor if given.
SELECT u.id, u.tenant_id, t.slug AS tenant_slug, u.email, u.role, u.created_at
FROM users u JOIN tenants t ON t.id = u.tenant_id
WHERE u.tenant_id = %(tenant_id)s
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (u.created_at, u.id) > (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY u.created_at, u.id
LIMIT %(limit)s

-- insert_user --
-- Fails with unique_violation when the email is taken in this tenant.
WITH inserted AS (
    INSERT INTO users (tenant_id, email, role, password_hash)
    VALUES (%(tenant_id)s, %(email)s, %(role)s, %(password_hash)s)
    RETURNING id, tenant_id, email, role, created_at
)
SELECT i.id, i.tenant_id, t.slug AS tenant_slug, i.email, i.role, i.created_at
FROM inserted i JOIN tenants t ON t.id = i.tenant_id

-- lock_owners --
-- Locks the tenant's owners for the rest of the transaction, so two concurrent demotions or
-- deletions cannot each see "another owner remains" and leave none.
SELECT id FROM users WHERE tenant_id = %(tenant_id)s AND role = 'owner' ORDER BY id FOR UPDATE

-- set_user_role --
UPDATE users SET role = %(role)s WHERE tenant_id = %(tenant_id)s AND id = %(user_id)s

-- delete_user --
DELETE FROM users WHERE tenant_id = %(tenant_id)s AND id = %(user_id)s

-- insert_refresh_token --
-- session_id: the session the token continues (a refresh), or NULL for a new one (a login).
INSERT INTO refresh_tokens (tenant_id, user_id, token_hash, expires_at, session_id)
VALUES (%(tenant_id)s, %(user_id)s, %(token_hash)s, now() + make_interval(secs => %(ttl_s)s),
        coalesce(%(session_id)s::uuid, gen_random_uuid()))
RETURNING id, expires_at, session_id

-- take_refresh_token --
-- The token's row, locked so two refreshes with one token cannot both succeed.
SELECT id, user_id, session_id, expires_at, revoked_at, expires_at <= now() AS expired
FROM refresh_tokens WHERE tenant_id = %(tenant_id)s AND token_hash = %(token_hash)s
FOR UPDATE

-- revoke_refresh_token --
UPDATE refresh_tokens SET revoked_at = now()
WHERE tenant_id = %(tenant_id)s AND token_hash = %(token_hash)s AND revoked_at IS NULL

-- revoke_session --
-- Logout: every refresh token of the session goes, and with them its access tokens.
UPDATE refresh_tokens SET revoked_at = now()
WHERE tenant_id = %(tenant_id)s AND session_id = %(session_id)s AND revoked_at IS NULL

-- revoke_user_refresh_tokens --
-- A revoked token presented again means it was copied: every token of that user goes.
UPDATE refresh_tokens SET revoked_at = now()
WHERE tenant_id = %(tenant_id)s AND user_id = %(user_id)s AND revoked_at IS NULL

-- insert_audit --
INSERT INTO audit_log (tenant_id, actor_user_id, action, target_type, target_id, source_address, detail)
VALUES (%(tenant_id)s, %(actor_user_id)s, %(action)s, %(target_type)s, %(target_id)s, %(source_address)s,
        %(detail)s)

-- login_failures --
-- Failures counted in the current window for each key (keys with an expired window count 0).
SELECT key, failures, window_start + make_interval(secs => %(window_s)s) AS window_end
FROM login_failures
WHERE key = ANY(%(keys)s) AND window_start > now() - make_interval(secs => %(window_s)s)

-- count_login_failure --
-- One more failure for each key; a key whose window has passed starts a new one.
INSERT INTO login_failures (key, window_start, failures)
SELECT k, now(), 1 FROM unnest(%(keys)s::bytea[]) AS k
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN login_failures.window_start <= now() - make_interval(secs => %(window_s)s)
                    THEN 1 ELSE login_failures.failures + 1 END,
    window_start = CASE WHEN login_failures.window_start <= now() - make_interval(secs => %(window_s)s)
                        THEN now() ELSE login_failures.window_start END

-- clear_login_failures --
DELETE FROM login_failures WHERE key = ANY(%(keys)s)

-- prune_login_failures --
-- Windows long past; called now and then by logins so the table stays small.
DELETE FROM login_failures WHERE window_start < now() - make_interval(secs => %(window_s)s) * 2
