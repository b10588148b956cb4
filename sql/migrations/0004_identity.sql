-- Identity for the admin API: users, their refresh tokens, the audit log, and login throttling.
--
-- users.email is unique per tenant, not globally: one person may belong to several tenants, and
-- creating a user in one tenant can never reveal that an address exists in another. Login
-- therefore names the tenant (its slug) as well as the email.
-- Every table with tenant rows has row-level security FORCE'd like the others; the app role sees
-- only the tenant named by app.tenant_id.

CREATE TABLE users (
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id             uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    -- stored lower-cased (the API folds it), so uniqueness is case-insensitive
    email          text NOT NULL CHECK (email = lower(email) AND email ~ '^[^@\s]+@[^@\s]+$'
                                        AND length(email) <= 254),
    role           text NOT NULL CHECK (role IN ('owner', 'staff', 'viewer')),
    -- argon2id, in its PHC string form ($argon2id$v=19$m=...,t=...,p=...$salt$hash)
    password_hash  text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);
-- the users list pages by (created_at, id)
CREATE INDEX users_tenant_created ON users (tenant_id, created_at, id);

-- A refresh token is shown to its client once; only its SHA-256 is stored (it is 256 random bits,
-- so a plain hash is enough: there is nothing to brute-force). Refreshing revokes the token used
-- and issues a new one; logout revokes it.
CREATE TABLE refresh_tokens (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL,
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_user ON refresh_tokens (tenant_id, user_id);

-- Who did what, in which tenant, to what, when and from where. Append-only for the application:
-- it is granted SELECT and INSERT only (no UPDATE, DELETE or TRUNCATE), and RLS has no UPDATE or
-- DELETE policy either. actor_user_id and target_id carry no foreign key, so deleting a user
-- keeps the history of what they did and of their deletion.
CREATE TABLE audit_log (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              bigint GENERATED ALWAYS AS IDENTITY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor_user_id   uuid,
    action          text NOT NULL CHECK (action ~ '^[a-z_]+\.[a-z_]+$'),
    target_type     text,
    target_id       text,
    source_address  text,
    detail          jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refresh_tokens TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON audit_log FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY tenant_append ON audit_log FOR INSERT TO mqtt_saas_app
    WITH CHECK (tenant_id = current_tenant_id());

GRANT SELECT, INSERT, UPDATE, DELETE ON users, refresh_tokens TO mqtt_saas_app;
GRANT SELECT, INSERT ON audit_log TO mqtt_saas_app;

-- Login must find a user before any tenant is known, and RLS (rightly) shows the app role no
-- user until one is. Rather than give the app role a policy that sees every tenant's users, this
-- one narrow SECURITY DEFINER function answers exactly one question: for this tenant slug and
-- email, the user's id, tenant, role and password hash (no row when there is none). It cannot
-- list users or reveal anything else, and only the app role may call it. search_path is pinned so
-- no caller-created object can be substituted.
CREATE FUNCTION find_login(p_tenant_slug text, p_email text)
    RETURNS TABLE (user_id uuid, tenant_id uuid, role text, password_hash text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT u.id, u.tenant_id, u.role, u.password_hash
    FROM public.users u JOIN public.tenants t ON t.id = u.tenant_id
    WHERE t.slug = p_tenant_slug AND u.email = lower(p_email)
$$;
REVOKE ALL ON FUNCTION find_login(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION find_login(text, text) TO mqtt_saas_app;

-- Failed logins, counted in fixed windows per key. Keys are SHA-256 digests (of a source address,
-- or of tenant + email + source address), so the table holds no tenant data, no address and no
-- email in clear; it has no tenant column and is shared by all tenants, like ingest_runs.
CREATE TABLE login_failures (
    key           bytea PRIMARY KEY CHECK (length(key) = 32),
    window_start  timestamptz NOT NULL DEFAULT now(),
    failures      integer NOT NULL DEFAULT 0
);
CREATE INDEX login_failures_window ON login_failures (window_start);
GRANT SELECT, INSERT, UPDATE, DELETE ON login_failures TO mqtt_saas_app;
