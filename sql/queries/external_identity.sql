-- find_external_user --
-- The user an external token speaks for (see find_external_user() in 0009_external_identity.sql).
SELECT user_id, tenant_id, role, linked FROM find_external_user(%(tenant)s, %(subject)s, %(email)s)

-- link_external_subject --
-- Pins the user to the provider's subject on first use; no row when another request linked it first.
UPDATE users SET external_subject = %(subject)s
WHERE tenant_id = %(tenant_id)s AND id = %(user_id)s AND external_subject IS NULL
RETURNING id
