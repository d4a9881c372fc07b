"""Upstream error classification: what an OpenRouter failure means, and whether to try again.

Pure: no I/O. Every upstream failure is turned into one JobError subclass whose `retryable`
and `retry_after` tell the caller whether (and when) another request may succeed. The table
follows reference/protocols.md §A.3: retry transport errors, timeouts, 408, 429 and 5xx
(including errors that arrive inside an HTTP 200), never 400/401/402/403/404/413/422.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from npcforge.errors import (
    AiConfig,
    AiRefused,
    AiTimeout,
    AiUpstream,
    JobError,
    LimitExceeded,
)
from npcforge.redaction import scrub

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504, 524, 529})
NEVER_RETRIED_STATUSES: frozenset[int] = frozenset({400, 401, 402, 403, 404, 413, 422})
# 5xx that mean "this server will never do that", not "try again later".
_PERMANENT_5XX: frozenset[int] = frozenset({501, 505})

# `error.metadata.error_type` values that say another request may succeed.
RETRYABLE_ERROR_TYPES: frozenset[str] = frozenset(
    {
        "rate_limit_exceeded",
        "provider_overloaded",
        "provider_unavailable",
        "timeout",
        "server",
        "unmapped",
    }
)

# Used when an error object has neither `code` nor `http_status` (protocols.md §A.3 table).
_STATUS_BY_ERROR_TYPE: Mapping[str, int] = {
    "context_length_exceeded": 400,
    "max_tokens_exceeded": 400,
    "token_limit_exceeded": 400,
    "string_too_long": 400,
    "invalid_request": 400,
    "invalid_prompt": 400,
    "content_policy_violation": 400,
    "refusal": 400,
    "authentication": 401,
    "payment_required": 402,
    "permission_denied": 403,
    "not_found": 404,
    "precondition_failed": 412,
    "payload_too_large": 413,
    "unprocessable": 422,
    "rate_limit_exceeded": 429,
    "server": 500,
    "unmapped": 500,
    "provider_unavailable": 502,
    "provider_overloaded": 503,
    "timeout": 504,
}

_STATUS_BY_AVAILABILITY_CODE: Mapping[str, int] = {
    "model_not_found": 404,
    "wrong_endpoint": 404,
    "no_endpoints": 404,
    "model_deprecated": 404,
    "region_restricted": 403,
    "privacy_restricted": 404,
    "constraint_filtered": 404,
    "free_variant_ended": 404,
    "model_unavailable_upstream": 503,
    "capacity_exhausted": 429,
    "temporarily_unavailable": 503,
}

_REFUSAL_ERROR_TYPES: frozenset[str] = frozenset(
    {"content_policy_violation", "refusal", "content_filter", "moderation", "guardrail"}
)
_REFUSAL_WORDS: tuple[str, ...] = (
    "moderation",
    "flagged",
    "guardrail",
    "blocked",
    "refus",
    "content filter",
    "content_filter",
    "content policy",
    "safety",
)
_REFUSAL_METADATA_KEYS: frozenset[str] = frozenset({"reasons", "flagged_input", "patterns"})
_RESPONSE_FORMAT_WORDS: tuple[str, ...] = (
    "response_format",
    "response format",
    "json_schema",
    "json schema",
    "structured output",
    "structured_output",
    "invalid schema",
)
_MODEL_WORDS: tuple[str, ...] = (
    "not a valid model",
    "model not found",
    "model_not_found",
    "no endpoints",
)
_UPSTREAM_MESSAGE_LIMIT = 300
# Upstream-chosen names (error types, provider codes, availability codes) are short words.
_UPSTREAM_NAME_LIMIT = 100


class ResponseFormatRejected(AiUpstream):
    """The model refused `response_format` (HTTP 400): ask again without it."""

    default_retryable = False


# --- classification --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamErrorView:
    """The parts of an OpenRouter error object this module reasons about (never its metadata)."""

    status: int
    message: str
    error_type: str | None
    availability_code: str | None
    availability_retryable: bool | None
    availability_retry_after: float | None
    limit_source: str | None
    provider_code: str | None
    refusal_hint: bool
    raw_hint: str


def error_object(payload: object) -> Mapping[str, Any] | None:
    """The `error` object of a response body (`{"error": {...}}`), if there is one."""
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping):
            return error
    return None


def _as_status(value: object) -> int | None:
    """An error status (4xx/5xx) from an int or a numeric string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 400 <= value <= 599 else None
    if isinstance(value, str) and value.strip().isdigit():
        return _as_status(int(value.strip()))
    return None


def _seconds(value: object) -> float | None:
    """A non-negative number of seconds from a JSON number; None for anything else or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float: "forever"
        return math.inf
    return None if math.isnan(seconds) else max(0.0, seconds)


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def view_error(
    error: Mapping[str, Any] | None, http_status: int, secrets: Iterable[str] = ()
) -> UpstreamErrorView:
    """Read an error object; a missing `error.code` falls back to the HTTP status, then the type.

    Every string kept from it is scrubbed of `secrets` (fragments included) and bounded.
    """
    secrets = tuple(secrets)

    def name(value: object) -> str | None:
        text = _text(value)
        return scrub(text, secrets, _UPSTREAM_NAME_LIMIT) if text is not None else None

    error = error or {}
    metadata = error.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    availability = error.get("availability")
    availability = availability if isinstance(availability, Mapping) else {}

    code_value = error.get("code")
    error_type = name(metadata.get("error_type")) or name(error.get("error_type"))
    if error_type is None and isinstance(code_value, str) and _as_status(code_value) is None:
        error_type = name(code_value)  # some servers put a string code here
    availability_code = name(availability.get("code"))

    status = _as_status(code_value) or _as_status(error.get("http_status"))
    if status is None and not 200 <= http_status < 300:
        status = http_status
    if status is None and error_type is not None:
        status = _STATUS_BY_ERROR_TYPE.get(error_type)
    if status is None and availability_code is not None:
        status = _STATUS_BY_AVAILABILITY_CODE.get(availability_code)
    if status is None:
        # An error in a 200 that says nothing about itself: treat it as a failed provider.
        status = 502

    retryable_flag = availability.get("retryable")
    retry_after = _seconds(availability.get("retry_after"))
    raw = metadata.get("raw")
    raw_hint = raw if isinstance(raw, str) else ""
    provider_code = metadata.get("provider_code")
    message = _text(error.get("message")) or ""
    return UpstreamErrorView(
        status=status,
        message=scrub(message, secrets, _UPSTREAM_MESSAGE_LIMIT),
        error_type=error_type,
        availability_code=availability_code,
        availability_retryable=retryable_flag if isinstance(retryable_flag, bool) else None,
        availability_retry_after=retry_after,
        limit_source=name(metadata.get("limit_source")),
        provider_code=name(str(provider_code)) if provider_code is not None else None,
        refusal_hint=bool(_REFUSAL_METADATA_KEYS & set(metadata)),
        raw_hint=raw_hint.lower()[:2000],
    )


def mentions_response_format(view: UpstreamErrorView) -> bool:
    haystack = f"{view.message.lower()} {view.raw_hint}"
    return any(word in haystack for word in _RESPONSE_FORMAT_WORDS)


def _is_refusal(view: UpstreamErrorView) -> bool:
    if view.error_type in _REFUSAL_ERROR_TYPES:
        return True
    if view.status != 403:
        return False
    message = view.message.lower()
    return view.refusal_hint or any(word in message for word in _REFUSAL_WORDS)


def _is_model_problem(view: UpstreamErrorView) -> bool:
    if view.availability_code is not None and view.availability_code != "capacity_exhausted":
        return view.availability_retryable is not True
    message = view.message.lower()
    return view.error_type == "not_found" or any(word in message for word in _MODEL_WORDS)


def _default_retryable(view: UpstreamErrorView, retry_after: float | None) -> bool:
    if view.availability_retryable is not None:
        return view.availability_retryable
    status = view.status
    if status == 402:
        # Only OpenRouter's in-flight budget 402 comes with a Retry-After worth waiting for.
        return retry_after is not None and view.limit_source == "openrouter_in_flight_budget"
    if status in NEVER_RETRIED_STATUSES:
        return False
    if status in RETRYABLE_STATUSES:
        return True
    if status >= 500:
        return status not in _PERMANENT_5XX
    return view.error_type in RETRYABLE_ERROR_TYPES


def classify_error(
    http_status: int,
    payload: object,
    *,
    retry_after: float | None = None,
    request_id: str | None = None,
    embedded: Mapping[str, Any] | None = None,
    secrets: Iterable[str] = (),
) -> JobError:
    """Turn an error response into a JobError.

    `payload` is the parsed body (or None when it was not JSON). For an error that arrived in an
    HTTP 200 (a top-level `error` without `choices`, or `choices[i].error`), pass the error object
    as `embedded`. A 400 that complains about `response_format` becomes `ResponseFormatRejected`.
    Nothing of `secrets` (the key an upstream may echo) survives into the error, not even in part.
    """
    error = embedded if embedded is not None else error_object(payload)
    view = view_error(error, http_status, secrets)
    if retry_after is None:
        retry_after = view.availability_retry_after
    retryable = _default_retryable(view, retry_after)
    status = view.status
    if embedded is None and not 200 <= http_status < 300:
        where = f"HTTP {http_status}"
    else:
        where = f"error {status} inside an HTTP {http_status} response"
    upstream = f": {view.message}" if view.message else ""
    details: dict[str, Any] = {"status": status, "httpStatus": http_status}
    if view.error_type:
        details["errorType"] = view.error_type
    if view.availability_code:
        details["availability"] = view.availability_code
    if view.provider_code:
        details["providerCode"] = view.provider_code
    if retry_after is not None:
        details["retryAfter"] = retry_after

    cls: type[JobError]
    if status in (400, 422) and mentions_response_format(view):
        cls, summary = ResponseFormatRejected, "the model rejected response_format"
    elif _is_refusal(view):
        cls, summary = AiRefused, "the request was refused by moderation or a guardrail"
    elif status == 401:
        cls, summary = AiConfig, "OpenRouter rejected the API key"
    elif status == 403:
        cls, summary = AiConfig, "OpenRouter denied permission"
    elif status == 402:
        cls, summary = LimitExceeded, "OpenRouter reports insufficient credits"
    elif status == 429:
        cls, summary = LimitExceeded, "rate limited by OpenRouter or the provider"
    elif status == 408:
        cls, summary = AiTimeout, "the upstream request timed out"
    elif status == 404 or (status == 400 and _is_model_problem(view)):
        cls, summary = AiConfig, "the model or endpoint is not available"
    elif status >= 500:
        cls, summary = AiUpstream, "the model provider failed"
    else:
        cls, summary = AiUpstream, "the upstream rejected the request"
    return cls(
        f"{summary} ({where}){upstream}",
        details=details,
        retryable=retryable,
        retry_after=retry_after,
        request_id=request_id,
    )


def classify_transport_error(exc: BaseException, *, request_id: str | None = None) -> JobError:
    """A request that never produced a complete response: always worth another try."""
    kind = type(exc).__name__
    if isinstance(exc, TimeoutError):
        return AiTimeout(
            f"the upstream request timed out ({kind})",
            details={"transport": kind},
            retryable=True,
            request_id=request_id,
        )
    return AiUpstream(
        f"transport error talking to the upstream ({kind})",
        details={"transport": kind},
        retryable=True,
        request_id=request_id,
    )
