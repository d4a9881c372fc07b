"""Helpers for the HTTP API tests: signed access tokens, an app on a real database, job states."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from starlette.applications import Starlette

from npcforge.api.app import create_app
from npcforge.api.auth import Authenticator
from npcforge.config import Settings
from npcforge.db.connect import create_pool
from npcforge.storage.filesystem import FilesystemStorage

SECRET = "test-jwt-secret-" + "s" * 56  # 72 bytes: long enough for HS512 too
AUDIENCE = "authenticated"
BUCKET = "npc-xml-files"


def token(
    sub: uuid.UUID | str | None,
    *,
    key: Any = SECRET,
    alg: str = "HS256",
    kid: str | None = None,
    expires_in: float = 3600,
    aud: Any = AUDIENCE,
    role: str | None = "authenticated",
    **claims: Any,
) -> str:
    """An access token shaped like Supabase Auth's."""
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, "exp": now + int(expires_in), **claims}
    if sub is not None:
        payload["sub"] = str(sub)
    if aud is not None:
        payload["aud"] = aud
    if role is not None:
        payload["role"] = role
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def jwt_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "NPCFORGE_AUTH": "jwt",
        "SUPABASE_JWT_SECRET": SECRET,
        "NPCFORGE_JWT_AUDIENCE": AUDIENCE,
        "SUPABASE_URL": None,
        "NPCFORGE_JWKS_URL": None,
        "NPCFORGE_CORS_ORIGINS": "",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class ApiHarness:
    app: Starlette
    client: httpx.AsyncClient
    storage: FilesystemStorage


@contextlib.asynccontextmanager
async def api_harness(
    db_dsn: str,
    storage_dir: Path,
    *,
    settings: Settings | None = None,
    authenticator: Authenticator | None = None,
) -> AsyncIterator[ApiHarness]:
    """The real app (lifespan run) on the test database, served through httpx's ASGI transport."""
    pool = await create_pool(db_dsn, max_size=4)
    storage = FilesystemStorage(storage_dir, BUCKET)
    await storage.ensure_bucket()
    app = create_app(
        settings or jwt_settings(), storage=storage, pool=pool, authenticator=authenticator
    )
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                yield ApiHarness(app, client, storage)
    finally:
        await pool.close()


async def owner_of(conn: Any, npc_id: uuid.UUID) -> uuid.UUID:
    owner: uuid.UUID = await conn.fetchval("SELECT owner_id FROM npcs WHERE id = $1", npc_id)
    return owner


async def queue_job(conn: Any, npc_id: uuid.UUID) -> uuid.UUID:
    """Start a job the plain-SQL way; returns its id."""
    job_id: uuid.UUID = await conn.fetchval(
        "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1 RETURNING generation_job_id",
        npc_id,
    )
    return job_id


async def set_status(
    conn: Any, npc_id: uuid.UUID, status: str, *, error: dict[str, Any] | None = None, size: int = 0
) -> None:
    await conn.execute(
        """
        UPDATE npcs SET generation_job_status = $2::generation_job_status,
               generation_job_error = $3::jsonb,
               content_size_bytes = $4,
               generation_job_attempts = greatest(generation_job_attempts, 1)
         WHERE id = $1
        """,
        npc_id,
        status,
        error,
        size,
    )


async def add_attempt(
    conn: Any,
    npc_id: uuid.UUID,
    job_id: uuid.UUID,
    attempt: int,
    outcome: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    await conn.execute(
        """
        INSERT INTO npc_generation_attempts (job_id, npc_id, attempt, worker_id, started_at,
          outcome, error_code, error_message, model, prompt_tokens, completion_tokens, cost,
          duration_ms)
        VALUES ($1, $2, $3, 'test-worker', clock_timestamp(), $4, $5, $6, 'test/model', 10, 20,
          0.00012, 42)
        """,
        job_id,
        npc_id,
        attempt,
        outcome,
        error_code,
        error_message,
    )


def session_cookie(
    access_token: str, *, ref: str = "abcdefghijklmnop", chunk: int = 3180, **session: Any
) -> dict[str, str]:
    """The `Cookie` header Supabase's SSR helpers make a browser send: the session JSON as
    `base64-` + base64url, split into `.0`, `.1`, … when longer than `chunk` characters."""
    import base64
    import json

    document = {
        "access_token": access_token, "token_type": "bearer", "expires_in": 3600,
        "expires_at": int(time.time()) + 3600, "refresh_token": "r3fr35h", **session,
    }  # fmt: skip
    encoded = base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")
    value = "base64-" + encoded
    name = f"sb-{ref}-auth-token"
    if len(value) <= chunk:
        pairs = [(name, value)]
    else:
        pieces = [value[i : i + chunk] for i in range(0, len(value), chunk)]
        pairs = [(f"{name}.{i}", piece) for i, piece in enumerate(pieces)]
    return {"Cookie": "; ".join(f"{key}={val}" for key, val in pairs)}
