-- Each device's status changes (never_seen -> online, online -> offline, ...), as the drain sees
-- them, for the dashboard's device page. Written by the drain's presence update in the batch's own
-- transaction (one row per change, not per message); read by the app role for its tenant only.

CREATE TABLE device_status_history (
    tenant_id   uuid NOT NULL,
    device_id   bigint NOT NULL,
    id          bigint GENERATED ALWAYS AS IDENTITY,
    status      text NOT NULL CHECK (status IN ('never_seen', 'online', 'offline')),
    previous    text CHECK (previous IN ('never_seen', 'online', 'offline')),
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, id) ON DELETE CASCADE
);
-- the device page reads one device's newest changes, a page at a time
CREATE INDEX device_status_history_device ON device_status_history (tenant_id, device_id, at DESC, id DESC);

ALTER TABLE device_status_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_status_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_status_history FOR SELECT TO mqtt_saas_app
    USING (tenant_id = current_tenant_id());
CREATE POLICY ingest_write ON device_status_history FOR INSERT TO mqtt_saas_ingest WITH CHECK (true);
-- The tables' owner sees every row (see 0012: a managed server's admin is bound by FORCE'd RLS).
CREATE POLICY owner_access ON device_status_history TO CURRENT_USER USING (true) WITH CHECK (true);

GRANT SELECT ON device_status_history TO mqtt_saas_app;
GRANT INSERT ON device_status_history TO mqtt_saas_ingest;
