"""The Starlette app: routes from the endpoint table, state built in the lifespan, one envelope."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from npcforge.api.auth import Authenticator, NoAuth
from npcforge.api.errors import ApiError, error_response
from npcforge.api.metrics import ApiMetrics, MetricsMiddleware
from npcforge.api.openapi import Endpoint, build_openapi
from npcforge.api.origins import PreflightGate
from npcforge.api.polling import PollPath
from npcforge.api.routes import ENDPOINTS
from npcforge.api.start_quota import StartQuota
from npcforge.budget import Budget
from npcforge.config import Settings
from npcforge.console.routes import console_mount
from npcforge.console.state import start_console
from npcforge.db.connect import DB_UNAVAILABLE, create_pool
from npcforge.heap import settle_heap
from npcforge.storage.base import Storage

log = logging.getLogger("npcforge.api")

_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def _request_fields(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.url.path,
        "request_id": request.scope.get("state", {}).get("request_id"),
    }


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        # A 5xx says what went wrong on our side: the failure the handler turned into it.
        cause = exc.__cause__ or exc.__context__
        log.warning(
            "request failed",
            extra={**_request_fields(request), "status": exc.status, "code": exc.code,
                   "error": type(cause).__name__ if cause else None,
                   "cause": str(getattr(cause, "message", cause)) if cause else None},
        )  # fmt: skip
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Starlette's own errors (no route, wrong method); keep their headers, e.g. `Allow`.
    error = ApiError(
        exc.status_code,
        _HTTP_CODES.get(exc.status_code, "HTTP_ERROR"),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )
    return error_response(error)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    # An outage or restart, not a bug: a warning without the traceback, and a 503 to retry.
    log.warning(
        "database unavailable",
        extra={**_request_fields(request), "status": 503, "error": type(exc).__name__},
    )
    return error_response(
        ApiError(
            503, "DATABASE_UNAVAILABLE", "The database is unreachable; try again shortly.",
            headers={"Retry-After": "2"},
        )
    )  # fmt: skip


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={**_request_fields(request), "status": 500, "error": type(exc).__name__},
    )
    return error_response(ApiError(500, "INTERNAL_SERVER_ERROR", "An unexpected error occurred."))


async def create_api_pool(
    dsn: str, *, max_size: int = 10, transaction_pooler: bool = False
) -> asyncpg.Pool:
    """The API changes no session state, so releasing a connection costs no round trip (and it
    works behind a transaction pooler)."""
    return await create_pool(
        dsn, max_size=max_size, application_name="npcforge-api", keep_session=True,
        command_timeout=30.0, transaction_pooler=transaction_pooler,
    )  # fmt: skip


def build_routes(endpoints: list[Endpoint] = ENDPOINTS) -> list[Route]:
    return [Route(e.path, e.handler, methods=[e.method], name=e.operation_id) for e in endpoints]


def build_authenticator(settings: Settings) -> Authenticator:
    if settings.auth == "none":
        return NoAuth()
    from npcforge.api.jwt_auth import JwtAuthenticator

    return JwtAuthenticator(settings)


def build_middleware(settings: Settings, metrics: ApiMetrics) -> list[Middleware]:
    middleware = [
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(PreflightGate, allowed=settings.cors_origins),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=["Retry-After"],
                # The session cookie may come along from listed origins (never with `*`).
                allow_credentials=settings.auth == "jwt" and "*" not in settings.cors_origins,
                max_age=600,
            )
        )
    return middleware


def create_app(
    settings: Settings,
    *,
    storage: Storage,
    pool: asyncpg.Pool | None = None,
    authenticator: Authenticator | None = None,
    freeze_heap: bool = False,
) -> Starlette:
    """Build the app. Without `pool` it opens (and closes) its own from DATABASE_URL; without
    `authenticator` it uses the one NPCFORGE_AUTH asks for. `freeze_heap` is for a process that
    serves this one app (`npcforge api`): see `settle_heap`."""
    auth = authenticator if authenticator is not None else build_authenticator(settings)
    metrics = ApiMetrics()
    document = build_openapi(ENDPOINTS, requires_token=auth.requires_token)
    openapi_json = json.dumps(document, separators=(",", ":")).encode("utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        own_pool = pool is None
        app.state.pool = pool or await create_api_pool(
            settings.require_database_url(), transaction_pooler=settings.transaction_pooler
        )
        app.state.storage = storage
        app.state.authenticator = auth
        app.state.start_quota = StartQuota(settings.generate_per_minute)
        app.state.budget = Budget.of(settings)
        app.state.poll_path = PollPath(app.state.pool, storage, metrics, app.state.budget)
        app.state.console = start_console(
            settings, app.state.pool, open_access=not auth.requires_token
        )
        if freeze_heap:
            settle_heap()
        try:
            yield
        finally:
            if freeze_heap:
                gc.unfreeze()
            await app.state.console.close()
            await app.state.poll_path.close()
            await auth.close()
            if own_pool:
                await app.state.pool.close()

    handlers: dict[Any, Any] = {
        ApiError: _api_error,
        HTTPException: _http_error,
        **dict.fromkeys(DB_UNAVAILABLE, _database_unavailable),
        Exception: _unexpected,
    }
    app = Starlette(
        routes=[*build_routes(), *console_mount()],
        middleware=build_middleware(settings, metrics),
        lifespan=lifespan,
        exception_handlers=handlers,
    )
    app.state.metrics = metrics
    app.state.openapi = document
    app.state.openapi_json = openapi_json
    return app
