"""Request and response shapes (pydantic): the single source for validation and for OpenAPI.

Wire names are camelCase (aliases); Python names stay snake_case. Input models forbid unknown
keys and accept only their wire names, so `current_xml` is not a synonym of `currentXml`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from npcforge.errors import JOB_ERROR_CODES

JobStatus = Literal["queued", "processing", "succeeded", "failed"]
# A listed job that is no longer the NPC's current one and did not end in success or failure.
ListedJobStatus = Literal["queued", "processing", "succeeded", "failed", "superseded"]
AttemptOutcome = Literal["succeeded", "reused", "failed", "retry", "discarded", "released"]
# Why a queued job is not running: "budget" while the fleet's or the owner's daily model budget
# is spent (NPCFORGE_DAILY_BUDGET_USD, NPCFORGE_USER_DAILY_BUDGET_USD).
HoldReason = Literal["budget"]
HOLD_REASON_HELP = (
    "\"budget\" while the job is queued and the fleet's or its owner's daily model budget is "
    "spent (it runs once the budget allows: the next UTC day, or a raised budget); else null."
)

MAX_CURRENT_XML_CHARS = 131_072
MAX_BODY_BYTES = 256 * 1024
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

UUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
CURSOR_PATTERN = r"^[0-9]{1,17}-[0-9a-f]{32}$"

UuidText = Annotated[
    str,
    StringConstraints(pattern=UUID_PATTERN),
    Field(json_schema_extra={"format": "uuid"}),
]


class InputModel(BaseModel):
    """Strict input: wire names only, no unknown keys, no type coercion."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class OutputModel(BaseModel):
    """A response body: every key is always present (null when it has no value)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        json_schema_serialization_defaults_required=True,
        frozen=True,
    )


# --- path and query parameters -----------------------------------------------------------


class NpcPath(InputModel):
    npc_id: UuidText = Field(description="The NPC's id (a UUID).")


class JobPath(InputModel):
    npc_id: UuidText = Field(description="The NPC's id (a UUID).")
    job_id: UuidText = Field(description="The generation job's id (a UUID).")


class NoQuery(InputModel):
    """No query parameters are accepted."""


class StartQuery(InputModel):
    force: Literal["true", "false"] = Field(
        default="false",
        description="`true` starts a new job even while one is queued or processing "
        "(the running job is superseded and can no longer publish its result).",
    )


class ListJobsQuery(InputModel):
    # Query strings are text: lax mode turns the digits into an int; bounds still apply.
    limit: int = Field(
        default=DEFAULT_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        strict=False,
        description="How many jobs to return.",
    )
    cursor: str | None = Field(
        default=None,
        pattern=CURSOR_PATTERN,
        description="`pageInfo.nextCursor` of the previous page (opaque); omit for the first page.",
    )


# --- bodies ------------------------------------------------------------------------------


class GenerateBody(InputModel):
    """Optional. Both fields are accepted for compatibility and do not change the job."""

    regenerate: bool = False
    current_xml: str | None = Field(default=None, max_length=MAX_CURRENT_XML_CHARS)


class GenerateAccepted(OutputModel):
    job_id: UUID
    status: Literal["queued"] = "queued"
    npc_id: UUID
    submitted_at: datetime


class JobErrorOut(OutputModel):
    # Not an enum: a row failed by hand may carry any code, and it is passed through.
    code: str = Field(
        description="A stable job error code: " + ", ".join(JOB_ERROR_CODES) + ".",
        examples=["AI_INVALID_XML", "RECORD_INVALID"],
    )
    message: str


class JobStatusOut(OutputModel):
    job_id: UUID
    npc_id: UUID
    status: JobStatus
    xml: str | None = Field(description="The stored XML when `succeeded`, else null.")
    content_size_bytes: int | None = Field(
        description="The stored file's size in bytes when `succeeded`, else null."
    )
    error: JobErrorOut | None = Field(description="Set when `failed`, else null.")
    updated_at: datetime = Field(description="When the job's state last changed.")
    attempts: int = Field(ge=0, description="Attempts started so far.")
    hold_reason: HoldReason | None = Field(default=None, description=HOLD_REASON_HELP)


class AttemptOut(OutputModel):
    attempt: int = Field(ge=1)
    outcome: AttemptOutcome
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    model: str | None
    error_code: str | None
    error_message: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None = Field(description="Upstream cost in USD, when reported.")
    retries: int = Field(description="Upstream retries inside this attempt.")


class JobSummaryOut(OutputModel):
    job_id: UUID
    current: bool = Field(description="True for the NPC's current job (the one to poll).")
    status: ListedJobStatus
    started_at: datetime | None
    updated_at: datetime | None
    error: JobErrorOut | None
    attempts: list[AttemptOut] = Field(description="Oldest first.")


class PageInfo(OutputModel):
    next_cursor: str | None


class JobListOut(OutputModel):
    items: list[JobSummaryOut] = Field(description="Newest first.")
    page_info: PageInfo


class HealthOut(OutputModel):
    status: Literal["ok"]


class ReadyOut(OutputModel):
    status: Literal["ready"]


# --- the error envelope ------------------------------------------------------------------


class ErrorDetail(OutputModel):
    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    code: str
    message: str
    details: dict[str, Any] | None = Field(
        default=None,
        description="Present on validation errors: `fieldErrors` (name to messages) or "
        "`message`; on conflicts: `status`; on authentication errors: `reason`.",
    )


class ErrorEnvelope(OutputModel):
    error: ErrorDetail


# --- the command line's `--json`: the API's conventions (camelCase keys, ISO 8601 times) ----


class JobErrorDetailOut(JobErrorOut):
    """A job's error as operators see it: the API's code and message, plus what the row keeps."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    details: dict[str, Any] | None = Field(
        default=None, description="E.g. `findings` of AI_INVALID_XML."
    )
    request_id: str | None = Field(default=None, description="The upstream request id.")


class NpcJobOut(OutputModel):
    """`npcforge status --json`: an NPC's current job."""

    npc_id: UUID
    job_id: UUID | None
    status: JobStatus | None
    attempts: int
    started_at: datetime | None
    updated_at: datetime | None
    run_after: datetime | None = Field(description="When a queued job may run next.")
    finished_at: datetime | None
    content_size_bytes: int | None = Field(description="The stored file's size when succeeded.")
    error: JobErrorDetailOut | None
    hold_reason: HoldReason | None = Field(default=None, description=HOLD_REASON_HELP)


class JobRowOut(OutputModel):
    """One line of `npcforge jobs list --json`."""

    npc_id: UUID
    name: str
    job_id: UUID | None
    status: JobStatus
    attempts: int
    error_code: str | None
    started_at: datetime | None
    updated_at: datetime | None
    worker: str | None = Field(description="The worker holding the lease, while processing.")
    hold_reason: HoldReason | None = Field(default=None, description=HOLD_REASON_HELP)


class QueuedJobOut(OutputModel):
    """A job that `enqueue`, `jobs retry` or `jobs cancel` acted on."""

    npc_id: UUID
    job_id: UUID


class DoctorCheckOut(OutputModel):
    check: str
    ok: bool
    detail: str
    fix: str | None


def json_document(value: OutputModel | list[OutputModel]) -> str:
    """The text a `--json` option prints: the models' own serializer, indented for people."""
    if isinstance(value, list):
        return json.dumps([item.model_dump(mode="json") for item in value], indent=2)
    return json.dumps(value.model_dump(mode="json"), indent=2)
