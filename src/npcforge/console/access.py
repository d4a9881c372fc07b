"""Who is looking at the console, and whether a form really comes from it.

The console accepts what the API accepts (a bearer token, the Supabase session cookie; with
NPCFORGE_AUTH=none, on loopback only, everyone acts as the service role), plus its own sign-in
cookie for a browser that has only a token: the sign-in page verifies the token and keeps it in
an HttpOnly, SameSite=Strict cookie scoped to /console, read as a bearer token from then on.

Every form that changes something (CSRF) carries the value of the console's CSRF cookie, and
its Origin must be the console's own (or one in NPCFORGE_CORS_ORIGINS); without an Origin header
only `Sec-Fetch-Site: same-origin` passes.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from npcforge.api.auth import Principal
from npcforge.api.errors import ApiError
from npcforge.api.origins import OriginPolicy
from npcforge.api.routes import principal_of

SIGN_IN_COOKIE = "npcforge_console_token"
CSRF_COOKIE = "npcforge_console_csrf"
COOKIE_PATH = "/console"
MAX_TOKEN_CHARS = 16_384


def with_bearer(request: Request, token: str) -> Request:
    """The same request, as if it had sent `token` as a bearer token."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
    headers.append((b"authorization", b"Bearer " + token.encode("latin-1", "replace")))
    return Request({**request.scope, "headers": headers}, request.receive)


async def console_principal(request: Request) -> Principal | None:
    """The principal, or None when the request proves no identity (the page offers sign-in).
    A token that was sent and refused is None too; other failures (503) propagate."""
    authenticator = request.app.state.authenticator
    token = request.cookies.get(SIGN_IN_COOKIE)
    if (
        authenticator.requires_token
        and token
        and len(token) <= MAX_TOKEN_CHARS
        and "authorization" not in request.headers
    ):
        request = with_bearer(request, token)
    try:
        return await principal_of(request)
    except ApiError as exc:
        if exc.status == 401:
            return None
        raise


async def verify_token(request: Request, token: str) -> Principal:
    """The principal `token` stands for; ApiError 401 (with `details.reason`) when refused."""
    if len(token) > MAX_TOKEN_CHARS:
        raise ApiError(
            401, "UNAUTHORIZED", "The token is too long.", details={"reason": "malformed"}
        )
    return await principal_of(with_bearer(request, token))


def csrf_token(request: Request) -> str:
    """The CSRF value of this browser (a new one when it has none; `remember_csrf` sets it)."""
    token = request.cookies.get(CSRF_COOKIE)
    if token is None or len(token) != 43:
        token = request.scope.setdefault("npcforge.csrf", secrets.token_urlsafe(32))
    return token


def remember_csrf(request: Request, response: Response) -> None:
    """Set the CSRF cookie when this request minted the value."""
    token = request.scope.get("npcforge.csrf")
    if token is not None:
        set_cookie(request, response, CSRF_COOKIE, token)


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path=COOKIE_PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def csrf_failure(request: Request, policy: OriginPolicy, sent: str | None) -> str | None:
    """Why this form may not act (None when it may)."""
    if not policy.allows_cookie_write(request):
        return "the form was sent from another site"
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        return "the form's security token is missing or stale; reload the page and try again"
    return None
