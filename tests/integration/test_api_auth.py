"""Authentication of the HTTP API: Supabase access tokens (HS256 and JWKS), the service role,
and the loopback-only `NPCFORGE_AUTH=none`."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apikit import (
    SECRET,
    api_harness,
    bearer,
    jwt_settings,
    owner_of,
    queue_job,
    token,
)
from conftest import make_npc
from npcforge.api.jwt_auth import JwtAuthenticator
from npcforge.compose import check_bind
from npcforge.config import ConfigError, Settings
from npcforge.daemons import serve_api

# --- a JWKS endpoint we control ----------------------------------------------------------


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


class JwksServer:
    """Serves {"keys": [...]} on 127.0.0.1 and counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"keys": self.keys})


@contextlib.asynccontextmanager
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/auth/v1/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- helpers -----------------------------------------------------------------------------


async def poll_status(
    client: Any, npc_id: uuid.UUID, job_id: uuid.UUID, headers: dict[str, str]
) -> Any:
    return await client.get(f"/api/npcs/{npc_id}/generation-jobs/{job_id}", headers=headers)


def assert_unauthorized(response: Any, reason: str | None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"]["code"] == "UNAUTHORIZED"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    if reason is None:
        assert challenge == "Bearer"
        assert "details" not in body["error"]
    else:
        assert 'error="invalid_token"' in challenge
        assert body["error"]["details"] == {"reason": reason}


@pytest.fixture
async def owned_job(conn: Any) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    npc_id = await make_npc(conn, ownerId=str(uuid.uuid4()))
    job_id = await queue_job(conn, npc_id)
    return npc_id, job_id, await owner_of(conn, npc_id)


# --- HS256 -------------------------------------------------------------------------------


async def test_owner_token_is_accepted(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    async with api_harness(db_dsn, storage_dir) as api:
        response = await poll_status(api.client, npc_id, job_id, bearer(token(owner)))
    assert response.status_code == 200, response.text
    assert response.json()["jobId"] == str(job_id)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, None),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"Authorization": "Bearer"}, None),
        ({"Authorization": "Bearer "}, None),
        ({"Authorization": "Bearer not-a-jwt"}, "malformed"),
        ({"Authorization": "Bearer a.b.c"}, "malformed"),
        ({"Authorization": "Bearer " + "x" * 20_000}, "malformed"),
    ],
    ids=[
        "missing",
        "basic",
        "bearer-without-token",
        "bearer-blank",
        "garbage",
        "bad-segments",
        "huge",
    ],
)
async def test_missing_or_malformed_tokens(db_dsn, storage_dir, owned_job, headers, reason):
    npc_id, job_id, _ = owned_job
    async with api_harness(db_dsn, storage_dir) as api:
        response = await poll_status(api.client, npc_id, job_id, headers)
        # Auth comes first: a bad token on a bad path is still a 401.
        start = await api.client.post("/api/npcs/not-a-uuid/generate", headers=headers)
    assert_unauthorized(response, reason)
    assert start.status_code == 401


async def test_bearer_scheme_is_case_insensitive(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    async with api_harness(db_dsn, storage_dir) as api:
        response = await poll_status(
            api.client, npc_id, job_id, {"Authorization": f"bearer {token(owner)}"}
        )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda owner: token(owner, expires_in=-120), "expired"),
        (lambda owner: token(owner, nbf=int(__import__("time").time()) + 600), "not_yet_valid"),
        (lambda owner: token(owner, aud="someone-else"), "invalid_audience"),
        (lambda owner: token(owner, aud=None), "invalid_audience"),
        (lambda owner: token(owner, key="another-secret-that-is-also-32-bytes!"), "invalid_signature"),
        (lambda owner: token("not-a-uuid"), "invalid_subject"),
        (lambda owner: token(None), "invalid_subject"),
        (lambda owner: token(None, role="anon"), "invalid_subject"),
        (lambda owner: token(owner, alg="HS512"), "unsupported_algorithm"),
        (lambda owner: jwt.encode({"sub": str(owner), "aud": "authenticated"}, SECRET), "missing_claim"),
        (lambda owner: jwt.encode({"sub": str(owner), "exp": 4102444800}, None, algorithm="none"), "unsupported_algorithm"),
    ],
    ids=[
        "expired", "not-yet-valid", "wrong-audience", "no-audience", "wrong-signature",
        "non-uuid-sub", "no-sub", "anon-key", "hs512", "no-exp", "alg-none",
    ],
)  # fmt: skip
async def test_rejected_tokens(db_dsn, storage_dir, owned_job, make, reason):
    npc_id, job_id, owner = owned_job
    async with api_harness(db_dsn, storage_dir) as api:
        response = await poll_status(api.client, npc_id, job_id, bearer(make(owner)))
    assert_unauthorized(response, reason)


async def test_small_clock_skew_is_tolerated(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    async with api_harness(db_dsn, storage_dir) as api:
        response = await poll_status(
            api.client, npc_id, job_id, bearer(token(owner, expires_in=-5))
        )
    assert response.status_code == 200


async def test_audience_is_configurable(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    settings = jwt_settings(NPCFORGE_JWT_AUDIENCE="npc-editor")
    async with api_harness(db_dsn, storage_dir, settings=settings) as api:
        ok = await poll_status(
            api.client, npc_id, job_id, bearer(token(owner, aud=["x", "npc-editor"]))
        )
        default = await poll_status(api.client, npc_id, job_id, bearer(token(owner)))
    assert ok.status_code == 200
    assert_unauthorized(default, "invalid_audience")


async def test_another_users_token_sees_not_found(db_dsn, storage_dir, owned_job):
    npc_id, job_id, _ = owned_job
    async with api_harness(db_dsn, storage_dir) as api:
        response = await poll_status(api.client, npc_id, job_id, bearer(token(uuid.uuid4())))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NPC_NOT_FOUND"


async def test_service_role_acts_on_any_npc(db_dsn, storage_dir, owned_job, conn):
    npc_id, job_id, _ = owned_job
    # Supabase's service_role key: no `sub`, no `aud`.
    service_key = token(None, aud=None, role="service_role", iss="supabase")
    other = await make_npc(conn, ownerId=str(uuid.uuid4()))
    async with api_harness(db_dsn, storage_dir) as api:
        polled = await poll_status(api.client, npc_id, job_id, bearer(service_key))
        started = await api.client.post(f"/api/npcs/{other}/generate", headers=bearer(service_key))
        listed = await api.client.get(
            f"/api/npcs/{other}/generation-jobs", headers=bearer(service_key)
        )
        wrong_aud = await poll_status(
            api.client, npc_id, job_id, bearer(token(None, aud="other", role="service_role"))
        )
    assert polled.status_code == 200
    assert started.status_code == 202, started.text
    assert listed.status_code == 200
    assert_unauthorized(wrong_aud, "invalid_audience")


async def test_tokens_and_secret_never_reach_errors_or_logs(db_dsn, storage_dir, owned_job, caplog):
    npc_id, job_id, owner = owned_job
    caplog.set_level(logging.DEBUG)
    bad = [
        token(owner, expires_in=-600),
        token(owner, key="another-secret-that-is-also-32-bytes!"),
        "Zm9v.YmFy.YmF6",
    ]
    async with api_harness(db_dsn, storage_dir) as api:
        responses = [await poll_status(api.client, npc_id, job_id, bearer(t)) for t in bad]
    for value, response in zip(bad, responses, strict=True):
        assert response.status_code == 401
        for text in (response.text, str(response.headers), caplog.text):
            assert value not in text
            assert SECRET not in text


# --- JWKS: RS256 and ES256 ---------------------------------------------------------------


async def test_rs256_and_es256_via_jwks(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    rsa_private, ec_private = rsa_key(), ec_key()
    async with jwks_server() as jwks:
        jwks.keys = [
            public_jwk(rsa_private, "rsa-1", "RS256"),
            public_jwk(ec_private, "ec-1", "ES256"),
        ]
        settings = jwt_settings(SUPABASE_JWT_SECRET=None, NPCFORGE_JWKS_URL=jwks.url)
        async with api_harness(db_dsn, storage_dir, settings=settings) as api:
            rs = await poll_status(
                api.client,
                npc_id,
                job_id,
                bearer(token(owner, key=rsa_private, alg="RS256", kid="rsa-1")),
            )
            es = await poll_status(
                api.client,
                npc_id,
                job_id,
                bearer(token(owner, key=ec_private, alg="ES256", kid="ec-1")),
            )
            # The EC key's kid with an RSA signature: the key decides the algorithm.
            confused = await poll_status(
                api.client,
                npc_id,
                job_id,
                bearer(token(owner, key=rsa_private, alg="RS256", kid="ec-1")),
            )
            hs = await poll_status(api.client, npc_id, job_id, bearer(token(owner)))
            no_kid = await poll_status(
                api.client, npc_id, job_id, bearer(token(owner, key=rsa_private, alg="RS256"))
            )
            forged = await poll_status(
                api.client,
                npc_id,
                job_id,
                bearer(token(owner, key=rsa_key(), alg="RS256", kid="rsa-1")),
            )
    assert rs.status_code == 200, rs.text
    assert es.status_code == 200, es.text
    assert_unauthorized(confused, "algorithm_mismatch")
    assert_unauthorized(hs, "unsupported_algorithm")  # no SUPABASE_JWT_SECRET configured
    assert_unauthorized(no_kid, "unknown_key")
    assert_unauthorized(forged, "invalid_signature")
    assert jwks.fetches == 1  # cached across all of these


async def test_jwks_default_url_comes_from_supabase_url(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    private = ec_key()
    async with jwks_server() as jwks:
        jwks.keys = [public_jwk(private, "k", "ES256")]
        supabase_url = jwks.url.split("/auth/v1/")[0]
        settings = jwt_settings(SUPABASE_URL=supabase_url)
        iss = supabase_url + "/auth/v1"  # what Supabase Auth puts in its tokens
        async with api_harness(db_dsn, storage_dir, settings=settings) as api:
            es = await poll_status(
                api.client,
                npc_id,
                job_id,
                bearer(token(owner, key=private, alg="ES256", kid="k", iss=iss)),
            )
            hs = await poll_status(api.client, npc_id, job_id, bearer(token(owner, iss=iss)))
    assert es.status_code == 200, es.text
    assert hs.status_code == 200  # both kinds work when both are configured


async def test_unknown_kid_then_rotated_jwks(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    old, new = rsa_key(), ec_key()
    clock = FakeClock()
    async with jwks_server() as jwks:
        jwks.keys = [public_jwk(old, "old", "RS256")]
        settings = jwt_settings(SUPABASE_JWT_SECRET=None, NPCFORGE_JWKS_URL=jwks.url)
        auth = JwtAuthenticator(settings, clock=clock)
        async with api_harness(db_dsn, storage_dir, settings=settings, authenticator=auth) as api:
            old_token = bearer(token(owner, key=old, alg="RS256", kid="old"))
            new_token = bearer(token(owner, key=new, alg="ES256", kid="new"))

            assert (await poll_status(api.client, npc_id, job_id, old_token)).status_code == 200
            assert jwks.fetches == 1

            # A refetch that finds the same keys keeps what was verified with them.
            clock.now += 61
            unknown = bearer(token(owner, key=old, alg="RS256", kid="not-yet"))
            assert (await poll_status(api.client, npc_id, job_id, unknown)).status_code == 401
            assert jwks.fetches == 2 and auth.jwks is not None and auth.jwks.generation == 1

            # The project rotates its signing key. Within the minute the cache may not refetch.
            jwks.keys = [public_jwk(new, "new", "ES256")]
            clock.now += 10
            early = await poll_status(api.client, npc_id, job_id, new_token)
            assert_unauthorized(early, "unknown_key")
            for i in range(20):  # made-up key ids do not cause fetches either
                bogus = bearer(token(owner, key=new, alg="ES256", kid=f"bogus-{i}"))
                assert (await poll_status(api.client, npc_id, job_id, bogus)).status_code == 401
            assert jwks.fetches == 2

            # A minute after the last fetch, an unknown kid refreshes the set.
            clock.now += 51
            late = await poll_status(api.client, npc_id, job_id, new_token)
            assert late.status_code == 200, late.text
            assert jwks.fetches == 3 and auth.jwks.generation == 2
            # The rotated-out key is gone with the refresh.
            assert_unauthorized(
                await poll_status(api.client, npc_id, job_id, old_token), "unknown_key"
            )
            assert jwks.fetches == 3


async def test_unreachable_jwks_is_503_not_401(db_dsn, storage_dir, owned_job):
    npc_id, job_id, owner = owned_job
    private = rsa_key()
    clock = FakeClock()
    async with jwks_server() as jwks:
        jwks.keys = [public_jwk(private, "k1", "RS256")]
        jwks.status = 500
        settings = jwt_settings(SUPABASE_JWT_SECRET=None, NPCFORGE_JWKS_URL=jwks.url)
        auth = JwtAuthenticator(settings, clock=clock)
        async with api_harness(db_dsn, storage_dir, settings=settings, authenticator=auth) as api:
            headers = bearer(token(owner, key=private, alg="RS256", kid="k1"))
            down = await poll_status(api.client, npc_id, job_id, headers)
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "AUTH_UNAVAILABLE"
            assert int(down.headers["retry-after"]) >= 1
            again = await poll_status(api.client, npc_id, job_id, headers)
            assert again.status_code == 503
            assert jwks.fetches == 1
            jwks.status = 200
            clock.now += 60
            up = await poll_status(api.client, npc_id, job_id, headers)
            assert up.status_code == 200, up.text
            assert jwks.fetches == 2


# --- NPCFORGE_AUTH=none ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_auth_none_is_refused_off_loopback(host):
    with pytest.raises(ConfigError, match="loopback"):
        check_bind(Settings(NPCFORGE_AUTH="none"), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_auth_none_is_allowed_on_loopback(host):
    check_bind(Settings(NPCFORGE_AUTH="none"), host)


def test_jwt_mode_needs_a_key_source():
    with pytest.raises(ConfigError, match="SUPABASE_JWT_SECRET"):
        check_bind(jwt_settings(SUPABASE_JWT_SECRET=None), "0.0.0.0")
    check_bind(jwt_settings(), "0.0.0.0")


async def test_serve_api_refuses_auth_none_on_a_public_address(db_dsn):
    settings = Settings(NPCFORGE_AUTH="none", DATABASE_URL=db_dsn, NPCFORGE_STORAGE="filesystem")
    with pytest.raises(ConfigError, match="loopback"):
        await serve_api(settings, host="0.0.0.0", port=0)


async def test_auth_none_needs_no_token(db_dsn, storage_dir, owned_job):
    npc_id, job_id, _ = owned_job
    async with api_harness(db_dsn, storage_dir, settings=Settings(NPCFORGE_AUTH="none")) as api:
        response = await poll_status(api.client, npc_id, job_id, {})
        document = (await api.client.get("/openapi.json")).json()
    assert response.status_code == 200
    assert "securitySchemes" not in document["components"]


async def test_a_token_of_another_project_sharing_the_secret_is_refused(
    db_dsn, storage_dir, owned_job
):
    npc_id, job_id, owner = owned_job
    here, there = "https://abcdefghijklmnop.supabase.co", "https://qrstuvwxyzabcdef.supabase.co"
    settings = jwt_settings(SUPABASE_URL=here)
    tokens = {
        "ours": token(owner, iss=f"{here}/auth/v1"),
        "another project's": token(owner, iss=f"{there}/auth/v1"),
        "no iss": token(owner),
        "our service key": token(
            None, aud=None, role="service_role", iss="supabase", ref="abcdefghijklmnop"
        ),
        "another project's service key": token(
            None, aud=None, role="service_role", iss="supabase", ref="qrstuvwxyzabcdef"
        ),
    }
    async with api_harness(db_dsn, storage_dir, settings=settings) as api:
        answers = {
            name: await poll_status(api.client, npc_id, job_id, bearer(value))
            for name, value in tokens.items()
        }
        overridden = jwt_settings(SUPABASE_URL=here, NPCFORGE_JWT_ISSUER="https://auth.example")
    async with api_harness(db_dsn, storage_dir, settings=overridden) as api:
        custom = await poll_status(
            api.client, npc_id, job_id, bearer(token(owner, iss="https://auth.example"))
        )
        ours_elsewhere = await poll_status(api.client, npc_id, job_id, bearer(tokens["ours"]))

    assert answers["ours"].status_code == 200, answers["ours"].text
    assert answers["our service key"].status_code == 200
    for name in ("another project's", "no iss", "another project's service key"):
        assert_unauthorized(answers[name], "invalid_issuer")
    assert custom.status_code == 200, custom.text
    assert_unauthorized(ours_elsewhere, "invalid_issuer")
