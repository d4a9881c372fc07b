"""What the console keeps on `app.state.console`, built in the API's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.templating import Jinja2Templates

from npcforge.api.origins import OriginPolicy
from npcforge.config import Settings
from npcforge.console.events import EventHub


@dataclass
class ConsoleState:
    templates: Jinja2Templates
    origins: OriginPolicy
    hub: EventHub | None
    open_access: bool  # NPCFORGE_AUTH=none: no sign-in, everyone is the operator
    requests_per_minute: int | None

    async def close(self) -> None:
        if self.hub is not None:
            await self.hub.close()


def build_templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("npcforge.console", "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)


def start_console(settings: Settings, pool: Any, *, open_access: bool) -> ConsoleState:
    """The console's state; its event hub LISTENs on DATABASE_LISTEN_URL or DATABASE_URL (none
    without either: the pages work, live updates do not)."""
    dsn = settings.database_listen_url or settings.database_url
    hub = EventHub(str(dsn), pool) if dsn else None
    if hub is not None:
        hub.start()
    return ConsoleState(
        templates=build_templates(),
        origins=OriginPolicy(settings.cors_origins),
        hub=hub,
        open_access=open_access,
        requests_per_minute=settings.openrouter_requests_per_minute,
    )
