"""Thin handlers (check who, check input, one query, shape the answer) and the endpoint table.

The table `ENDPOINTS` is what both the router and /openapi.json are built from.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from npcforge.api.auth import Principal
from npcforge.api.dto import (
    MAX_BODY_BYTES,
    GenerateAccepted,
    GenerateBody,
    HealthOut,
    JobListOut,
    JobPath,
    JobStatusOut,
    JobSummaryOut,
    ListJobsQuery,
    NoQuery,
    NpcPath,
    PageInfo,
    ReadyOut,
    StartQuery,
)
from npcforge.api.errors import NO_STORE, ApiError, npc_not_found
from npcforge.api.inputs import parse_generate_body, parse_query, path_ids
from npcforge.api.openapi import Endpoint, Reply
from npcforge.api.owner_budget import refuse_over_budget
from npcforge.api.polling import PollPath, job_error_out
from npcforge.api.replies import JSON, JsonReply
from npcforge.db.jobs import JobQueue

log = logging.getLogger("npcforge.api")


def json_reply(model: BaseModel, status: int = 200) -> Response:
    # pydantic-core writes the JSON bytes itself: no dict round-trip, no json.dumps.
    return JsonReply(model.__pydantic_serializer__.to_json(model), status_code=status)


async def principal_of(request: Request) -> Principal:
    try:
        principal: Principal = await request.app.state.authenticator.authenticate(request)
    except ApiError as exc:
        if exc.status == 401:
            reason = (exc.details or {}).get("reason", "missing")
            request.app.state.metrics.auth_failures.labels(reason).inc()
        raise
    return principal


# --- POST /api/npcs/{npcId}/generate -----------------------------------------------------


async def start_generation(request: Request) -> Response:
    principal = await principal_of(request)
    (npc_id,) = path_ids(request, NpcPath)
    force = parse_query(request, StartQuery).force == "true"
    await parse_generate_body(request)  # checked; regenerate/currentXml do not change the job
    state = request.app.state
    await refuse_over_budget(
        state.pool, state.budget, npc_id=npc_id, owner=principal.owner_filter()
    )
    try:
        slot = state.start_quota.acquire(principal)
    except ApiError:
        state.metrics.rate_limited.inc()
        raise
    started = False
    try:
        row = await JobQueue(state.pool).start_for_owner(
            npc_id=npc_id, owner=principal.owner_filter(), force=force
        )
        if row is None or row["found"] == 0:
            raise npc_not_found()
        if row["job_id"] is None:
            raise ApiError(
                409, "GENERATION_JOB_CONFLICT",
                "A generation job is already in progress for this NPC.",
                details={"status": row["previous_status"]},
            )  # fmt: skip
        started = True
    finally:
        if not started:
            state.start_quota.release(principal, slot)
    state.metrics.jobs_started.inc()
    accepted = GenerateAccepted(
        job_id=row["job_id"], npc_id=npc_id, submitted_at=row["submitted_at"]
    )
    return json_reply(accepted, status=202)


# --- GET /api/npcs/{npcId}/generation-jobs/{jobId} ---------------------------------------


async def job_status(request: Request) -> Response:
    poll_path: PollPath = request.app.state.poll_path
    return await poll_path.answer(request, await principal_of(request))


# --- GET /api/npcs/{npcId}/generation-jobs -----------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(sort_at: datetime, job_id: UUID) -> str:
    """`{microseconds since 1970}-{job id hex}` of the last row shown; clients treat it as opaque."""
    micros = (sort_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{job_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    # CURSOR_PATTERN already holds, so this only fails on values beyond datetime's range.
    try:
        micros, _, job = cursor.partition("-")
        return _EPOCH + timedelta(microseconds=int(micros)), UUID(hex=job)
    except (ValueError, OverflowError):
        raise ApiError(
            400, "INVALID_QUERY_PARAMETERS", "Query parameters are invalid.",
            details={"fieldErrors": {"cursor": ["not a cursor this API returned"]}},
        ) from None  # fmt: skip


async def list_jobs(request: Request) -> Response:
    principal = await principal_of(request)
    (npc_id,) = path_ids(request, NpcPath)
    query = parse_query(request, ListJobsQuery)
    after = decode_cursor(query.cursor) if query.cursor is not None else (None, None)
    rows = await JobQueue(request.app.state.pool).history(
        npc_id=npc_id, owner=principal.owner_filter(), after=after, limit=query.limit + 1
    )
    if not rows or rows[0]["found"] == 0:
        raise npc_not_found()
    rows = [row for row in rows if row["job_id"] is not None]
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    items = [
        JobSummaryOut(
            job_id=row["job_id"],
            current=row["current"],
            status=row["status"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
            error=job_error_out(row["error"]) if row["status"] == "failed" else None,
            attempts=row["attempts"],
        )
        for row in rows
    ]
    last = rows[-1] if more else None
    next_cursor = encode_cursor(last["sort_at"], last["job_id"]) if last is not None else None
    return json_reply(JobListOut(items=items, page_info=PageInfo(next_cursor=next_cursor)))


# --- operations --------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return json_reply(HealthOut(status="ok"))


async def readyz(request: Request) -> Response:
    try:
        await request.app.state.pool.fetchval("SELECT 1", timeout=2)
    except Exception:
        raise ApiError(
            503, "NOT_READY", "Database is unreachable.", headers={"Retry-After": "5"}
        ) from None
    return json_reply(ReadyOut(status="ready"))


async def metrics(request: Request) -> Response:
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, headers={**NO_STORE, "Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: Request) -> Response:
    return Response(request.app.state.openapi_json, media_type=JSON, headers=NO_STORE)


_JOB_LINKS = {
    "GetGenerationJob": {
        "operationId": "getGenerationJob",
        "parameters": {"npcId": "$request.path.npcId", "jobId": "$response.body#/jobId"},
        "description": "Poll the job that was started.",
    },
    "ListGenerationJobs": {
        "operationId": "listGenerationJobs",
        "parameters": {"npcId": "$request.path.npcId"},
    },
}

ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST", "/api/npcs/{npcId}/generate", start_generation,
        operation_id="startGeneration",
        summary="Start a generation job for an NPC",
        description=(
            "Queues a job that writes the NPC's XML. Only the NPC's owner (or the service role) "
            "may start one. Job starts are capped per user and minute (`NPCFORGE_GENERATE_PER_"
            "MINUTE`, `RATE_LIMITED`), and refused while the NPC owner's daily model budget is "
            "spent (`NPCFORGE_USER_DAILY_BUDGET_USD`, `BUDGET_EXCEEDED`, with `Retry-After` and "
            "`details.resetsAt`, the next UTC midnight). `force=true` also calls the model when "
            "the record is unchanged since its file was made. The body is optional and at most "
            f"{MAX_BODY_BYTES} bytes."
        ),
        reply=Reply(202, "The job is queued.", GenerateAccepted, links=_JOB_LINKS),
        path_model=NpcPath, query_model=StartQuery, body_model=GenerateBody,
        errors={
            404: ("NPC_NOT_FOUND",), 409: ("GENERATION_JOB_CONFLICT",),
            429: ("RATE_LIMITED", "BUDGET_EXCEEDED"),
        },
    ),
    Endpoint(
        "GET", "/api/npcs/{npcId}/generation-jobs/{jobId}", job_status,
        operation_id="getGenerationJob",
        summary="Poll a generation job",
        description=(
            "The state of the NPC's current job, with the XML once it succeeded. A job id that is "
            "not the NPC's current one (unknown, or superseded by a newer job) is not found."
        ),
        reply=Reply(200, "The job's state.", JobStatusOut),
        path_model=JobPath, query_model=NoQuery,
        errors={
            404: ("NPC_NOT_FOUND", "GENERATION_JOB_NOT_FOUND", "XML_NOT_FOUND"),
            502: ("STORAGE_ERROR",),
            503: ("XML_FETCH_FAILED",),
        },
    ),
    Endpoint(
        "GET", "/api/npcs/{npcId}/generation-jobs", list_jobs,
        operation_id="listGenerationJobs",
        summary="List an NPC's recent generation jobs with their attempts",
        description="Newest first, `limit` per page; follow `pageInfo.nextCursor` for more.",
        reply=Reply(200, "A page of jobs.", JobListOut),
        path_model=NpcPath, query_model=ListJobsQuery,
        errors={404: ("NPC_NOT_FOUND",)},
    ),
    Endpoint(
        "GET", "/healthz", healthz, operation_id="healthz", summary="The process is up",
        reply=Reply(200, "Up.", HealthOut), tag="operations", authenticated=False,
        uses_database=False,
    ),
    Endpoint(
        "GET", "/readyz", readyz, operation_id="readyz", summary="The database is reachable",
        reply=Reply(200, "Ready.", ReadyOut), tag="operations", authenticated=False,
        uses_database=False,  # it asks the database itself, and answers 503 NOT_READY
        errors={503: ("NOT_READY",)},
    ),
    Endpoint(
        "GET", "/metrics", metrics, operation_id="metrics", summary="Prometheus metrics",
        reply=Reply(200, "Prometheus text exposition format.", media_type="text/plain"),
        tag="operations", authenticated=False, uses_database=False,
    ),
    Endpoint(
        "GET", "/openapi.json", openapi, operation_id="openapi", summary="This document",
        reply=Reply(200, "The OpenAPI 3.1 description of this API."),
        tag="operations", authenticated=False, uses_database=False,
    ),
]  # fmt: skip
