-- webhook_lock_rule --
-- The rule whose targets change, locked so concurrent creations count one after the other (the cap).
-- NO KEY UPDATE: inserting a target (a foreign key to the rule) is not blocked by it.
SELECT id FROM alert_rules WHERE tenant_id = %(tenant_id)s AND id = %(rule_id)s FOR NO KEY UPDATE

-- webhook_rule_exists --
SELECT EXISTS (SELECT 1 FROM alert_rules WHERE tenant_id = %(tenant_id)s AND id = %(rule_id)s) AS present

-- count_rule_webhooks --
SELECT count(*) AS n FROM alert_webhooks WHERE tenant_id = %(tenant_id)s AND rule_id = %(rule_id)s

-- insert_webhook --
-- Never returns the encrypted secret: the caller shows the plaintext it generated, once.
INSERT INTO alert_webhooks (tenant_id, rule_id, url, description, secret_encrypted, created_by)
VALUES (%(tenant_id)s, %(rule_id)s, %(url)s, %(description)s, %(secret_encrypted)s, %(created_by)s)
RETURNING id, rule_id, url, description, enabled, disabled_reason, created_by, created_at, secret_rotated_at

-- list_rule_webhooks --
-- A rule's targets, oldest first by (created_at, id), a page at a time; never the secret.
SELECT id, rule_id, url, description, enabled, disabled_reason, created_by, created_at, secret_rotated_at
FROM alert_webhooks
WHERE tenant_id = %(tenant_id)s AND rule_id = %(rule_id)s
  AND (%(after_created_at)s::timestamptz IS NULL OR (created_at, id) > (%(after_created_at)s, %(after_id)s::uuid))
ORDER BY created_at, id
LIMIT %(limit)s

-- get_webhook --
-- rule_id NULL: the target whatever its rule (the deliveries route names only the target).
SELECT id, rule_id, url, description, enabled, disabled_reason, created_by, created_at, secret_rotated_at
FROM alert_webhooks
WHERE tenant_id = %(tenant_id)s AND id = %(webhook_id)s
  AND (%(rule_id)s::uuid IS NULL OR rule_id = %(rule_id)s)

-- delete_webhook --
-- Its deliveries and their attempts go with it (ON DELETE CASCADE).
DELETE FROM alert_webhooks
WHERE tenant_id = %(tenant_id)s AND rule_id = %(rule_id)s AND id = %(webhook_id)s
RETURNING id, url

-- rotate_webhook_secret --
-- Deliveries not yet sent are signed with the new secret (signing happens at each attempt).
UPDATE alert_webhooks SET secret_encrypted = %(secret_encrypted)s, secret_rotated_at = now()
WHERE tenant_id = %(tenant_id)s AND rule_id = %(rule_id)s AND id = %(webhook_id)s
RETURNING id, rule_id, url, description, enabled, disabled_reason, created_by, created_at, secret_rotated_at

-- list_webhook_deliveries --
-- A target's deliveries, newest first by (created_at, id), each with its attempts in order.
SELECT d.id, d.webhook_id, d.event_id, d.kind, d.state, d.attempts, d.next_attempt_at, d.last_status_code,
       d.last_error, d.created_at, d.delivered_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                     'attempt', a.attempt, 'started_at', a.started_at, 'duration_ms', a.duration_ms,
                     'status_code', a.status_code, 'error', a.error, 'response_excerpt', a.response_excerpt)
                     ORDER BY a.attempt)
                 FROM webhook_attempts a WHERE a.tenant_id = d.tenant_id AND a.delivery_id = d.id),
                '[]'::jsonb) AS attempt_log
FROM webhook_deliveries d
WHERE d.tenant_id = %(tenant_id)s AND d.webhook_id = %(webhook_id)s
  AND (%(state)s::text IS NULL OR d.state = %(state)s)
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (d.created_at, d.id) < (%(after_created_at)s, %(after_id)s::uuid))
ORDER BY d.created_at DESC, d.id DESC
LIMIT %(limit)s

-- webhook_tenants_with_due_deliveries --
-- Which tenants have a delivery due (0015's SECURITY DEFINER function: ids only).
SELECT tenant_id FROM webhook_tenants_with_due_deliveries()

-- claim_webhook_delivery --
-- The tenant's next due delivery to an enabled target, leased: its next_attempt_at moves past the
-- attempt, so an overlapping run skips it (SKIP LOCKED while this transaction lasts, the lease
-- after). Targets that already failed in this run are passed over (skip_webhooks) so one dead
-- receiver does not use up the run. The secret leaves the database encrypted.
UPDATE webhook_deliveries d
   SET next_attempt_at = now() + make_interval(secs => %(lease_s)s)
  FROM alert_webhooks w
 WHERE d.tenant_id = %(tenant_id)s AND w.tenant_id = d.tenant_id AND w.id = d.webhook_id
   AND d.id = (SELECT q.id FROM webhook_deliveries q
                JOIN alert_webhooks qw ON qw.tenant_id = q.tenant_id AND qw.id = q.webhook_id
               WHERE q.tenant_id = %(tenant_id)s AND q.state = 'pending' AND q.next_attempt_at <= now()
                 AND qw.enabled AND NOT (q.webhook_id = ANY (%(skip_webhooks)s::uuid[]))
               ORDER BY q.next_attempt_at, q.created_at
               LIMIT 1
               FOR UPDATE OF q SKIP LOCKED)
RETURNING d.id, d.webhook_id, d.event_id, d.kind, d.payload, d.attempts, w.url, w.secret_encrypted

-- insert_webhook_attempt --
INSERT INTO webhook_attempts (tenant_id, delivery_id, attempt, started_at, duration_ms, status_code, error,
                              response_excerpt)
VALUES (%(tenant_id)s, %(delivery_id)s, %(attempt)s, %(started_at)s, %(duration_ms)s, %(status_code)s, %(error)s,
        %(response_excerpt)s)
ON CONFLICT DO NOTHING

-- settle_webhook_delivery --
-- After an attempt: delivered, given up (failed), or pending again at its backoff.
UPDATE webhook_deliveries
   SET attempts = %(attempt)s, state = %(state)s, last_status_code = %(status_code)s, last_error = %(error)s,
       next_attempt_at = CASE WHEN %(state)s = 'pending' THEN now() + make_interval(secs => %(retry_in_s)s)
                              ELSE next_attempt_at END,
       delivered_at = CASE WHEN %(state)s = 'delivered' THEN now() END
 WHERE tenant_id = %(tenant_id)s AND id = %(delivery_id)s AND state = 'pending'

-- disable_webhook --
-- The receiver answered 410 Gone: it asked not to be called again.
UPDATE alert_webhooks SET enabled = false, disabled_reason = %(reason)s
WHERE tenant_id = %(tenant_id)s AND id = %(webhook_id)s

-- prune_webhook_deliveries --
-- Settled deliveries older than keep_days, a bounded batch (0015's SECURITY DEFINER function).
SELECT prune_webhook_deliveries(%(keep_days)s, %(max_rows)s) AS pruned
