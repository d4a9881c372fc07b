"""The console's pages and actions (server-rendered HTML under /console).

Each handler: who is asking (or the sign-in page), one or a few bounded reads, one template. An
action runs the same queue statement the CLI runs (`npcforge enqueue --force`, `jobs retry`,
`jobs cancel`, `jobs retry --all-failed --code`) after the same visibility rule as the API: a
user acts on their own NPCs; foreign, deleted and unknown NPCs are "not found".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from npcforge.api.auth import Principal
from npcforge.api.errors import ApiError
from npcforge.api.routes import decode_cursor, encode_cursor
from npcforge.console import views
from npcforge.console.access import (
    COOKIE_PATH,
    SIGN_IN_COOKIE,
    console_principal,
    csrf_failure,
    csrf_token,
    remember_csrf,
    set_cookie,
    verify_token,
)
from npcforge.console.state import ConsoleState
from npcforge.costs import budget_overview, cost_report
from npcforge.db.console import ConsoleReads, JobFilter
from npcforge.db.jobs import JobQueue
from npcforge.db.npcs import load_npc
from npcforge.errors import ERROR_CODES, StorageError
from npcforge.storage.base import xml_key

PAGE_SIZE = 50
CATCH_UP = timedelta(minutes=1)
STATUSES = ("queued", "processing", "succeeded", "failed")
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


# --- pages ---------------------------------------------------------------------------------


async def overview(request: Request, principal: Principal) -> Response:
    owner = principal.owner_filter()
    pool = request.app.state.pool
    data = await ConsoleReads(pool).overview(owner=owner)
    console = console_of(request)
    # The fleet's spend is the operator's business: shown to the service role only; a user sees
    # the per-owner cap that applies to them and their attempts' costs on each NPC's page.
    budget = request.app.state.budget
    spend = await budget_overview(pool, budget) if owner is None else None
    models = (await cost_report(pool, days=1)).models if owner is None else []
    return render(request, principal, "overview.html", {
        "o": data, "rate_cap": console.requests_per_minute, "statuses": STATUSES,
        "spend": spend, "spend_models": models, "user_cap": budget.user,
    })  # fmt: skip


def _filter_from(request: Request) -> tuple[JobFilter, str | None]:
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise Problem(400, f"status must be one of {', '.join(STATUSES)}.")
    code = (params.get("code") or "").strip().upper() or None
    if code is not None and (len(code) > 64 or not code.replace("_", "").isalnum()):
        raise Problem(400, "code must be an error code such as AI_TIMEOUT.")
    name = (params.get("name") or "").strip() or None
    if name is not None and len(name) > 255:
        raise Problem(400, "name is longer than an NPC name can be.")
    return JobFilter(status=status, error_code=code, name_prefix=name), params.get("cursor")


async def jobs(request: Request, principal: Principal) -> Response:
    where, cursor = _filter_from(request)
    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ApiError:
            raise Problem(400, "That page link is broken; start from the first page.") from None
    rows = await ConsoleReads(request.app.state.pool).jobs_page(
        owner=principal.owner_filter(), where=where, after=after, limit=PAGE_SIZE + 1
    )
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_link = None
    if more:
        last = rows[-1]
        query = {k: v for k, v in (("status", where.status), ("code", where.error_code),
                                   ("name", where.name_prefix)) if v}  # fmt: skip
        query["cursor"] = encode_cursor(last["updated_at"], last["npc_id"])
        next_link = "/console/jobs?" + urlencode(query)
    return render(request, principal, "jobs.html", {
        "rows": rows, "where": where, "next_link": next_link, "first_page": after is None,
        "statuses": STATUSES, "codes": sorted(ERROR_CODES),
        "can_bulk": principal.owner_filter() is None,
    })  # fmt: skip


async def npc_page(request: Request, principal: Principal) -> Response:
    npc_id = path_uuid(request, "npc_id")
    job = await visible_job(request, principal, npc_id)
    pool = request.app.state.pool
    record = await load_npc(pool, npc_id)
    if record is None:
        raise Problem(404, "No such NPC.")
    reads = ConsoleReads(pool)
    attempts = await reads.attempts(npc_id=npc_id)
    versions = await reads.xml_versions(npc_id=npc_id, limit=2)
    xml, xml_problem = None, None
    if job["status"] == "succeeded":
        try:
            data = await request.app.state.storage.get(xml_key(npc_id))
        except StorageError as exc:
            data, xml_problem = None, f"Storage could not hand over the file: {exc.message}"
        if data is not None:
            xml = data.decode("utf-8", errors="replace")
        elif xml_problem is None:
            xml_problem = "The file is missing from storage; regenerate it."
    elif versions:
        xml = versions[0]["xml"]
    diff = None
    if len(versions) == 2:
        diff = views.diff_xml(versions[1]["xml"], versions[0]["xml"])
    from npcforge.errors import findings_of

    error = job["error"] if job["status"] == "failed" else None
    return render(request, principal, "npc.html", {
        "npc": record, "job": job, "attempts": attempts, "xml": xml, "xml_problem": xml_problem,
        "versions": versions, "diff": diff, "error": error,
        "findings": findings_of(error) if error else [],
        "conversation": views.conversation(record), "shop": views.shop_rows(record),
        "done": request.query_params.get("done"),
        "total_cost": sum((a["cost"] for a in attempts if a["cost"] is not None), start=0),
    })  # fmt: skip


async def npc_xml(request: Request, principal: Principal) -> Response:
    npc_id = path_uuid(request, "npc_id")
    job = await visible_job(request, principal, npc_id)
    if job["status"] != "succeeded":
        raise Problem(404, "This NPC has no generated file yet.")
    try:
        data = await request.app.state.storage.get(xml_key(npc_id))
    except StorageError as exc:
        raise Problem(503, f"Storage could not hand over the file: {exc.message}") from None
    if data is None:
        raise Problem(404, "The file is missing from storage; regenerate it.")
    return Response(data, media_type="application/xml", headers={
        "Content-Disposition": f'attachment; filename="{npc_id}.xml"', "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    })  # fmt: skip


# --- live updates --------------------------------------------------------------------------


async def events(request: Request, principal: Principal) -> Response:
    hub = console_of(request).hub
    if hub is None:
        raise Problem(503, "Live updates need DATABASE_URL (or DATABASE_LISTEN_URL).")
    npc = request.query_params.get("npc")
    try:
        npc_id = UUID(npc) if npc else None
    except ValueError:
        raise Problem(400, "npc must be an NPC id.") from None
    since = _since(request.query_params.get("since"))
    subscription = hub.subscribe(principal.owner_filter(), npc_id)
    if since is not None:
        # What changed between the page's rendering and this subscription.
        await hub.catch_up(subscription, since)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            while True:
                if subscription.overflowed:
                    yield "event: reload\ndata: {}\n\n"
                    return
                try:
                    event = await asyncio.wait_for(subscription.queue.get(), timeout=15)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: job\ndata: {json.dumps(event)}\n\n"
        finally:
            hub.unsubscribe(subscription)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={
        "Cache-Control": "no-store", "X-Accel-Buffering": "no",
    })  # fmt: skip


def _since(text: str | None) -> datetime | None:
    """The page's rendering time, at most a minute back."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise Problem(400, "since must be an ISO 8601 time.") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(at, datetime.now(UTC) - CATCH_UP)


# --- actions -------------------------------------------------------------------------------


async def _form(request: Request, principal: Principal) -> dict[str, str]:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    why = csrf_failure(request, console_of(request).origins, fields.get("csrf"))
    if why is not None:
        raise Problem(403, f"Refused: {why}.")
    return fields


async def act(request: Request, principal: Principal) -> Response:
    """Regenerate, retry or cancel one NPC's job."""
    npc_id = path_uuid(request, "npc_id")
    action = request.path_params["action"]
    await _form(request, principal)
    job = await visible_job(request, principal, npc_id)
    queue = JobQueue(request.app.state.pool)
    if action == "regenerate":
        # `npcforge enqueue NPC_ID --force`, with the API's per-user start quota.
        quota = request.app.state.start_quota
        slot = quota.acquire(principal)
        try:
            await queue.enqueue(npc_ids=[npc_id], force=True)
        except BaseException:
            quota.release(principal, slot)
            raise
        done = "regenerating"
    elif action == "retry":  # `npcforge jobs retry NPC_ID`
        if not await queue.retry_failed_job(npc_id=npc_id):
            raise Problem(
                409, f"The job is {job['status'] or 'absent'}, not failed: nothing to retry."
            )
        done = "retried"
    elif action == "cancel":  # `npcforge jobs cancel NPC_ID`
        if not await queue.cancel(npc_id=npc_id):
            raise Problem(409, f"The job is {job['status'] or 'absent'}: nothing to cancel.")
        done = "cancelled"
    else:
        raise Problem(404, "No such action.")
    return RedirectResponse(f"/console/npcs/{npc_id}?done={done}", status_code=303)


async def retry_failed(request: Request, principal: Principal) -> Response:
    """`npcforge jobs retry --all-failed [--code C]`: the service role only, after a
    confirmation page that says how many jobs it touches."""
    fields = await _form(request, principal)
    if principal.owner_filter() is not None:
        raise Problem(403, "Retrying every failed job is for the service role.")
    code = (fields.get("code") or "").strip().upper() or None
    queue = JobQueue(request.app.state.pool)
    if code is not None and code not in ERROR_CODES and code not in await queue.failed_codes():
        raise Problem(400, f"{code} is not an error code.")
    if fields.get("confirm") != "yes":
        overview_ = await ConsoleReads(request.app.state.pool).overview(owner=None)
        matching = [f for f in overview_.failures if code is None or f["code"] == code]
        seen = sum(f["jobs"] for f in overview_.failures)
        return render(request, principal, "confirm.html", {
            "code": code, "matching": sum(f["jobs"] for f in matching),
            "more": seen >= overview_.failures_cap,
        })  # fmt: skip
    rows = await queue.retry_failed(code=code)
    query = urlencode({"status": "queued", "retried": str(len(rows))})
    return RedirectResponse(f"/console/jobs?{query}", status_code=303)


# --- signing in ----------------------------------------------------------------------------


async def sign_in(request: Request) -> Response:
    console = console_of(request)
    next_path = request.query_params.get("next") or "/console"
    if not next_path.startswith("/console") or next_path.startswith("//"):
        next_path = "/console"
    if console.open_access:
        return RedirectResponse(next_path, status_code=303)
    if request.method == "GET":
        return render(request, None, "sign_in.html", {"next": next_path, "problem": None})
    form = await request.form()
    sent = {k: v for k, v in form.items() if isinstance(v, str)}
    why = csrf_failure(request, console.origins, sent.get("csrf"))
    token = (sent.get("token") or "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    problem = why
    if problem is None:
        try:
            await verify_token(request, token)
        except ApiError as exc:
            reason = (exc.details or {}).get("reason")
            problem = f"{exc.message}" + (f" ({reason})" if reason else "")
    if problem is not None:
        return render(request, None, "sign_in.html", {"next": next_path, "problem": problem}, 401)
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(request, response, SIGN_IN_COOKIE, token)
    return response


async def sign_out(request: Request) -> Response:
    form = await request.form()
    sent = form.get("csrf")
    why = csrf_failure(
        request, console_of(request).origins, sent if isinstance(sent, str) else None
    )
    if why is not None:
        return render(request, None, "error.html", {"message": f"Refused: {why}."}, 403)
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return response


def console_routes() -> list[BaseRoute]:
    return [
        Route("/", page(overview), methods=["GET"], name="console_overview"),
        Route("/jobs", page(jobs), methods=["GET"], name="console_jobs"),
        Route("/jobs/retry-failed", page(retry_failed), methods=["POST"]),
        Route("/npcs/{npc_id}", page(npc_page), methods=["GET"], name="console_npc"),
        Route("/npcs/{npc_id}/xml", page(npc_xml), methods=["GET"]),
        Route("/npcs/{npc_id}/{action}", page(act), methods=["POST"]),
        Route("/events", page(events), methods=["GET"]),
        Route("/sign-in", sign_in, methods=["GET", "POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("npcforge.console", "static")]), name="static"),
    ]


def console_mount() -> list[BaseRoute]:
    """/console itself (the overview) and everything under it."""
    return [
        Route("/console", page(overview), methods=["GET"]),
        Mount("/console", routes=console_routes()),
    ]
