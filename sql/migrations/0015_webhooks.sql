-- Signed webhooks for alert events (issue 13 §3): per-rule targets, an outbox of deliveries, and
-- every attempt made to deliver one.
--
-- Enqueueing is the database's job: a trigger on alert_events writes one delivery per enabled
-- target of the event's rule in the same transaction as the event's change (opened by the
-- evaluator, acknowledged or resolved by the API or the evaluator), so no code path can change an
-- event and forget to notify, and a rolled-back change notifies no one. The payload is fixed then:
-- a retry sends the same body, whatever happened to the rule or device since.
--
-- Delivery (shared/webhooks.py) runs as the app role, one tenant at a time under RLS, like the
-- evaluator: webhook_tenants_with_due_deliveries() answers which tenants to visit (ids only).
-- The signing secret is stored only Fernet-encrypted by the app (secret_encrypted); nothing in the
-- database ever holds it in plaintext.

CREATE TABLE alert_webhooks (
    tenant_id         uuid NOT NULL,
    id                uuid NOT NULL DEFAULT gen_random_uuid(),
    rule_id           uuid NOT NULL,
    url               text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    description       text CHECK (length(description) BETWEEN 1 AND 200),
    secret_encrypted  text NOT NULL,
    enabled           boolean NOT NULL DEFAULT true,
    -- why the app disabled it (a 410 Gone from the receiver); null while enabled or never disabled
    disabled_reason   text CHECK (length(disabled_reason) <= 200),
    created_by        uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    secret_rotated_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, rule_id) REFERENCES alert_rules (tenant_id, id) ON DELETE CASCADE
);
-- a rule's targets, listed oldest first; the trigger finds them by rule
CREATE INDEX alert_webhooks_rule ON alert_webhooks (tenant_id, rule_id, created_at, id);

CREATE TABLE webhook_deliveries (
    tenant_id        uuid NOT NULL,
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    webhook_id       uuid NOT NULL,
    -- no foreign key: the delivery outlives nothing it names, and its payload already says it all
    event_id         uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('alert.opened', 'alert.acknowledged', 'alert.resolved')),
    payload          jsonb NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- while pending: when it is due; a claimed delivery's is pushed past the attempt (its lease)
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    PRIMARY KEY (tenant_id, id),
    -- nothing is enqueued twice: a repeated state change, or a trigger fired again, is a no-op
    UNIQUE (tenant_id, webhook_id, event_id, kind),
    FOREIGN KEY (tenant_id, webhook_id) REFERENCES alert_webhooks (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_delivered CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
-- what is due, for every tenant (the SECURITY DEFINER function) and per tenant (the claim)
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (tenant_id, next_attempt_at) WHERE state = 'pending';
-- a target's deliveries, newest first
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (tenant_id, webhook_id, created_at DESC, id DESC);
-- settled deliveries by age, for pruning
CREATE INDEX webhook_deliveries_settled ON webhook_deliveries (created_at) WHERE state <> 'pending';

CREATE TABLE webhook_attempts (
    tenant_id        uuid NOT NULL,
    delivery_id      uuid NOT NULL,
    attempt          integer NOT NULL CHECK (attempt >= 1),
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL CHECK (duration_ms >= 0),
    status_code      integer,
    error            text CHECK (length(error) <= 500),
    -- the start of the receiver's answer, for debugging it (the read is capped)
    response_excerpt text CHECK (length(response_excerpt) <= 4096),
    PRIMARY KEY (tenant_id, delivery_id, attempt),
    FOREIGN KEY (tenant_id, delivery_id) REFERENCES webhook_deliveries (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE alert_webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_webhooks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON alert_webhooks TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_deliveries TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_attempts TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- The owner sees its own tables (see 0012); the enqueue trigger below runs as the owner.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['alert_webhooks', 'webhook_deliveries', 'webhook_attempts'] LOOP
        EXECUTE format('CREATE POLICY owner_access ON public.%I TO %I USING (true) WITH CHECK (true)',
                       t, (SELECT pg_get_userbyid(c.relowner) FROM pg_class c
                           WHERE c.oid = format('public.%I', t)::regclass));
    END LOOP;
END
$$;

-- Targets: created, listed, re-keyed, disabled (410) and deleted by the app.
GRANT SELECT, INSERT, DELETE ON alert_webhooks TO mqtt_saas_app;
GRANT UPDATE (secret_encrypted, secret_rotated_at, enabled, disabled_reason) ON alert_webhooks TO mqtt_saas_app;
-- Deliveries are only ever enqueued by the trigger (as the owner); the app claims and settles them.
GRANT SELECT ON webhook_deliveries TO mqtt_saas_app;
GRANT UPDATE (state, attempts, next_attempt_at, last_status_code, last_error, delivered_at) ON webhook_deliveries
    TO mqtt_saas_app;
-- An attempt, once recorded, is history.
GRANT SELECT, INSERT ON webhook_attempts TO mqtt_saas_app;

-- One delivery per enabled target of the event's rule, for an opened event and for each change of
-- its state. SECURITY DEFINER so the app role needs no INSERT on the outbox; every row it reads
-- or writes is the changed event's own tenant's (NEW.tenant_id), which RLS already confined the
-- caller to.
CREATE FUNCTION enqueue_alert_webhooks() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
DECLARE
    event_kind text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        event_kind := 'alert.opened';
    ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
        event_kind := 'alert.' || NEW.state;
    ELSE
        RETURN NULL;
    END IF;
    INSERT INTO public.webhook_deliveries (tenant_id, webhook_id, event_id, kind, payload)
    SELECT w.tenant_id, w.id, NEW.id, event_kind, jsonb_build_object(
               'type', event_kind,
               'created_at', now(),
               'tenant', t.slug,
               'event', jsonb_build_object(
                   'id', NEW.id, 'state', NEW.state, 'severity', NEW.severity, 'value', NEW.value,
                   'opened_at', NEW.opened_at, 'acknowledged_at', NEW.acknowledged_at,
                   'acknowledged_by', NEW.acknowledged_by, 'resolved_at', NEW.resolved_at,
                   'resolved_by', NEW.resolved_by, 'comment', NEW.comment),
               'rule', jsonb_build_object(
                   'id', r.id, 'name', r.name, 'kind', r.kind, 'metric', r.metric,
                   'operator', r.operator, 'threshold', r.value),
               'device', jsonb_build_object('id', d.id, 'name', d.name, 'display_name', d.display_name))
      FROM public.alert_webhooks w
      JOIN public.alert_rules r ON r.tenant_id = w.tenant_id AND r.id = w.rule_id
      JOIN public.tenants t ON t.id = w.tenant_id
      LEFT JOIN public.devices d ON d.tenant_id = w.tenant_id AND d.id = NEW.device_id
     WHERE w.tenant_id = NEW.tenant_id AND w.rule_id = NEW.rule_id AND w.enabled
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION enqueue_alert_webhooks() FROM PUBLIC;

CREATE TRIGGER alert_events_enqueue_webhooks AFTER INSERT OR UPDATE OF state ON alert_events
    FOR EACH ROW EXECUTE FUNCTION enqueue_alert_webhooks();

-- The tenants the delivery step visits: those with a pending delivery now due. Ids only.
CREATE FUNCTION webhook_tenants_with_due_deliveries() RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT DISTINCT d.tenant_id FROM public.webhook_deliveries d
     WHERE d.state = 'pending' AND d.next_attempt_at <= now() ORDER BY 1
$$;
REVOKE ALL ON FUNCTION webhook_tenants_with_due_deliveries() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook_tenants_with_due_deliveries() TO mqtt_saas_app;

-- Settled deliveries (and their attempts) older than keep_days go, at most max_rows a call, so the
-- outbox does not grow forever; pending ones stay whatever their age. Every tenant's, hence SECURITY
-- DEFINER: the app role has no DELETE on the outbox. Returns how many went.
CREATE FUNCTION prune_webhook_deliveries(keep_days integer, max_rows integer) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    WITH gone AS (
        DELETE FROM public.webhook_deliveries d
         WHERE (d.tenant_id, d.id) IN (
               SELECT o.tenant_id, o.id FROM public.webhook_deliveries o
                WHERE o.state <> 'pending' AND o.created_at < now() - make_interval(days => keep_days)
                ORDER BY o.created_at LIMIT max_rows)
        RETURNING 1)
    SELECT count(*) FROM gone
$$;
REVOKE ALL ON FUNCTION prune_webhook_deliveries(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_webhook_deliveries(integer, integer) TO mqtt_saas_app;
