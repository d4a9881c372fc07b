"""Who is asking. `NPCFORGE_AUTH=none` (loopback only) acts as the service role."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar, Protocol
from uuid import UUID

from starlette.requests import Request

from npcforge.api.errors import ApiError


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: UUID | None
    service_role: bool = False

    def owner_filter(self) -> UUID | None:
        """The owner an NPC must have for this principal to see it; None means any owner."""
        return None if self.service_role else self.user_id


class Authenticator(Protocol):
    # False when every request is let in (NPCFORGE_AUTH=none): OpenAPI then lists no security.
    requires_token: ClassVar[bool]

    async def authenticate(self, request: Request) -> Principal: ...

    async def close(self) -> None: ...


class NoAuth:
    """Every request acts as the service role. Only allowed on a loopback address."""

    requires_token: ClassVar[bool] = False

    async def authenticate(self, request: Request) -> Principal:
        return Principal(user_id=None, service_role=True)

    async def close(self) -> None:
        return None


def unauthorized(reason: str | None = None) -> ApiError:
    """401 with the RFC 6750 challenge; `reason` (never the token) when a token was rejected."""
    if reason is None:
        return ApiError(
            401, "UNAUTHORIZED", "Authentication required.", headers={"WWW-Authenticate": "Bearer"}
        )
    return ApiError(
        401,
        "UNAUTHORIZED",
        "The access token is invalid or expired.",
        details={"reason": reason},
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
    )


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
