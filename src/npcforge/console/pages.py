"""The console's pages (server-rendered HTML under /console): each one or a few bounded reads and
one template; and the live updates (server-sent events) that keep them current."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from npcforge.api.auth import Principal
from npcforge.api.errors import ApiError
from npcforge.api.routes import decode_cursor, encode_cursor
from npcforge.console import views
from npcforge.console.frame import Problem, console_of, path_uuid, render, visible_job
from npcforge.costs import budget_overview, cost_report
from npcforge.db.console import ConsoleReads, JobFilter
from npcforge.db.npcs import load_npc
from npcforge.errors import ERROR_CODES, StorageError
from npcforge.storage.base import xml_key

PAGE_SIZE = 50
CATCH_UP = timedelta(minutes=1)
STATUSES = ("queued", "processing", "succeeded", "failed")


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
