"""The Starlette app: explicit routes, state built in the lifespan, one error envelope."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from npcforge.api import routes
from npcforge.api.auth import Authenticator, NoAuth, Principal
from npcforge.api.errors import ApiError, error_response
from npcforge.config import Settings
from npcforge.db.connect import create_pool
from npcforge.storage.base import Storage

log = logging.getLogger("npcforge.api")


class NoRateLimit:
    async def check(self, principal: Principal) -> None:
        return None


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    error = ApiError(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))
    return error_response(error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", extra={"path": request.url.path, "error": type(exc).__name__})
    return error_response(ApiError(500, "INTERNAL_SERVER_ERROR", "An unexpected error occurred."))


def build_routes() -> list[Route]:
    return [
        Route("/api/npcs/{npcId}/generate", routes.start_generation, methods=["POST"]),
        Route("/api/npcs/{npcId}/generation-jobs/{jobId}", routes.job_status, methods=["GET"]),
        Route("/healthz", routes.healthz, methods=["GET"]),
        Route("/readyz", routes.readyz, methods=["GET"]),
    ]


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth == "none":
        return NoAuth()
    from npcforge.api.jwt_auth import JwtAuthenticator

    return JwtAuthenticator(settings)


def create_app(
    settings: Settings,
    *,
    storage: Storage,
    pool: asyncpg.Pool | None = None,
    authenticator: Authenticator | None = None,
) -> Starlette:
    """Build the app. Without `pool` it opens (and closes) its own from DATABASE_URL."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_pool = pool is None
        app.state.pool = pool or await create_pool(
            settings.require_database_url(), max_size=10, application_name="npcforge-api"
        )
        app.state.storage = storage
        app.state.authenticator = authenticator or NoAuth()
        app.state.rate_limiter = NoRateLimit()
        try:
            yield
        finally:
            if own_pool:
                await app.state.pool.close()

    handlers: dict[Any, Any] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }
    return Starlette(routes=build_routes(), lifespan=lifespan, exception_handlers=handlers)
