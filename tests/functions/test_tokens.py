"""Bearer tokens through the registered function: our own HS256 access tokens and an external
identity provider's (shared secret or JWKS), every way of getting one wrong refused with a 401
problem, and the external user mapping (tenant claim, subject link, role claim that only narrows).
The JWKS is served by a real HTTP server on a free port; PyJWT's PyJWKClient fetches it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared.accounts import tokens
from tests.support.api import (
    JWT_SECRET,
    call,
    close_api_pool,
    export_api_settings,
    mint_token,
    new_tenant,
    new_user,
    token_for,
)
from tests.support.waiting import query, wait_for

OUR_ISSUER = "mqtt-saas-test"
OUR_AUDIENCE = "mqtt-saas-api"
EXT_ISSUER = "https://idp.example.supabase.co/auth/v1"
EXT_AUDIENCE = "authenticated"
EXT_SECRET = "external-provider-shared-secret-of-32+-bytes"
OTHER_SECRET = "not-the-secret-but-long-enough-for-hs256!!"


def assert_refused(reply, kind: str = "unauthenticated") -> None:
    assert reply.status == 401, reply.body
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json["type"] == "urn:mqtt-saas:problem:" + kind
    assert reply.headers["www-authenticate"].startswith("Bearer")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hand_signed(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand: PyJWT refuses to make the malicious ones (alg none, HS256 with a PEM key)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def tenant(app_pool):
    return new_tenant(app_pool)


@pytest.fixture
def owner(app_pool, tenant):
    return new_user(app_pool, tenant, "owner")


@pytest.fixture
def secret_api(monkeypatch, database):
    """The API with an external provider that signs with a shared HS256 secret (Supabase's legacy mode)."""
    export_api_settings(
        monkeypatch,
        database,
        AUTH_EXTERNAL_ISSUER=EXT_ISSUER,
        AUTH_EXTERNAL_AUDIENCE=EXT_AUDIENCE,
        AUTH_EXTERNAL_SECRET=EXT_SECRET,
    )
    yield
    close_api_pool()


class Jwks:
    """A provider's signing keys (RSA and P-256) and the JWKS endpoint that publishes them."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_jwk = {
            **RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True),
            "kid": "rsa-1",
            "alg": "RS256",
            "use": "sig",
        }
        ec_jwk = {**ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True), "kid": "ec-1", "alg": "ES256", "use": "sig"}
        self.document = json.dumps({"keys": [rsa_jwk, ec_jwk]}).encode()
        self.fetches = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                jwks.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(jwks.document)))
                self.end_headers()
                self.wfile.write(jwks.document)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth/v1/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.close()


@pytest.fixture
def jwks_api(monkeypatch, database, jwks):
    export_api_settings(
        monkeypatch,
        database,
        AUTH_EXTERNAL_ISSUER=EXT_ISSUER,
        AUTH_EXTERNAL_AUDIENCE=EXT_AUDIENCE,
        AUTH_EXTERNAL_JWKS_URL=jwks.url,
        AUTH_EXTERNAL_JWKS_TIMEOUT_S="2",
    )
    yield
    close_api_pool()


def ours(user: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Our own claims for user, in a live session of theirs (a token names its sign-in)."""
    now = int(time.time())
    session = jwt.decode(mint_token(user), options={"verify_signature": False})["sid"]
    claims = {
        "iss": OUR_ISSUER,
        "aud": OUR_AUDIENCE,
        "sub": str(user["id"]),
        "tid": str(user["tenant"]["id"]),
        "sid": session,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def theirs(user: dict[str, Any], subject: str | None = None, role: str | None = None, **overrides: Any) -> dict:
    """Claims as Supabase Auth issues them: our tenant and role under app_metadata."""
    now = int(time.time())
    app_metadata: dict[str, Any] = {"provider": "email", "tenant": user["tenant"]["slug"]}
    if role is not None:
        app_metadata["role"] = role
    claims = {
        "iss": EXT_ISSUER,
        "aud": EXT_AUDIENCE,
        "sub": subject or str(uuid.uuid4()),
        "email": user["email"],
        "role": "authenticated",
        "app_metadata": app_metadata,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return claims


def me(token: str):
    return call("GET", "/api/me", token=token)


def move_to_other_tenant(database, user: dict[str, Any], other: dict[str, Any]) -> None:
    with psycopg.connect(database.owner_dsn) as conn:
        conn.execute("DELETE FROM refresh_tokens WHERE user_id = %s", (user["id"],))
        conn.execute("UPDATE users SET tenant_id = %s WHERE id = %s", (other["id"], user["id"]))


# --------------------------------------------------------------------------- our own tokens


def test_own_token_opens_me(api, owner):
    reply = me(token_for(owner))
    assert reply.status == 200 and reply.json["id"] == str(owner["id"]), reply.body


OWN_BAD = [
    "forged_signature",
    "expired",
    "wrong_issuer",
    "wrong_audience",
    "alg_none",
    "hs_rs_confusion",
    "rs256_signed",
    "missing_exp",
    "garbage",
    "empty_segments",
    "not_a_uuid_subject",
    "missing_session",
    "unknown_session",
]


@pytest.mark.parametrize("case", OWN_BAD)
def test_own_bad_tokens_are_refused(api, owner, jwks, case):
    # GIVEN an owner, and a token for them that is wrong in one way
    long_ago = int(time.time()) - 3600
    bad = {
        "forged_signature": lambda: jwt.encode(ours(owner), OTHER_SECRET, algorithm="HS256"),
        "expired": lambda: jwt.encode(ours(owner, iat=long_ago, exp=long_ago + 60), JWT_SECRET, algorithm="HS256"),
        "wrong_issuer": lambda: jwt.encode(ours(owner, iss="someone-else"), JWT_SECRET, algorithm="HS256"),
        "wrong_audience": lambda: jwt.encode(ours(owner, aud="another-api"), JWT_SECRET, algorithm="HS256"),
        "alg_none": lambda: hand_signed({"alg": "none", "typ": "JWT"}, ours(owner), None),
        # our secret is symmetric; the confusion is a token that asks to be checked as RS256
        "hs_rs_confusion": lambda: hand_signed({"alg": "RS256", "typ": "JWT"}, ours(owner), JWT_SECRET.encode()),
        "rs256_signed": lambda: jwt.encode(ours(owner), jwks.rsa, algorithm="RS256"),
        "missing_exp": lambda: jwt.encode(
            {k: v for k, v in ours(owner).items() if k != "exp"}, JWT_SECRET, algorithm="HS256"
        ),
        "garbage": lambda: "garbage",
        "empty_segments": lambda: "..",
        "not_a_uuid_subject": lambda: jwt.encode(ours(owner, sub="root"), JWT_SECRET, algorithm="HS256"),
        "missing_session": lambda: jwt.encode(
            {k: v for k, v in ours(owner).items() if k != "sid"}, JWT_SECRET, algorithm="HS256"
        ),
        "unknown_session": lambda: jwt.encode(ours(owner, sid=str(uuid.uuid4())), JWT_SECRET, algorithm="HS256"),
    }[case]
    # WHEN it is presented THEN it is refused, with the same fixed problem every time
    assert_refused(me(bad()))


def test_own_token_within_small_leeway_passes_and_beyond_it_fails(api, owner):
    now = int(time.time())
    assert me(jwt.encode(ours(owner, iat=now - 900, exp=now - 2), JWT_SECRET, algorithm="HS256")).status == 200
    assert_refused(me(jwt.encode(ours(owner, iat=now - 900, exp=now - 30), JWT_SECRET, algorithm="HS256")))


def test_own_token_of_a_deleted_user_is_refused(api, app_pool, database, tenant, owner):
    token = token_for(owner)
    with psycopg.connect(database.owner_dsn) as conn:
        conn.execute("DELETE FROM users WHERE id = %s", (owner["id"],))
    assert_refused(me(token))


def test_own_token_of_a_user_moved_to_another_tenant_is_refused(api, app_pool, database, owner):
    token = token_for(owner)
    move_to_other_tenant(database, owner, new_tenant(app_pool))
    assert_refused(me(token))


def test_own_tokens_keep_working_with_an_external_provider_configured(secret_api, owner):
    assert me(token_for(owner)).status == 200


# --------------------------------------------------------------------------- external: shared secret


def test_external_token_maps_to_our_user_and_links_the_subject(secret_api, database, owner):
    # GIVEN an owner of ours, and a provider token with their email and our tenant's slug
    subject = str(uuid.uuid4())
    token = jwt.encode(theirs(owner, subject), EXT_SECRET, algorithm="HS256")
    # WHEN it is presented
    reply = me(token)
    # THEN it speaks for that user, the user is now linked to the provider's subject, and that is audited
    assert reply.status == 200, reply.body
    assert (reply.json["id"], reply.json["role"]) == (str(owner["id"]), "owner")
    assert query(database, "SELECT external_subject FROM users WHERE id = %(id)s", {"id": owner["id"]}) == [(subject,)]
    assert query(database, "SELECT action FROM audit_log WHERE target_id = %(id)s", {"id": str(owner["id"])}) == [
        ("user.link_external",)
    ]
    assert me(token).status == 200  # and again, through the link


def test_an_unverified_email_links_no_one(secret_api, database, owner):
    # GIVEN a provider token with the owner's email, which the provider says it has not verified
    claims = theirs(owner, str(uuid.uuid4()))
    claims["email_verified"] = False
    # WHEN it is presented THEN it is refused and links nothing
    assert_refused(me(jwt.encode(claims, EXT_SECRET, algorithm="HS256")))
    assert query(database, "SELECT external_subject FROM users WHERE id = %(id)s", {"id": owner["id"]}) == [(None,)]


def test_external_tenant_claim_may_name_the_tenant_by_id(secret_api, owner):
    claims = theirs(owner)
    claims["app_metadata"]["tenant"] = str(owner["tenant"]["id"])
    assert me(jwt.encode(claims, EXT_SECRET, algorithm="HS256")).status == 200


def test_linked_user_is_reached_only_by_its_subject(secret_api, owner):
    assert me(jwt.encode(theirs(owner, "subject-a"), EXT_SECRET, algorithm="HS256")).status == 200
    # a second provider account that claims the same email cannot take the user over
    assert_refused(me(jwt.encode(theirs(owner, "subject-b"), EXT_SECRET, algorithm="HS256")))


@pytest.mark.parametrize(
    ("stored", "claimed", "effective", "users_status"),
    [
        ("owner", "viewer", "viewer", 403),  # the claim narrows
        ("owner", "staff", "staff", 403),
        ("viewer", "owner", "viewer", 403),  # but never raises
        ("staff", "owner", "staff", 403),
        ("owner", "owner", "owner", 200),
        ("owner", None, "owner", 200),  # no claim: our role
    ],
)
def test_external_role_claim_only_narrows_the_stored_role(
    secret_api, app_pool, tenant, stored, claimed, effective, users_status
):
    new_user(app_pool, tenant, "owner")
    user = new_user(app_pool, tenant, stored)
    token = jwt.encode(theirs(user, role=claimed), EXT_SECRET, algorithm="HS256")
    reply = me(token)
    assert reply.status == 200 and reply.json["role"] == effective, reply.body
    assert call("GET", "/api/users", token=token).status == users_status


EXTERNAL_BAD = [
    "forged_signature",
    "expired",
    "wrong_issuer",
    "wrong_audience",
    "alg_none",
    "rs256_signed",
    "missing_exp",
    "missing_tenant_claim",
    "unknown_role_claim",
    "other_tenant_claim",
    "unknown_email",
    "unknown_tenant",
]


@pytest.mark.parametrize("case", EXTERNAL_BAD)
def test_external_bad_tokens_are_refused(secret_api, app_pool, owner, jwks, case):
    long_ago = int(time.time()) - 7200
    other = new_tenant(app_pool)

    def signed(claims: dict[str, Any]) -> str:
        return jwt.encode(claims, EXT_SECRET, algorithm="HS256")

    def with_metadata(**fields: Any) -> dict[str, Any]:
        claims = theirs(owner)
        claims["app_metadata"] = {k: v for k, v in {**claims["app_metadata"], **fields}.items() if v is not None}
        return claims

    bad = {
        "forged_signature": lambda: jwt.encode(theirs(owner), OTHER_SECRET, algorithm="HS256"),
        "expired": lambda: signed(theirs(owner, iat=long_ago, exp=long_ago + 3600)),
        "wrong_issuer": lambda: signed(theirs(owner, iss="https://elsewhere.example/auth/v1")),
        "wrong_audience": lambda: signed(theirs(owner, aud="anon")),
        "alg_none": lambda: hand_signed({"alg": "none", "typ": "JWT"}, theirs(owner), None),
        "rs256_signed": lambda: jwt.encode(theirs(owner), jwks.rsa, algorithm="RS256"),
        "missing_exp": lambda: signed({k: v for k, v in theirs(owner).items() if k != "exp"}),
        "missing_tenant_claim": lambda: signed(with_metadata(tenant=None)),
        "unknown_role_claim": lambda: signed(with_metadata(role="admin")),
        "other_tenant_claim": lambda: signed(with_metadata(tenant=other["slug"])),
        "unknown_email": lambda: signed(theirs(owner, email="stranger@example.com")),
        "unknown_tenant": lambda: signed(with_metadata(tenant="no-such-tenant")),
    }[case]
    assert_refused(me(bad()))


def test_external_token_of_a_deleted_user_is_refused(secret_api, database, owner):
    token = jwt.encode(theirs(owner, "subject-gone"), EXT_SECRET, algorithm="HS256")
    assert me(token).status == 200
    with psycopg.connect(database.owner_dsn) as conn:
        conn.execute("DELETE FROM users WHERE id = %s", (owner["id"],))
    assert_refused(me(token))


def test_external_token_of_a_user_moved_to_another_tenant_is_refused(secret_api, app_pool, database, owner):
    token = jwt.encode(theirs(owner, "subject-moved"), EXT_SECRET, algorithm="HS256")
    assert me(token).status == 200
    move_to_other_tenant(database, owner, new_tenant(app_pool))
    assert_refused(me(token))


def test_the_two_secrets_never_stand_in_for_each_other(secret_api, owner):
    # our claims signed with the provider's secret, and the provider's claims signed with ours
    assert_refused(me(jwt.encode(ours(owner), EXT_SECRET, algorithm="HS256")))
    assert_refused(me(jwt.encode(theirs(owner), JWT_SECRET, algorithm="HS256")))


def test_external_tokens_are_refused_while_no_provider_is_configured(api, owner):
    assert_refused(me(jwt.encode(theirs(owner), EXT_SECRET, algorithm="HS256")))


def test_misconfigured_provider_is_a_500_problem_naming_the_settings(monkeypatch, database, owner, jwks):
    export_api_settings(
        monkeypatch,
        database,
        AUTH_EXTERNAL_ISSUER=EXT_ISSUER,
        AUTH_EXTERNAL_AUDIENCE=EXT_AUDIENCE,
        AUTH_EXTERNAL_SECRET=EXT_SECRET,
        AUTH_EXTERNAL_JWKS_URL=jwks.url,
    )
    try:
        reply = me(jwt.encode(theirs(owner), EXT_SECRET, algorithm="HS256"))
        assert reply.status == 500 and reply.json["type"].endswith("external-auth-not-configured")
        assert "AUTH_EXTERNAL_" in reply.json["detail"]
    finally:
        close_api_pool()


# --------------------------------------------------------------------------- external: JWKS


def test_jwks_rs256_and_es256_tokens_are_accepted_and_the_key_set_is_cached(jwks_api, owner, jwks):
    rs = jwt.encode(theirs(owner, "subject-jwks"), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(theirs(owner, "subject-jwks"), jwks.ec, algorithm="ES256", headers={"kid": "ec-1"})
    for token in (rs, es, rs, es):
        reply = me(token)
        assert reply.status == 200 and reply.json["id"] == str(owner["id"]), reply.body
    assert jwks.fetches == 1


def test_a_key_the_provider_withdraws_stops_working_within_the_cache_lifetime(monkeypatch, database, owner, jwks):
    # GIVEN a JWKS cached for 1 s, and a token signed with its RSA key that is accepted
    export_api_settings(
        monkeypatch,
        database,
        AUTH_EXTERNAL_ISSUER=EXT_ISSUER,
        AUTH_EXTERNAL_AUDIENCE=EXT_AUDIENCE,
        AUTH_EXTERNAL_JWKS_URL=jwks.url,
        AUTH_EXTERNAL_JWKS_CACHE_S="1",
    )
    try:
        token = jwt.encode(theirs(owner, "subject-rotated"), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        assert me(token).status == 200
        # WHEN the provider withdraws that key
        document = json.loads(jwks.document)
        jwks.document = json.dumps({"keys": [k for k in document["keys"] if k["kid"] != "rsa-1"]}).encode()
        # THEN the token is refused once the cached set expires
        wait_for(lambda: me(token).status == 401, timeout=10, what="the withdrawn key to be refused")
    finally:
        close_api_pool()


JWKS_BAD = [
    "forged_signature",
    "hs256_with_public_key",
    "hs256_with_shared_secret",
    "alg_none",
    "unknown_kid",
    "key_of_other_alg",
    "expired",
    "wrong_audience",
    "wrong_issuer",
]


@pytest.mark.parametrize("case", JWKS_BAD)
def test_jwks_bad_tokens_are_refused(jwks_api, owner, jwks, case):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    long_ago = int(time.time()) - 7200
    bad = {
        "forged_signature": lambda: jwt.encode(theirs(owner), stranger, algorithm="RS256", headers={"kid": "rsa-1"}),
        # the classic confusion: HMAC keyed with the provider's public key, which anyone can fetch
        "hs256_with_public_key": lambda: hand_signed(
            {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, theirs(owner), jwks.public_pem()
        ),
        "hs256_with_shared_secret": lambda: jwt.encode(theirs(owner), EXT_SECRET, algorithm="HS256"),
        "alg_none": lambda: hand_signed({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, theirs(owner), None),
        "unknown_kid": lambda: jwt.encode(theirs(owner), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-9"}),
        # an RS256 signature presented under the EC key's kid (and the reverse) must not verify
        "key_of_other_alg": lambda: jwt.encode(theirs(owner), jwks.rsa, algorithm="RS256", headers={"kid": "ec-1"}),
        "expired": lambda: jwt.encode(
            theirs(owner, iat=long_ago, exp=long_ago + 3600), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"}
        ),
        "wrong_audience": lambda: jwt.encode(
            theirs(owner, aud="anon"), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"}
        ),
        "wrong_issuer": lambda: jwt.encode(
            theirs(owner, iss="https://elsewhere.example"), jwks.rsa, algorithm="RS256", headers={"kid": "rsa-1"}
        ),
    }[case]
    assert_refused(me(bad()))


def test_unreachable_jwks_is_a_503_and_never_a_pass(monkeypatch, database, owner):
    # GIVEN a JWKS URL where nothing listens (a port just closed)
    closed = Jwks()
    url = closed.url
    closed.close()
    export_api_settings(
        monkeypatch,
        database,
        AUTH_EXTERNAL_ISSUER=EXT_ISSUER,
        AUTH_EXTERNAL_AUDIENCE=EXT_AUDIENCE,
        AUTH_EXTERNAL_JWKS_URL=url,
        AUTH_EXTERNAL_JWKS_TIMEOUT_S="1",
    )
    try:
        token = jwt.encode(theirs(owner), closed.rsa, algorithm="RS256", headers={"kid": "rsa-1"})
        reply = me(token)
        assert reply.status == 503, reply.body
        assert reply.json["type"] == "urn:mqtt-saas:problem:identity-provider-unavailable"
    finally:
        close_api_pool()


def test_effective_role_narrows_and_never_raises():
    user, tenant = uuid.uuid4(), uuid.uuid4()
    for stored in tokens.ROLES:
        assert tokens.effective_role(stored, tokens.Principal(user, tenant)) == stored
        for cap in tokens.ROLES:
            got = tokens.effective_role(stored, tokens.Principal(user, tenant, cap))
            assert tokens.ROLES.index(got) == max(tokens.ROLES.index(stored), tokens.ROLES.index(cap))
