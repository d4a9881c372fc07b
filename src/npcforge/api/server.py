"""Serving the API under uvicorn, with the loopback rule for NPCFORGE_AUTH=none."""

from __future__ import annotations

import uvicorn

from npcforge.api.app import create_app
from npcforge.api.auth import is_loopback
from npcforge.config import ConfigError, Settings
from npcforge.storage.factory import build_storage


def check_bind(settings: Settings, host: str) -> None:
    if settings.auth == "none" and not is_loopback(host):
        raise ConfigError(
            f"NPCFORGE_AUTH=none is only allowed on a loopback address, not {host!r}; "
            "bind to 127.0.0.1 or set NPCFORGE_AUTH=jwt"
        )
    if (
        settings.auth == "jwt"
        and settings.supabase_jwt_secret is None
        and not settings.effective_jwks_url
    ):
        raise ConfigError(
            "NPCFORGE_AUTH=jwt needs SUPABASE_JWT_SECRET (HS256) or NPCFORGE_JWKS_URL / SUPABASE_URL"
        )


async def serve_api(settings: Settings, *, host: str, port: int) -> None:
    check_bind(settings, host)
    from npcforge.api.app import build_authenticator

    storage = build_storage(settings)
    app = create_app(
        settings, storage=storage, authenticator=build_authenticator(settings), freeze_heap=True
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await storage.close()
