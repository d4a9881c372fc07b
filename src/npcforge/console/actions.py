"""The console's actions and signing in. An action runs the same queue statement the CLI runs
(`npcforge enqueue --force`, `jobs retry`, `jobs cancel`, `jobs retry --all-failed --code`)
after the same visibility rule as the API, and only with the page's CSRF token."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from npcforge.api.auth import Principal
from npcforge.api.errors import ApiError
from npcforge.console.access import (
    COOKIE_PATH,
    SIGN_IN_COOKIE,
    csrf_failure,
    set_cookie,
    verify_token,
)
from npcforge.console.frame import Problem, console_of, path_uuid, render, visible_job
from npcforge.db.console import ConsoleReads
from npcforge.db.jobs import JobQueue
from npcforge.errors import ERROR_CODES

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
