-- Plans and their quotas, usage per tenant and hour, and the platform operators who administer
-- tenants and plans (issue 12 §2, §6).
--
-- Quotas on rows (devices, users, later alert rules) are enforced here, by a trigger, not by the
-- API: two requests racing, a bulk insert or a future code path cannot exceed them. The message
-- rate is enforced by the drain (shared/ingest.py), which counts into usage_hourly.

-- NULL in a limit means unlimited. Not tenant data: every role may read it.
CREATE TABLE plans (
    name                text PRIMARY KEY CHECK (name ~ '^[a-z]+$'),
    max_devices         integer CHECK (max_devices >= 0),
    max_users           integer CHECK (max_users >= 1),
    max_alert_rules     integer CHECK (max_alert_rules >= 0),
    messages_per_hour   integer CHECK (messages_per_hour >= 0),
    -- how long raw telemetry is kept before the archive (issue 14); NULL keeps it
    raw_retention_days  integer CHECK (raw_retention_days >= 1),
    sort_order          integer NOT NULL UNIQUE
);

-- Sized for a small business or factory (10-50 machines, one reading every few seconds):
-- free tries one line; starter runs a small shop (25 machines at one message per 10 s is 9,000/h);
-- professional a whole small factory; industrial is unmetered.
INSERT INTO plans (name, max_devices, max_users, max_alert_rules, messages_per_hour, raw_retention_days, sort_order)
VALUES ('free',           3,    2,    5,    1800,   30, 1),
       ('starter',       25,   10,   50,   36000,   90, 2),
       ('professional', 100,   50,  250,  360000,  365, 3),
       ('industrial',   NULL, NULL, NULL,   NULL, NULL, 4);

ALTER TABLE tenants ADD CONSTRAINT tenants_plan_fkey FOREIGN KEY (plan) REFERENCES plans (name);

GRANT SELECT ON plans TO mqtt_saas_app, mqtt_saas_ingest;
-- The drain reads each tenant's plan to meter its messages.
GRANT SELECT (plan) ON tenants TO mqtt_saas_ingest;

-- The quota trigger, generic over any table with a tenant_id: CREATE TRIGGER ... EXECUTE FUNCTION
-- enforce_plan_limit('max_devices'), with the inserted rows as transition table new_rows.
-- Statement level, so a bulk insert of n rows counts once, not n times. It locks each tenant's
-- row (NO KEY UPDATE: foreign-key checks, which take KEY SHARE, are not blocked) before counting,
-- so concurrent inserts for one tenant serialise here; under READ COMMITTED the count after the
-- lock sees what the previous holder committed. It runs as the caller (no SECURITY DEFINER): the
-- app role counts its own tenant's rows under RLS, which are exactly the rows that matter.
CREATE FUNCTION enforce_plan_limit() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, public
AS $$
DECLARE
    v_limit_name text := TG_ARGV[0];
    v_tenant     uuid;
    v_plan       text;
    v_max        integer;
    v_count      bigint;
BEGIN
    FOR v_tenant IN SELECT DISTINCT n.tenant_id FROM new_rows n ORDER BY 1 LOOP
        SELECT t.plan, (to_jsonb(p) ->> v_limit_name)::integer INTO v_plan, v_max
        FROM public.tenants t JOIN public.plans p ON p.name = t.plan
        WHERE t.id = v_tenant
        FOR NO KEY UPDATE OF t;
        CONTINUE WHEN v_max IS NULL;
        EXECUTE format('SELECT count(*) FROM %I.%I WHERE tenant_id = $1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
            INTO v_count USING v_tenant;
        IF v_count > v_max THEN
            -- MQ402: our own SQLSTATE (class MQ is unused by PostgreSQL); shared/api/problems.py
            -- answers it with 402 and the detail below.
            RAISE EXCEPTION 'plan limit reached: % (% on plan %)', v_limit_name, v_max, v_plan
                USING ERRCODE = 'MQ402',
                      DETAIL = json_build_object('limit', v_limit_name, 'plan', v_plan, 'max', v_max)::text;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
GRANT EXECUTE ON FUNCTION enforce_plan_limit() TO mqtt_saas_app;

CREATE TRIGGER devices_plan_limit AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION enforce_plan_limit('max_devices');
CREATE TRIGGER users_plan_limit AFTER INSERT ON users
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION enforce_plan_limit('max_users');

-- Messages the drain accepted per tenant and UTC hour, and those it dead-lettered as over quota.
-- Written only by the drain (one upsert per tenant per batch, in the batch's transaction).
CREATE TABLE usage_hourly (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    hour        timestamptz NOT NULL CHECK (hour = date_trunc('hour', hour, 'UTC')),
    messages    bigint NOT NULL DEFAULT 0 CHECK (messages >= 0),
    over_quota  bigint NOT NULL DEFAULT 0 CHECK (over_quota >= 0),
    PRIMARY KEY (tenant_id, hour)
);

ALTER TABLE usage_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_hourly FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON usage_hourly FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY ingest_count ON usage_hourly TO mqtt_saas_ingest USING (true) WITH CHECK (true);
GRANT SELECT ON usage_hourly TO mqtt_saas_app;
GRANT SELECT, INSERT, UPDATE ON usage_hourly TO mqtt_saas_ingest;

-- Audit log reads: newest first per tenant, optionally by action.
CREATE INDEX audit_log_tenant_id_desc ON audit_log (tenant_id, id DESC);

-- Platform operators administer tenants and plans across tenants. They are not tenant users and
-- the app role cannot read this table at all (no grant, RLS forced with no policy): it reaches
-- it, and every cross-tenant operation, only through the SECURITY DEFINER functions below, each
-- answering one question or doing one thing. The API calls them only for a verified operator
-- token (a distinct audience); they re-check that the operator still exists.
CREATE TABLE platform_operators (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email          text NOT NULL UNIQUE CHECK (email = lower(email) AND email ~ '^[^@\s]+@[^@\s]+$'
                                               AND length(email) <= 254),
    password_hash  text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at     timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE platform_operators ENABLE ROW LEVEL SECURITY;
ALTER TABLE platform_operators FORCE ROW LEVEL SECURITY;

CREATE FUNCTION platform_find_operator(p_email text)
    RETURNS TABLE (operator_id uuid, password_hash text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT o.id, o.password_hash FROM public.platform_operators o WHERE o.email = lower(p_email)
$$;

CREATE FUNCTION platform_get_operator(p_operator_id uuid)
    RETURNS TABLE (operator_id uuid, email text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT o.id, o.email FROM public.platform_operators o WHERE o.id = p_operator_id
$$;

CREATE FUNCTION platform_require_operator(p_operator_id uuid) RETURNS text
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    v_email text;
BEGIN
    SELECT o.email INTO v_email FROM public.platform_operators o WHERE o.id = p_operator_id;
    IF v_email IS NULL THEN
        RAISE EXCEPTION 'not a platform operator' USING ERRCODE = '42501';
    END IF;
    RETURN v_email;
END
$$;

-- Tenants with their plan and use, a page at a time in (created_at, id) order.
CREATE FUNCTION platform_list_tenants(p_operator_id uuid, p_after_created_at timestamptz, p_after_id uuid,
                                      p_limit integer)
    RETURNS TABLE (id uuid, slug text, name text, plan text, created_at timestamptz, devices bigint,
                   users bigint, messages_this_hour bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
    PERFORM public.platform_require_operator(p_operator_id);
    RETURN QUERY
    SELECT t.id, t.slug, t.name, t.plan, t.created_at,
           (SELECT count(*) FROM public.devices d WHERE d.tenant_id = t.id),
           (SELECT count(*) FROM public.users u WHERE u.tenant_id = t.id),
           coalesce((SELECT h.messages FROM public.usage_hourly h
                     WHERE h.tenant_id = t.id AND h.hour = date_trunc('hour', now(), 'UTC')), 0)
    FROM public.tenants t
    WHERE p_after_created_at IS NULL OR (t.created_at, t.id) > (p_after_created_at, p_after_id)
    ORDER BY t.created_at, t.id
    LIMIT p_limit;
END
$$;

-- A tenant and its first owner in one transaction, audited in the new tenant's log.
CREATE FUNCTION platform_create_tenant(p_operator_id uuid, p_slug text, p_name text, p_plan text,
                                       p_owner_email text, p_owner_password_hash text, p_source text)
    RETURNS TABLE (tenant_id uuid, owner_id uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    v_email  text := public.platform_require_operator(p_operator_id);
    v_tenant uuid;
    v_owner  uuid;
BEGIN
    INSERT INTO public.tenants (slug, name, plan) VALUES (p_slug, p_name, p_plan) RETURNING tenants.id INTO v_tenant;
    INSERT INTO public.users (tenant_id, email, role, password_hash)
    VALUES (v_tenant, lower(p_owner_email), 'owner', p_owner_password_hash) RETURNING users.id INTO v_owner;
    INSERT INTO public.audit_log (tenant_id, actor_user_id, action, target_type, target_id, source_address, detail)
    VALUES (v_tenant, NULL, 'tenant.create', 'tenant', v_tenant::text, p_source,
            json_build_object('operator_id', p_operator_id, 'operator_email', v_email, 'slug', p_slug,
                              'plan', p_plan)::jsonb),
           (v_tenant, NULL, 'user.create', 'user', v_owner::text, p_source,
            json_build_object('operator_id', p_operator_id, 'operator_email', v_email, 'role', 'owner')::jsonb);
    RETURN QUERY SELECT v_tenant, v_owner;
END
$$;

-- Changes a tenant's plan; quotas follow at once (the trigger and the drain read the plan live).
CREATE FUNCTION platform_set_plan(p_operator_id uuid, p_tenant_id uuid, p_plan text, p_source text)
    RETURNS TABLE (id uuid, slug text, name text, plan text, previous_plan text, created_at timestamptz)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    v_email    text := public.platform_require_operator(p_operator_id);
    v_previous text;
BEGIN
    SELECT t.plan INTO v_previous FROM public.tenants t WHERE t.id = p_tenant_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE public.tenants t SET plan = p_plan WHERE t.id = p_tenant_id;
    INSERT INTO public.audit_log (tenant_id, actor_user_id, action, target_type, target_id, source_address, detail)
    VALUES (p_tenant_id, NULL, 'tenant.change_plan', 'tenant', p_tenant_id::text, p_source,
            json_build_object('operator_id', p_operator_id, 'operator_email', v_email, 'from', v_previous,
                              'to', p_plan)::jsonb);
    RETURN QUERY SELECT t.id, t.slug, t.name, t.plan, v_previous, t.created_at
                 FROM public.tenants t WHERE t.id = p_tenant_id;
END
$$;

REVOKE ALL ON FUNCTION platform_find_operator(text), platform_get_operator(uuid),
    platform_require_operator(uuid), platform_list_tenants(uuid, timestamptz, uuid, integer),
    platform_create_tenant(uuid, text, text, text, text, text, text),
    platform_set_plan(uuid, uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION platform_find_operator(text), platform_get_operator(uuid),
    platform_list_tenants(uuid, timestamptz, uuid, integer),
    platform_create_tenant(uuid, text, text, text, text, text, text),
    platform_set_plan(uuid, uuid, text, text) TO mqtt_saas_app;
