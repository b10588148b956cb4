-- Seconds (by the database's clock) until the next rotation overlap ends, across tenants, for the
-- broker_sync run: a run that finds one ending within seconds waits for it, so an overlap ends when
-- the rotation's answer said (shared/broker/credential_sync.py). NULL: none pending. Answers that only.
CREATE FUNCTION broker_next_credential_expiry_s() RETURNS double precision
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
    SELECT extract(epoch FROM min(c.expires_at) - now())::double precision
    FROM public.device_credentials c WHERE c.expires_at IS NOT NULL
$$;
REVOKE ALL ON FUNCTION broker_next_credential_expiry_s() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION broker_next_credential_expiry_s() TO mqtt_saas_app;

-- A sign-in's session: every refresh token of one login carries its id, and the access tokens issued
-- with them name it (claim sid). The API's per-request read of the acting user checks the session
-- still has a live refresh token, so logging out (which revokes them) ends the access tokens at
-- once instead of at their expiry. Existing rows become sessions of their own.
ALTER TABLE refresh_tokens ADD COLUMN session_id uuid NOT NULL DEFAULT gen_random_uuid();
CREATE INDEX refresh_tokens_live_session ON refresh_tokens (tenant_id, session_id) WHERE revoked_at IS NULL;
