"""The poll path: GET /api/npcs/{npcId}/generation-jobs/{jobId}, behind one entry point.

Pollers ask every second or two for as long as a job runs, so this is the API's hot path. Its
speed-ups live here, each kept because bench/api_bench.py shows it pays (docs/benchmarks.md,
"What each speed-up of the poll path buys"):

- status reads coalesced into one `id = ANY($1)` query per batch, on connections kept between
  batches (`npcforge.api.lookups`);
- answers kept serialized (`PollAnswers`, below): the row is still read and the object still
  fetched for every poll; only building and serializing the JSON document is skipped while both
  are what the kept answer was made from.

Measured and removed (they did not pay): hand-built response headers, a regular-expression
check of the path ids before the pydantic model. The frozen start-up heap (`settle_heap`) is a
process-wide step, so `create_app(freeze_heap=True)` still does it for `npcforge api`.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from npcforge.api.auth import Principal
from npcforge.api.dto import HoldReason, JobErrorOut, JobPath, JobStatus, JobStatusOut, NoQuery
from npcforge.api.errors import ApiError, npc_not_found
from npcforge.api.inputs import parse_query, path_ids
from npcforge.api.lookups import JobStatusLookups
from npcforge.api.metrics import ApiMetrics
from npcforge.api.replies import JsonReply
from npcforge.budget import Budget
from npcforge.costs import hold_reasons
from npcforge.errors import StorageError
from npcforge.storage.base import Storage, xml_key

log = logging.getLogger("npcforge.api")


class PollPath:
    """Built in the app's lifespan, one per app; `answer` is what the route calls."""

    def __init__(self, pool: Any, storage: Storage, metrics: ApiMetrics, budget: Budget) -> None:
        self.pool = pool
        self.budget = budget
        self.lookups = JobStatusLookups(pool)
        self.answers = PollAnswers()
        self.storage = storage
        self.metrics = metrics

    async def answer(self, request: Request, principal: Principal) -> Response:
        npc_id, job_id = path_ids(request, JobPath)
        parse_query(request, NoQuery)
        row = await self.lookups.fetch(npc_id)
        owner = principal.owner_filter()
        if (
            row is None
            or row["deleted_at"] is not None
            or (owner is not None and row["owner_id"] != owner)
        ):
            raise npc_not_found()
        if row["job_id"] != job_id:
            raise ApiError(404, "GENERATION_JOB_NOT_FOUND", "Generation job could not be found.")
        status: JobStatus = row["status"] or "queued"
        data: bytes | None = None
        if status == "succeeded":
            try:
                data = await self.storage.get(xml_key(npc_id))
            except StorageError as exc:
                self.metrics.xml_fetch_failures.inc()
                raise storage_failure(exc, npc_id, job_id) from None
            if data is None:
                raise ApiError(
                    404, "XML_NOT_FOUND",
                    "The generated XML file is missing from storage; start a new generation job.",
                )  # fmt: skip
        (hold,) = await hold_reasons(self.pool, self.budget, [(row["owner_id"], status)])
        # Everything the answer is made of besides the NPC's id, which keys it.
        made_of = (
            job_id, status, row["content_size_bytes"], row["error"], row["updated_at"],
            row["attempts"], hold,
        )  # fmt: skip
        answer = self.answers.get(npc_id, made_of, data)
        if answer is None:
            answer = job_status_answer(npc_id, job_id, row, status, data, hold=hold)
            self.answers.put(npc_id, made_of, data, answer)
        return JsonReply(answer)

    async def close(self) -> None:
        await self.lookups.close()


def job_error_out(error: Any) -> JobErrorOut:
    """A failed job always has a code and a message, whatever the row holds."""
    if isinstance(error, dict) and isinstance(error.get("code"), str) and error["code"]:
        message = error.get("message")
        return JobErrorOut(
            code=error["code"], message=message if isinstance(message, str) else error["code"]
        )
    return JobErrorOut(code="INTERNAL", message="The job failed without a recorded reason.")


def storage_failure(exc: StorageError, npc_id: UUID, job_id: UUID) -> ApiError:
    """A failed read of the XML: 503 and "poll again" only when waiting can help; a storage
    refusal (bucket missing, key refused, …) is 502 and logged, since only an operator can fix it."""
    code = (exc.details or {}).get("storageCode")
    extra = {
        "npc_id": str(npc_id),
        "job_id": str(job_id),
        "storage_code": code,
        "error": exc.message,
    }
    if exc.retryable:
        log.warning("storage unreachable while reading the XML", extra=extra)
        return ApiError(
            503, "XML_FETCH_FAILED", "Unable to read generated XML content; try again shortly.",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    log.error("storage refused to return the XML", extra=extra)
    return ApiError(
        502, "STORAGE_ERROR",
        "Storage refused to return the generated XML; polling again will not help until the "
        "storage set-up is fixed.",
        details={"storageCode": code},
    )  # fmt: skip


def job_status_answer(
    npc_id: UUID,
    job_id: UUID,
    row: Any,
    status: JobStatus,
    data: bytes | None,
    *,
    hold: HoldReason | None = None,
) -> bytes:
    out = JobStatusOut(
        job_id=job_id,
        npc_id=npc_id,
        status=status,
        xml=data.decode("utf-8", errors="replace") if data is not None else None,
        content_size_bytes=len(data) if data is not None else None,
        error=job_error_out(row["error"]) if status == "failed" else None,
        updated_at=row["updated_at"],
        attempts=row["attempts"],
        hold_reason=hold,
    )
    return out.__pydantic_serializer__.to_json(out)


# --- answers kept serialized, reused while what they were made from is unchanged ----------

MAX_ENTRIES = 1024
MAX_BYTES = 8 * 1024 * 1024


class PollAnswers:
    """Bounded in entries and in bytes (the answer plus the object it holds on to)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[UUID, tuple[tuple[Any, ...], bytes | None, bytes]] = {}
        self._bytes = 0

    def get(self, npc_id: UUID, state: tuple[Any, ...], data: bytes | None) -> bytes | None:
        entry = self._entries.get(npc_id)
        if entry is None:
            return None
        kept_state, kept_data, answer = entry
        # The identity check is the common case (storage hands back the object it keeps);
        # equal bytes read anew match too.
        if kept_state != state or not (kept_data is data or kept_data == data):
            return None
        return answer

    def put(self, npc_id: UUID, state: tuple[Any, ...], data: bytes | None, answer: bytes) -> None:
        self._drop(npc_id)
        size = _size(data, answer)
        if size > self.max_bytes:
            return
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))  # the oldest first
        self._entries[npc_id] = (state, data, answer)
        self._bytes += size

    def _drop(self, npc_id: UUID) -> None:
        entry = self._entries.pop(npc_id, None)
        if entry is not None:
            self._bytes -= _size(entry[1], entry[2])

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes


def _size(data: bytes | None, answer: bytes) -> int:
    return len(answer) + (len(data) if data is not None else 0)
