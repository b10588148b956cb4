-- Alert rules, their per-device evaluation state, and the events they open (issue 13 §1, §2).
--
-- The evaluator (shared/alerts.py, the alert_evaluator timer and POST /api/alerts/evaluate) runs as
-- the app role, one tenant at a time under RLS, like any request. The one thing it needs across
-- tenants is which tenants to visit: alert_tenants_with_rules() answers exactly that (tenant ids,
-- nothing else), so the timer needs no role of its own and never sees another tenant's rows.
--
-- At most one not-resolved event per (rule, device) is a partial unique index: the evaluator opens
-- events with INSERT ... ON CONFLICT DO NOTHING, so overlapping or repeated runs never duplicate one.

CREATE TABLE alert_rules (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind             text NOT NULL CHECK (kind IN ('threshold', 'no_data', 'anomaly')),
    -- which devices: one (device_id), those with a tag, those of a type, or all of the tenant's
    scope            text NOT NULL CHECK (scope IN ('device', 'tag', 'type', 'all')),
    device_id        bigint,
    tag              text CHECK (length(tag) BETWEEN 1 AND 50),
    device_type      text CHECK (length(device_type) BETWEEN 1 AND 100),
    metric           text CHECK (length(metric) BETWEEN 1 AND 64),
    aggregation      text CHECK (aggregation IN ('avg', 'min', 'max', 'last', 'count')),
    window_s         integer CHECK (window_s BETWEEN 10 AND 86400),
    operator         text CHECK (operator IN ('>', '>=', '<', '<=')),
    value            double precision,
    -- hysteresis: an open event resolves only once the aggregate no longer passes clear_value
    clear_value      double precision,
    consecutive      integer NOT NULL DEFAULT 1 CHECK (consecutive BETWEEN 1 AND 100),
    no_data_minutes  integer CHECK (no_data_minutes BETWEEN 1 AND 10080),
    severity         text NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
    enabled          boolean NOT NULL DEFAULT true,
    created_by       uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- a rule on one device goes with it
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT alert_rules_scope CHECK (
        (scope = 'device') = (device_id IS NOT NULL) AND (scope = 'tag') = (tag IS NOT NULL)
        AND (scope = 'type') = (device_type IS NOT NULL)),
    CONSTRAINT alert_rules_threshold CHECK (kind <> 'threshold' OR (
        metric IS NOT NULL AND aggregation IS NOT NULL AND window_s IS NOT NULL AND operator IS NOT NULL
        AND value IS NOT NULL AND clear_value IS NOT NULL
        AND CASE WHEN operator IN ('>', '>=') THEN clear_value <= value ELSE clear_value >= value END)),
    CONSTRAINT alert_rules_no_data CHECK (kind <> 'no_data' OR no_data_minutes IS NOT NULL)
);
CREATE INDEX alert_rules_enabled ON alert_rules (tenant_id, kind) WHERE enabled;

-- Per rule and device: consecutive breaching evaluations, the last aggregate, and whether the last
-- evaluation said "clear". Kept for anomaly baselines later (issue 13 §1).
CREATE TABLE alert_rule_state (
    tenant_id     uuid NOT NULL,
    rule_id       uuid NOT NULL,
    device_id     bigint NOT NULL,
    breaches      integer NOT NULL DEFAULT 0,
    cleared       boolean NOT NULL DEFAULT true,
    last_value    double precision,
    evaluated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_id, device_id),
    FOREIGN KEY (tenant_id, rule_id) REFERENCES alert_rules (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);

-- resolved_by NULL on a resolved event: the evaluator resolved it (the condition cleared).
-- acknowledged_by / resolved_by have no foreign key, like audit_log.actor_user_id.
CREATE TABLE alert_events (
    tenant_id        uuid NOT NULL,
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    rule_id          uuid NOT NULL,
    device_id        bigint NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state            text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'acknowledged', 'resolved')),
    opened_at        timestamptz NOT NULL DEFAULT now(),
    value            double precision,
    acknowledged_at  timestamptz,
    acknowledged_by  uuid,
    resolved_at      timestamptz,
    resolved_by      uuid,
    comment          text CHECK (length(comment) <= 1000),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, rule_id) REFERENCES alert_rules (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT alert_events_resolved CHECK ((state = 'resolved') = (resolved_at IS NOT NULL)),
    CONSTRAINT alert_events_acknowledged CHECK (state <> 'acknowledged' OR acknowledged_at IS NOT NULL)
);
CREATE UNIQUE INDEX alert_events_one_unresolved ON alert_events (tenant_id, rule_id, device_id)
    WHERE state <> 'resolved';
-- GET /api/alerts/events pages newest first by (opened_at, id)
CREATE INDEX alert_events_opened ON alert_events (tenant_id, opened_at DESC, id DESC);

ALTER TABLE alert_rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_rules FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_rules TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE alert_rule_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_rule_state FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_rule_state TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE alert_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_events TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- The owner sees its own tables (see 0012).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['alert_rules', 'alert_rule_state', 'alert_events'] LOOP
        EXECUTE format('CREATE POLICY owner_access ON public.%I TO %I USING (true) WITH CHECK (true)',
                       t, (SELECT pg_get_userbyid(c.relowner) FROM pg_class c
                           WHERE c.oid = format('public.%I', t)::regclass));
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rules TO mqtt_saas_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_rule_state TO mqtt_saas_app;
-- What an event was never changes; only its lifecycle does. It goes with its rule or device.
GRANT SELECT, INSERT ON alert_events TO mqtt_saas_app;
GRANT UPDATE (state, acknowledged_at, acknowledged_by, resolved_at, resolved_by, comment) ON alert_events
    TO mqtt_saas_app;

CREATE TRIGGER alert_rules_plan_limit AFTER INSERT ON alert_rules
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION enforce_plan_limit('max_alert_rules');

-- The tenants the evaluator visits: those with an enabled rule. Ids only.
CREATE FUNCTION alert_tenants_with_rules() RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT r.tenant_id FROM public.alert_rules r WHERE r.enabled ORDER BY 1
$$;
REVOKE ALL ON FUNCTION alert_tenants_with_rules() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION alert_tenants_with_rules() TO mqtt_saas_app;
