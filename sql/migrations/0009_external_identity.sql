-- Users who sign in through an external identity provider (e.g. Supabase Auth).
--
-- Such a user is still one of ours: a row in users, with the role we store. The provider's token
-- says which tenant (a claim) and who (its subject); the first accepted token whose email matches
-- an unlinked user of that tenant links the user to that subject, and from then on only that
-- subject reaches the user, so an address later reused at the provider cannot take the account
-- over. Deleting the user (or moving them to another tenant) revokes access at once.

ALTER TABLE users ADD COLUMN external_subject text
    CHECK (length(external_subject) BETWEEN 1 AND 255);
CREATE UNIQUE INDEX users_external_subject ON users (tenant_id, external_subject)
    WHERE external_subject IS NOT NULL;

-- Like find_login (0004): the user must be found before any tenant is set, and the tenant comes
-- from the verified token, never from the request. This narrow SECURITY DEFINER function answers
-- one question: in the tenant named by slug or id, the user linked to this subject or, failing
-- that, the unlinked user with this email. Only the app role may call it; search_path is pinned.
CREATE FUNCTION find_external_user(p_tenant text, p_subject text, p_email text)
    RETURNS TABLE (user_id uuid, tenant_id uuid, role text, linked boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT u.id, u.tenant_id, u.role, u.external_subject IS NOT NULL
    FROM public.users u JOIN public.tenants t ON t.id = u.tenant_id
    WHERE (t.slug = p_tenant OR t.id::text = p_tenant)
      AND (u.external_subject = p_subject
           OR (u.external_subject IS NULL AND p_email IS NOT NULL AND u.email = lower(p_email)))
    ORDER BY u.external_subject IS NOT NULL DESC
    LIMIT 1
$$;
REVOKE ALL ON FUNCTION find_external_user(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION find_external_user(text, text, text) TO mqtt_saas_app;
