"""Failures as data: one type per failure class with a stable code, mapped once to retry policy.

The codes are the contract of SPEC §7 (`generation_job_error.code` and the API's `error.code`).
Messages never carry secrets, prompts or XML bodies.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ErrorCode = Literal[
    "AI_TIMEOUT",
    "AI_INVALID_XML",
    "LIMIT_EXCEEDED",
    "AI_CONFIG",
    "AI_REFUSED",
    "AI_UPSTREAM",
    "STORAGE_ERROR",
    "NPC_NOT_FOUND",
    "WORKER_LOST",
    "CANCELLED",
    "RECORD_INVALID",
    "INTERNAL",
]

JOB_ERROR_CODES: tuple[str, ...] = ErrorCode.__args__  # type: ignore[attr-defined]
ERROR_CODES: frozenset[str] = frozenset(JOB_ERROR_CODES)


class JobError(Exception):
    """A job failure with a stable code. `retryable` says whether another attempt may succeed."""

    code: ClassVar[ErrorCode] = "INTERNAL"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.request_id = request_id

    def as_json(self) -> dict[str, Any]:
        """The `generation_job_error` document."""
        doc: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            doc["details"] = self.details
        if self.request_id:
            doc["requestId"] = self.request_id
        return doc


class AiTimeout(JobError):
    code = "AI_TIMEOUT"
    default_retryable = True


class AiInvalidXml(JobError):
    code = "AI_INVALID_XML"


class LimitExceeded(JobError):
    code = "LIMIT_EXCEEDED"
    default_retryable = True


class AiConfig(JobError):
    code = "AI_CONFIG"


class AiRefused(JobError):
    code = "AI_REFUSED"


class AiUpstream(JobError):
    code = "AI_UPSTREAM"
    default_retryable = True


class StorageError(JobError):
    code = "STORAGE_ERROR"
    default_retryable = True


class NpcNotFound(JobError):
    code = "NPC_NOT_FOUND"


class WorkerLost(JobError):
    code = "WORKER_LOST"


class Cancelled(JobError):
    code = "CANCELLED"


class RecordInvalid(JobError):
    """The record holds something no NPC file can express as meant; fixing the rows fixes it."""

    code = "RECORD_INVALID"


class InternalError(JobError):
    code = "INTERNAL"
