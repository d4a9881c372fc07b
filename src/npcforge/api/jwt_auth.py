"""Supabase access tokens: HS256 with the project's JWT secret, RS256/ES256 through its JWKS.

The JWKS is fetched with aiohttp on first use, cached, fetched again when a token names a key id
the cache does not hold (key rotation) or the cache is old — but never more than once per
`min_refresh_seconds`, so tokens with made-up key ids cannot turn the API into a JWKS flooder.
Tokens and secrets never appear in errors or logs; a rejection says only why (`reason`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
import jwt
from starlette.requests import Request

from npcforge.api.auth import Principal, unauthorized
from npcforge.api.errors import ApiError
from npcforge.api.origins import SAFE_METHODS, OriginPolicy, forbidden_origin
from npcforge.api.session_cookie import (
    SessionCookieError,
    access_token_from_cookies,
    cookie_name_for,
)
from npcforge.config import Settings

log = logging.getLogger("npcforge.api.auth")

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256"})
LEEWAY_SECONDS = 30.0
MAX_TOKEN_CHARS = 16_384
MAX_JWKS_BYTES = 1 << 20
SERVICE_ROLE = "service_role"
# The `iss` of Supabase's own API keys (the legacy service_role key), which name their project in
# `ref` instead.
API_KEY_ISSUER = "supabase"

Clock = Callable[[], float]


class AuthUnavailable(Exception):
    """The signing keys cannot be fetched, so a token naming an unknown key cannot be judged."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("the JWKS could not be fetched")
        self.retry_after = retry_after


class JwksCache:
    """Signing keys by `kid`, refreshed on demand at most once per `min_refresh_seconds`."""

    def __init__(
        self,
        url: str,
        *,
        min_refresh_seconds: float = 60.0,
        max_age_seconds: float = 600.0,
        timeout_seconds: float = 5.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.url = url
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.timeout_seconds = timeout_seconds
        self.fetches = 0
        # Bumped whenever a fetch changes the key set, so verdicts on old keys can be dropped.
        self.generation = 0
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fingerprint = ""
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._last_failed = False
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    def _may_fetch(self, now: float) -> bool:
        return self._last_attempt is None or now - self._last_attempt >= self.min_refresh_seconds

    def _usable(self, kid: str, now: float) -> jwt.PyJWK | None:
        fresh = self._fetched_at is not None and now - self._fetched_at < self.max_age_seconds
        key = self._keys.get(kid)
        return key if key is not None and (fresh or not self._may_fetch(now)) else None

    async def key_for(self, kid: str) -> jwt.PyJWK | None:
        """The key named `kid`, or None when the (refreshed) JWKS does not have it."""
        key = self._usable(kid, self._clock())
        if key is not None:
            return key
        async with self._lock:
            # Someone may have refreshed while this request waited for the lock.
            now = self._clock()
            if self._usable(kid, now) is None and self._may_fetch(now):
                await self._refresh()
        key = self._keys.get(kid)
        if key is None and self._last_failed:
            wait = self.min_refresh_seconds - (self._clock() - (self._last_attempt or 0.0))
            raise AuthUnavailable(retry_after=max(wait, 1.0))
        return key

    async def _refresh(self) -> None:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            document = await self._download()
            keys = parse_jwks(document)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Old keys stay usable; a token signed with one of them still verifies.
            self._last_failed = True
            log.warning(
                "JWKS fetch failed", extra={"jwks_url": self.url, "error": type(exc).__name__}
            )
            return
        self._last_failed = False
        self._fetched_at = self._clock()
        fingerprint = json.dumps(document["keys"], sort_keys=True)
        if fingerprint != self._fingerprint:
            self._keys, self._fingerprint = keys, fingerprint
            self.generation += 1
        log.info("JWKS fetched", extra={"jwks_url": self.url, "keys": len(self._keys)})

    async def _download(self) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds)
            )
        async with self._session.get(self.url, headers={"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise ValueError(f"JWKS answered HTTP {resp.status}")
            raw = await resp.content.read(MAX_JWKS_BYTES + 1)
            if len(raw) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document is too large")
            return json.loads(raw)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class VerifiedTokens:
    """Principals of tokens that passed every check, kept until the token expires.

    A poller sends the same token every second or two; checking its signature once is enough.
    Entries are keyed by the token's SHA-256, bounded in number (oldest dropped first), and
    dropped when the JWKS changes, so a key removed from the set stops working at once.
    """

    def __init__(self, size: int = 4096, *, wall_clock: Clock = time.time) -> None:
        self.size = size
        self._wall_clock = wall_clock
        self._entries: dict[bytes, tuple[Principal, float, int]] = {}

    def get(self, token: str, generation: int) -> Principal | None:
        entry = self._entries.get(hashlib.sha256(token.encode()).digest())
        if entry is None:
            return None
        principal, expires_at, seen_generation = entry
        if seen_generation != generation or self._wall_clock() >= expires_at:
            return None
        return principal

    def put(self, token: str, principal: Principal, expires_at: float, generation: int) -> None:
        if len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        key = hashlib.sha256(token.encode()).digest()
        self._entries[key] = (principal, expires_at, generation)


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """Signature keys with a `kid` and an asymmetric algorithm we accept; others are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS document has no `keys` list")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC"):
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        if key.algorithm_name in ASYMMETRIC_ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


def _audiences(claim: Any) -> list[str] | None:
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, list) and all(isinstance(item, str) for item in claim):
        return claim
    return None


class JwtAuthenticator:
    """Access tokens issued by Supabase Auth (or anything signing the same way): as a bearer
    token, or in the session cookie of Supabase's SSR helpers (with an Origin check on writes)."""

    requires_token: ClassVar[bool] = True

    def __init__(
        self,
        settings: Settings,
        *,
        jwks_min_refresh_seconds: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        secret = settings.supabase_jwt_secret
        self._secret = secret.get_secret_value() if secret is not None else None
        if not self._secret:
            self._secret = None
        self.audience = settings.jwt_audience
        self.issuer = settings.effective_jwt_issuer
        self.project_ref = project_ref(settings.supabase_url)
        url = settings.effective_jwks_url
        self.jwks = (
            JwksCache(url, min_refresh_seconds=jwks_min_refresh_seconds, clock=clock)
            if url
            else None
        )
        self.verified = VerifiedTokens()
        self.cookie_name = cookie_name_for(settings.supabase_url)
        self.origins = OriginPolicy(settings.cors_origins)
        self._decoder = jwt.PyJWT(
            options={"require": ["exp"], "verify_aud": False, "verify_iss": False}
        )

    def _token(self, request: Request) -> str:
        """The bearer token, else the session cookie's (a bearer header always wins)."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthorized()
            return token.strip()
        try:
            from_cookie = access_token_from_cookies(request.cookies, self.cookie_name)
        except SessionCookieError as exc:
            raise unauthorized(exc.reason) from None
        if from_cookie is None:
            raise unauthorized()
        # The browser attaches the cookie to any request to this host, whoever's page sent it.
        if request.method not in SAFE_METHODS and not self.origins.allows_cookie_write(request):
            raise forbidden_origin(request.headers.get("origin"))
        return from_cookie

    async def authenticate(self, request: Request) -> Principal:
        token = self._token(request)
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise unauthorized("malformed")
        generation = self.jwks.generation if self.jwks is not None else 0
        known = self.verified.get(token, generation)
        if known is not None:
            return known
        claims = await self._verified_claims(token)
        principal = self._principal(claims)
        # `exp` is required and was checked, so it is a number here.
        self.verified.put(token, principal, float(claims["exp"]) + LEEWAY_SECONDS, generation)
        return principal

    async def _key_for(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("malformed") from None
        alg = header.get("alg")
        if alg == "HS256" and self._secret is not None:
            return self._secret, alg
        if alg in ASYMMETRIC_ALGORITHMS and self.jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise unauthorized("unknown_key")
            try:
                key = await self.jwks.key_for(kid)
            except AuthUnavailable as exc:
                raise ApiError(
                    503, "AUTH_UNAVAILABLE",
                    "Access tokens cannot be verified right now; try again shortly.",
                    headers={"Retry-After": str(int(exc.retry_after + 0.999))},
                ) from None  # fmt: skip
            if key is None:
                raise unauthorized("unknown_key")
            if key.algorithm_name != alg:
                raise unauthorized("algorithm_mismatch")
            return key, alg
        raise unauthorized("unsupported_algorithm")

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        key, alg = await self._key_for(token)
        try:
            claims: dict[str, Any] = self._decoder.decode(
                token, key, algorithms=[alg], leeway=LEEWAY_SECONDS
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("not_yet_valid") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("invalid_signature") from None
        except jwt.MissingRequiredClaimError:
            raise unauthorized("missing_claim") from None
        except jwt.PyJWTError:
            raise unauthorized("invalid_token") from None
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        service_role = claims.get("role") == SERVICE_ROLE
        audiences = _audiences(claims.get("aud"))
        # Supabase's service_role key carries no `aud`; a user token must name ours.
        if (audiences is None and not service_role) or (
            audiences is not None and self.audience not in audiences
        ):
            raise unauthorized("invalid_audience")
        if self.issuer is not None and not self._issued_here(claims, service_role):
            raise unauthorized("invalid_issuer")
        subject = claims.get("sub")
        user_id: UUID | None = None
        if isinstance(subject, str):
            try:
                user_id = UUID(subject)
            except ValueError:
                user_id = None
        if user_id is None and not service_role:
            raise unauthorized("invalid_subject")
        return Principal(user_id=user_id, service_role=service_role)

    def _issued_here(self, claims: dict[str, Any], service_role: bool) -> bool:
        """The token comes from this project: a token minted for another project that shares
        the JWT secret is refused."""
        issuer = claims.get("iss")
        if not isinstance(issuer, str):
            return False
        if issuer.rstrip("/") == self.issuer:
            return True
        if service_role and issuer == API_KEY_ISSUER:
            ref = claims.get("ref")
            return ref is None or self.project_ref is None or ref == self.project_ref
        return False

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()


def project_ref(supabase_url: str | None) -> str | None:
    """The project ref of a hosted project's URL (`https://<ref>.supabase.co`), else None."""
    if not supabase_url:
        return None
    host = urlsplit(supabase_url).hostname or ""
    ref, _, domain = host.partition(".")
    return ref if ref and domain in ("supabase.co", "supabase.in") else None
