"""How every console handler is framed: who is asking (or the sign-in page), failures as pages,
the page template with its security headers, and the visibility rule the API uses (a user sees
their own NPCs; foreign, deleted and unknown NPCs are "not found")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from npcforge.api.auth import Principal
from npcforge.api.errors import ApiError
from npcforge.console import views
from npcforge.console.access import console_principal, csrf_token, remember_csrf
from npcforge.console.state import ConsoleState
from npcforge.db.jobs import JobQueue

HTML_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}

Handler = Callable[[Request, Principal], Awaitable[Response]]


class Problem(Exception):
    """A page that cannot be shown as asked: its status and a sentence for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def console_of(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


def render(
    request: Request,
    principal: Principal | None,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> Response:
    console = console_of(request)
    response = console.templates.TemplateResponse(
        request,
        template,
        {
            "principal": principal,
            "who": who(principal, console.open_access),
            "open_access": console.open_access,
            "csrf": csrf_token(request),
            "views": views,
            "now": datetime.now(UTC),
            **context,
        },
        status_code=status,
        headers=HTML_HEADERS,
    )
    remember_csrf(request, response)
    return response


def who(principal: Principal | None, open_access: bool) -> str:
    if principal is None:
        return ""
    if open_access:
        return "local operator (NPCFORGE_AUTH=none)"
    if principal.service_role:
        return "service role (all NPCs)"
    return f"user {principal.user_id}"


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate (or send the browser to sign in) and turn failures into pages."""

    async def endpoint(request: Request) -> Response:
        try:
            principal = await console_principal(request)
        except ApiError as exc:
            return render(request, None, "error.html", {"message": exc.message}, exc.status)
        if principal is None:
            if request.method == "GET":
                target = "/console/sign-in?" + urlencode({"next": request.url.path})
                return RedirectResponse(
                    target, status_code=303, headers={"Cache-Control": "no-store"}
                )
            return render(request, None, "error.html", {"message": "Sign in first."}, 401)
        try:
            return await handler(request, principal)
        except Problem as exc:
            return render(request, principal, "error.html", {"message": exc.message}, exc.status)
        except ApiError as exc:
            return render(request, principal, "error.html", {"message": exc.message}, exc.status)

    return endpoint


def path_uuid(request: Request, name: str) -> UUID:
    try:
        return UUID(request.path_params[name])
    except ValueError:
        raise Problem(400, f"{request.path_params[name]!r} is not an NPC id.") from None


async def visible_job(request: Request, principal: Principal, npc_id: UUID) -> Any:
    """The NPC's job row if this principal may see the NPC (as the API decides), else 404."""
    row = await JobQueue(request.app.state.pool).status(npc_id=npc_id)
    owner = principal.owner_filter()
    if (
        row is None
        or row["deleted_at"] is not None
        or (owner is not None and row["owner_id"] != owner)
    ):
        raise Problem(404, "No such NPC.")
    return row
