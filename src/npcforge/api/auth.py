"""Who is asking. `NPCFORGE_AUTH=none` (loopback only) acts as the service role."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from starlette.requests import Request


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: UUID | None
    service_role: bool = False

    def owner_filter(self) -> UUID | None:
        """The owner an NPC must have for this principal to see it; None means any owner."""
        return None if self.service_role else self.user_id


class Authenticator(Protocol):
    async def authenticate(self, request: Request) -> Principal: ...

    async def close(self) -> None: ...


class NoAuth:
    """Every request acts as the service role. Only allowed on a loopback address."""

    async def authenticate(self, request: Request) -> Principal:
        return Principal(user_id=None, service_role=True)

    async def close(self) -> None:
        return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
