"""Thin handlers: parse and check input, one query, shape the answer."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from npcforge.api.auth import Principal
from npcforge.api.dto import GenerateAccepted, GenerateBody, JobErrorOut, JobStatusOut
from npcforge.api.errors import NO_STORE, ApiError, npc_not_found
from npcforge.db.queries import q
from npcforge.errors import StorageError
from npcforge.storage.base import xml_key

MAX_BODY_BYTES = 256 * 1024


def dump(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", by_alias=True), status_code=status, headers=NO_STORE)


def path_uuid(request: Request, *names: str) -> list[uuid.UUID]:
    values = []
    bad = []
    for name in names:
        raw = request.path_params.get(name, "")
        try:
            values.append(uuid.UUID(str(raw)))
        except ValueError:
            bad.append(name)
    if bad:
        raise ApiError(
            400, "INVALID_PATH_PARAMETERS", "Path parameters are invalid.",
            details={"fieldErrors": {name: ["must be a UUID"] for name in bad}},
        )  # fmt: skip
    return values


def parse_force(request: Request) -> bool:
    params = request.query_params
    unknown = sorted(set(params.keys()) - {"force"})
    values = params.getlist("force")
    if unknown or len(values) > 1 or (values and values[0] not in ("true", "false")):
        field_errors: dict[str, list[str]] = {name: ["unknown parameter"] for name in unknown}
        if values and (len(values) > 1 or values[0] not in ("true", "false")):
            field_errors["force"] = ["must be 'true' or 'false' (once)"]
        raise ApiError(
            400, "INVALID_QUERY_PARAMETERS", "Query parameters are invalid.",
            details={"fieldErrors": field_errors},
        )  # fmt: skip
    return bool(values) and values[0] == "true"


async def read_generate_body(request: Request) -> GenerateBody:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", "Request body is too large.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "PAYLOAD_TOO_LARGE", "Request body is too large.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return GenerateBody()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400, "INVALID_BODY", "Request body is invalid.",
            details={"message": "Request body must be valid JSON."},
        ) from None  # fmt: skip
    if not isinstance(data, dict):
        raise ApiError(
            400, "INVALID_BODY", "Request body is invalid.",
            details={"message": "Request body must be a JSON object."},
        )  # fmt: skip
    try:
        return GenerateBody.model_validate(data)
    except ValidationError as exc:
        field_errors: dict[str, list[str]] = {}
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(body)"
            field_errors.setdefault(name, []).append(err["msg"])
        raise ApiError(
            400, "INVALID_BODY", "Request body is invalid.", details={"fieldErrors": field_errors}
        ) from None


async def principal_of(request: Request) -> Principal:
    principal: Principal = await request.app.state.authenticator.authenticate(request)
    return principal


async def start_generation(request: Request) -> Response:
    principal = await principal_of(request)
    (npc_id,) = path_uuid(request, "npcId")
    force = parse_force(request)
    await read_generate_body(request)  # validated; regenerate/currentXml are informational
    await request.app.state.rate_limiter.check(principal)
    row = await request.app.state.pool.fetchrow(
        q("start_job_for_owner"), npc_id, principal.owner_filter(), force
    )
    if row is None or row["found"] == 0:
        raise npc_not_found()
    if row["job_id"] is None:
        raise ApiError(
            409, "GENERATION_JOB_CONFLICT", "A generation job is already in progress for this NPC.",
            details={"status": row["previous_status"]},
        )  # fmt: skip
    return dump(
        GenerateAccepted(job_id=row["job_id"], npc_id=npc_id, submitted_at=row["submitted_at"]),
        status=202,
    )


def job_error_out(error: Any) -> JobErrorOut:
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return JobErrorOut(code=error["code"], message=str(error.get("message") or error["code"]))
    return JobErrorOut(code="INTERNAL", message="The job failed without a recorded reason.")


async def job_status(request: Request) -> Response:
    principal = await principal_of(request)
    npc_id, job_id = path_uuid(request, "npcId", "jobId")
    row = await request.app.state.pool.fetchrow(q("job_status"), npc_id)
    owner = principal.owner_filter()
    if row is None or row["deleted_at"] is not None or (owner is not None and row["owner_id"] != owner):
        raise npc_not_found()
    if row["job_id"] != job_id:
        raise ApiError(404, "GENERATION_JOB_NOT_FOUND", "Generation job could not be found.")
    status = row["status"] or "queued"
    xml: str | None = None
    size: int | None = row["content_size_bytes"]
    if status == "succeeded":
        try:
            data = await request.app.state.storage.get(xml_key(npc_id))
        except StorageError:
            raise ApiError(
                503, "XML_FETCH_FAILED", "Unable to read generated XML content; try again shortly.",
                headers={"Retry-After": "5"},
            ) from None  # fmt: skip
        if data is None:
            raise ApiError(
                404, "XML_NOT_FOUND",
                "The generated XML file is missing from storage; start a new generation job.",
            )  # fmt: skip
        xml = data.decode("utf-8")
        size = len(data)
    return dump(
        JobStatusOut(
            job_id=job_id,
            npc_id=npc_id,
            status=status,
            xml=xml,
            content_size_bytes=size,
            error=job_error_out(row["error"]) if status == "failed" else None,
            updated_at=row["updated_at"],
            attempts=row["attempts"],
        )
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def readyz(request: Request) -> Response:
    try:
        await request.app.state.pool.fetchval("SELECT 1", timeout=2)
    except Exception:
        raise ApiError(503, "NOT_READY", "Database is unreachable.", headers={"Retry-After": "5"}) from None
    return JSONResponse({"status": "ready"}, headers=NO_STORE)
