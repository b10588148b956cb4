-- tenant_usage --
-- The caller's tenant: its plan's limits and what it uses now (RLS scopes every table to it).
-- Messages count the current UTC hour, as the drain meters them.
SELECT t.plan, p.max_devices, p.max_users, p.max_alert_rules, p.max_profiles, p.messages_per_hour,
       p.raw_retention_days,
       (SELECT count(*) FROM devices d WHERE d.tenant_id = t.id) AS devices,
       (SELECT count(*) FROM device_profiles dp WHERE dp.tenant_id = t.id) AS profiles,
       (SELECT count(*) FROM users u WHERE u.tenant_id = t.id) AS users,
       coalesce((SELECT h.messages FROM usage_hourly h
                 WHERE h.tenant_id = t.id AND h.hour = date_trunc('hour', now(), 'UTC')), 0) AS messages,
       coalesce((SELECT h.over_quota FROM usage_hourly h
                 WHERE h.tenant_id = t.id AND h.hour = date_trunc('hour', now(), 'UTC')), 0) AS over_quota,
       date_trunc('hour', now(), 'UTC') AS hour
FROM tenants t JOIN plans p ON p.name = t.plan
WHERE t.id = %(tenant_id)s

-- count_alert_rules --
SELECT count(*) AS n FROM alert_rules WHERE tenant_id = %(tenant_id)s

-- list_audit --
-- One page of the tenant's audit log, newest first (id is the insertion order), after the cursor,
-- optionally only one action, one actor, or entries since a time.
SELECT id, at, actor_user_id, action, target_type, target_id, source_address, detail
FROM audit_log
WHERE tenant_id = %(tenant_id)s
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
  AND (%(action)s::text IS NULL OR action = %(action)s::text)
  AND (%(actor)s::uuid IS NULL OR actor_user_id = %(actor)s::uuid)
  AND (%(since)s::timestamptz IS NULL OR at >= %(since)s::timestamptz)
ORDER BY id DESC
LIMIT %(limit)s

-- list_plans --
SELECT name, max_devices, max_users, max_alert_rules, max_profiles, messages_per_hour, raw_retention_days
FROM plans ORDER BY sort_order

-- find_operator --
-- Operator login: the id and password hash for an email (no row when there is none).
SELECT operator_id, password_hash FROM platform_find_operator(%(email)s)

-- get_operator --
-- The operator a token names, re-read on every request: a deleted operator loses access at once.
SELECT operator_id, email FROM platform_get_operator(%(operator_id)s)

-- platform_list_tenants --
SELECT id, slug, name, plan, created_at, devices, users, messages_this_hour
FROM platform_list_tenants(%(operator_id)s, %(after_created_at)s, %(after_id)s, %(limit)s)

-- platform_create_tenant --
SELECT tenant_id, owner_id
FROM platform_create_tenant(%(operator_id)s, %(slug)s, %(name)s, %(plan)s, %(owner_email)s,
                            %(owner_password_hash)s, %(source)s)

-- platform_set_plan --
SELECT id, slug, name, plan, previous_plan, created_at
FROM platform_set_plan(%(operator_id)s, %(tenant_id)s, %(plan)s, %(source)s)

-- quota_state --
-- The drain, once per tenant per run and hour: the plan's message rate and what this hour
-- already used (the drain then counts on in memory: it is the only writer, one run at a time).
SELECT t.id AS tenant_id, t.slug, p.name AS plan, p.messages_per_hour, coalesce(h.messages, 0) AS used
FROM unnest(%(tenant_ids)s::uuid[]) AS k (tenant_id)
JOIN tenants t ON t.id = k.tenant_id
JOIN plans p ON p.name = t.plan
LEFT JOIN usage_hourly h ON h.tenant_id = t.id AND h.hour = %(hour)s

-- count_usage --
-- One upsert per tenant of a batch, in its transaction: messages accepted, and over quota.
INSERT INTO usage_hourly AS h (tenant_id, hour, messages, over_quota)
SELECT v.tenant_id, %(hour)s, v.messages, v.over_quota
FROM unnest(%(tenant_ids)s::uuid[], %(messages)s::bigint[], %(over_quota)s::bigint[])
     AS v (tenant_id, messages, over_quota)
ORDER BY v.tenant_id
ON CONFLICT (tenant_id, hour) DO UPDATE
SET messages = h.messages + excluded.messages, over_quota = h.over_quota + excluded.over_quota
