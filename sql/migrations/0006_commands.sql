-- Commands sent to devices through the admin API (issue 12 §4).
--
-- A command is recorded before it is published ('pending'), so a device never receives a command
-- the database does not know of; the publish outcome then moves it to 'sent' (the broker
-- acknowledged it, PUBACK < 128) or 'failed' (broker unreachable or refusing, reason in
-- failure). A device acknowledges by naming the command id in a reading of metric 'cmd_ack'
-- (its ACL lets it publish readings only); the API marks such commands 'acknowledged' when it
-- lists them, with acked_at the reading's time and result the 'cmd_result' reading beside it.
-- sent_by has no foreign key, like audit_log.actor_user_id: deleting a user keeps the history.

CREATE TABLE commands (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    device_id   bigint NOT NULL,
    name        text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    args        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(args) = 'object'),
    sent_by     uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'failed', 'acknowledged')),
    sent_at     timestamptz,
    failure     text CHECK (failure IN ('broker_unreachable', 'broker_refused')),
    acked_at    timestamptz,
    result      text CHECK (length(result) <= 256),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);
-- a device's commands page newest first by (created_at, id)
CREATE INDEX commands_device_created ON commands (tenant_id, device_id, created_at DESC, id DESC);

ALTER TABLE commands ENABLE ROW LEVEL SECURITY;
ALTER TABLE commands FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON commands TO mqtt_saas_app
    USING (tenant_id = current_tenant_id()) WITH CHECK (tenant_id = current_tenant_id());

-- What a command is and who sent it never change; only its outcome does. No DELETE: a command
-- goes with its device (ON DELETE CASCADE).
GRANT SELECT, INSERT ON commands TO mqtt_saas_app;
GRANT UPDATE (status, sent_at, failure, acked_at, result) ON commands TO mqtt_saas_app;
