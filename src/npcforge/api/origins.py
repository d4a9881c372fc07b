"""Browser origins: who may call the API from a page.

An origin is allowed when it is listed in NPCFORGE_CORS_ORIGINS or is the API's own origin (the
page and the API behind one reverse proxy). Two uses:

- CSRF: a request authenticated by the session cookie (which the browser attaches by itself)
  may change state only when it comes from an allowed origin. Bearer tokens need no such check:
  a page can only send one it holds.
- CORS preflights from an origin that is not allowed get a clear 403 instead of a bare 405/400.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from npcforge.api.errors import ApiError, error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_key(host: str, port: int | None) -> str:
    # The scheme is left out on purpose: behind a proxy that ends TLS the API sees http while
    # the page's origin is https; a default port (80, 443) is the same as none.
    host = host.lower()
    return host if port is None or port in _DEFAULT_PORTS.values() else f"{host}:{port}"


def origin_host(origin: str) -> str | None:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return _host_key(parts.hostname, port)


def request_host(request: Request) -> str | None:
    host = request.headers.get("host")
    return origin_host(f"{request.url.scheme}://{host}") if host else None


def forbidden_origin(origin: str | None) -> ApiError:
    return ApiError(
        403, "ORIGIN_NOT_ALLOWED",
        "This origin may not call the API from a browser: list it in NPCFORGE_CORS_ORIGINS, or "
        "serve the API from the page's own origin.",
        details={"origin": origin},
    )  # fmt: skip


class OriginPolicy:
    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.allowed = {origin.rstrip("/").lower() for origin in allowed if origin != "*"}

    def listed(self, origin: str) -> bool:
        return self.any or origin.rstrip("/").lower() in self.allowed

    def allows_cookie_write(self, request: Request) -> bool:
        """A state-changing request carrying the session cookie comes from an allowed origin.
        A wildcard in the CORS list does not count here: it would allow every site."""
        origin = request.headers.get("origin")
        if origin is None:
            # Browsers send Origin on every POST; without it, only their own word counts.
            return request.headers.get("sec-fetch-site") == "same-origin"
        if origin.rstrip("/").lower() in self.allowed:
            return True
        own = request_host(request)
        return own is not None and origin_host(origin) == own


class PreflightGate:
    """Answers a CORS preflight from an origin that is not listed with 403 ORIGIN_NOT_ALLOWED;
    listed origins go on to Starlette's CORSMiddleware."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.policy = OriginPolicy(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if (
                origin is not None
                and "access-control-request-method" in headers
                and not self.policy.listed(origin)
            ):
                await error_response(forbidden_origin(origin))(scope, receive, send)
                return
        await self.app(scope, receive, send)
