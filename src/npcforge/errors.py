"""Failures as data: one type per failure class with a stable code, mapped once to retry policy.

The codes are the contract of SPEC §7 (`generation_job_error.code` and the API's `error.code`).
Messages never carry secrets, prompts or XML bodies.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from npcforge.redaction import cut

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

# Bounds of the `generation_job_error` document, whatever an upstream sent: each string, each
# list, the message, and the whole document as JSON.
MAX_MESSAGE_CHARS = 500
MAX_DETAIL_CHARS = 300
MAX_DETAIL_ITEMS = 60
MAX_ERROR_JSON_CHARS = 16_384


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

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        self._message = cut(value, MAX_MESSAGE_CHARS)
        self.args = (self._message,)

    def as_json(self) -> dict[str, Any]:
        """The `generation_job_error` document, at most MAX_ERROR_JSON_CHARS as JSON."""
        doc: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.request_id:
            doc["requestId"] = cut(self.request_id, MAX_DETAIL_CHARS)
        if self.details:
            details = _bounded(self.details, depth=0)
            doc["details"] = details
            # Too big as a whole (many long findings): shorten the largest entry until it fits,
            # a list by half, anything else by dropping it.
            while len(json.dumps(doc, ensure_ascii=False)) > MAX_ERROR_JSON_CHARS:
                largest = max(details, key=lambda key: len(json.dumps(details[key])))
                value = details[largest]
                if isinstance(value, list) and len(value) > 1:
                    details[largest] = value[: len(value) // 2]
                else:
                    del details[largest]
                details["truncated"] = True
        return doc


def _bounded(value: Any, *, depth: int) -> Any:
    """A JSON value with every string, list and mapping cut to the detail bounds."""
    if isinstance(value, str):
        return cut(value, MAX_DETAIL_CHARS)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= 4:
        return None
    if isinstance(value, dict):
        items = list(value.items())[:MAX_DETAIL_ITEMS]
        return {cut(str(k), 100): _bounded(v, depth=depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_bounded(v, depth=depth + 1) for v in value[:MAX_DETAIL_ITEMS]]
    return cut(str(value), MAX_DETAIL_CHARS)


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


def findings_of(error: Any) -> list[str]:
    """The validator's findings an AI_INVALID_XML error carries, as lines to show."""
    details = getattr(error, "details", None)
    if details is None and isinstance(error, dict):
        details = error.get("details")
    found = details.get("findings") if isinstance(details, dict) else None
    return [str(item) for item in found] if isinstance(found, list) else []
