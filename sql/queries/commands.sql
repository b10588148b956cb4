-- command_target --
-- The device a command is for, with the tenant slug its topic needs; no row for another
-- tenant's device (RLS) or an unknown id.
SELECT d.id, d.name, d.enabled, t.slug AS tenant_slug
FROM devices d JOIN tenants t ON t.id = d.tenant_id
WHERE d.tenant_id = %(tenant_id)s AND d.id = %(device_id)s

-- insert_command --
-- Recorded before it is published, as 'pending'.
INSERT INTO commands (tenant_id, device_id, name, args, sent_by)
VALUES (%(tenant_id)s, %(device_id)s, %(name)s, %(args)s, %(sent_by)s)
RETURNING id, device_id, name, args, sent_by, created_at, status, sent_at, failure, acked_at, result

-- set_command_outcome --
-- The publish outcome: 'sent' (with sent_at) or 'failed' (with the failure reason).
UPDATE commands
SET status = %(status)s,
    sent_at = CASE WHEN %(status)s = 'sent' THEN now() END,
    failure = %(failure)s
WHERE tenant_id = %(tenant_id)s AND id = %(id)s AND status = 'pending'
RETURNING id, device_id, name, args, sent_by, created_at, status, sent_at, failure, acked_at, result

-- acknowledge_commands --
-- Marks a device's sent commands acknowledged once the device has reported a 'cmd_ack' reading
-- naming them (the drain stores it like any reading); result is the 'cmd_result' reading of the
-- same record, if any. Only commands of the last day are looked for, and the ts window keeps each
-- lookup on the telemetry dedup index while tolerating a device clock up to 10 minutes behind.
WITH acks AS (
    SELECT DISTINCT ON (c.id) c.id, a.ts, r.value_text AS result
    FROM commands c
    JOIN telemetry a ON a.tenant_id = c.tenant_id AND a.device_id = c.device_id AND a.metric = 'cmd_ack'
                    AND a.ts >= c.created_at - interval '10 minutes' AND a.value_text = c.id::text
    LEFT JOIN telemetry r ON r.tenant_id = a.tenant_id AND r.device_id = a.device_id
                         AND r.metric = 'cmd_result' AND r.ts = a.ts AND r.seq = a.seq
    WHERE c.tenant_id = %(tenant_id)s AND c.device_id = %(device_id)s AND c.status = 'sent'
      AND c.created_at > now() - interval '1 day'
    ORDER BY c.id, a.ts
)
UPDATE commands c
SET status = 'acknowledged', acked_at = acks.ts, result = left(acks.result, 256)
FROM acks
WHERE c.tenant_id = %(tenant_id)s AND c.id = acks.id AND c.status = 'sent'

-- list_commands --
-- One page of a device's commands, newest first by (created_at, id), after the cursor if given.
SELECT id, device_id, name, args, sent_by, created_at, status, sent_at, failure, acked_at, result
FROM commands
WHERE tenant_id = %(tenant_id)s AND device_id = %(device_id)s
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
