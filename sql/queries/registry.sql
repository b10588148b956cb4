-- insert_tenant --
-- Runs inside tenant_transaction(new id): RLS lets the app role create only the tenant it acts for.
INSERT INTO tenants (id, slug, name, plan) VALUES (%(id)s, %(slug)s, %(name)s, %(plan)s)
RETURNING id, slug, name, plan, created_at

-- insert_device --
INSERT INTO devices (tenant_id, name, display_name) VALUES (%(tenant_id)s, %(name)s, %(display_name)s)
RETURNING tenant_id, id, name, display_name, enabled, status, last_seen, created_at

-- set_device_enabled --
UPDATE devices SET enabled = %(enabled)s WHERE tenant_id = %(tenant_id)s AND name = %(name)s
RETURNING id
