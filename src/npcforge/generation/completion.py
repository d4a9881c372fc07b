"""What one chat completion says, read without I/O: the model, generation id and usage it
reports, an error it carries inside an HTTP 200, and its first choice's answer (a refusal, a
content filter, a cut-off, no content, or the text).

Every id or name taken from an answer is scrubbed of the API key and bounded; `redact_error`
takes the key out of every string of an error once more before it leaves the provider.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from npcforge.errors import AiRefused, AiUpstream, JobError
from npcforge.generation.answer import content_text
from npcforge.generation.base import CallStats
from npcforge.redaction import redact, scrub

# Ids and names the upstream sends (request id, generation id, model) are short.
UPSTREAM_ID_LIMIT = 200


class Truncated(Exception):
    """finish_reason "length": the completion hit max_tokens."""


def clean(value: object, key: str) -> str | None:
    """An id or name the upstream sent, without the key and bounded; None if not a string."""
    if not isinstance(value, str) or not value.strip():
        return None
    return scrub(value, (key,), UPSTREAM_ID_LIMIT)


def record_usage(payload: Mapping[str, Any], stats: CallStats, key: str) -> None:
    """Model, generation id and what this request cost; tokens and cost add up across retries."""
    model = clean(payload.get("model"), key)
    if model:
        stats.model = model
    generation_id = clean(payload.get("id"), key)
    if generation_id:
        stats.generation_id = generation_id
    usage = mapping(payload.get("usage"))
    prompt_tokens = _int(usage.get("prompt_tokens"))
    if prompt_tokens is not None:
        stats.prompt_tokens = (stats.prompt_tokens or 0) + prompt_tokens
    completion_tokens = _int(usage.get("completion_tokens"))
    if completion_tokens is not None:
        stats.completion_tokens = (stats.completion_tokens or 0) + completion_tokens
    cost = usage.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost):
        stats.cost = (stats.cost or 0.0) + float(cost)


def first_choice(
    payload: Mapping[str, Any],
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """The completion's first choice (None without one), and the error it carries instead of
    an answer: at the top (`{"error": {...}}`, no choices) or in the choice itself."""
    choices = payload.get("choices")
    choice = mapping(choices[0]) if isinstance(choices, list) and choices else None
    top_error = payload.get("error")
    if isinstance(top_error, Mapping):
        return choice, top_error
    if choice is not None and (
        choice.get("finish_reason") == "error" or isinstance(choice.get("error"), Mapping)
    ):
        return choice, mapping(choice.get("error"))
    return choice, None


def answer_text(status: int, choice: Mapping[str, Any], request_id: str | None, key: str) -> str:
    """The text a choice answers with. AiRefused when a content filter stopped it or the model
    refused, Truncated at max_tokens, AiUpstream (retryable) when it carries no content."""
    finish_reason = clean(choice.get("finish_reason"), key)
    message = mapping(choice.get("message"))
    if finish_reason == "content_filter":
        raise AiRefused(
            "the model's output was stopped by a content filter",
            details={"finishReason": finish_reason},
            request_id=request_id,
        )
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        raise AiRefused(
            "the model refused to answer",
            details={"finishReason": finish_reason},
            request_id=request_id,
        )
    if finish_reason == "length":
        raise Truncated
    content = content_text(message.get("content"))
    if not content.strip():
        raise AiUpstream(
            "the model returned no content",
            details={"status": status, "finishReason": finish_reason},
            retryable=True,
            request_id=request_id,
        )
    return content


def redact_error(error: JobError, key: str) -> None:
    """Upstream text is scrubbed where it is read; this last pass covers every string of the
    error once more, so no path that composes a message can carry the key out."""
    error.message = redact(error.message, (key,))
    if error.details:
        error.details = _redacted(error.details, key)


def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _redacted(value: Any, key: str) -> Any:
    """A JSON value with `key` (and its fragments) redacted from every string in it."""
    if isinstance(value, str):
        return redact(value, (key,))
    if isinstance(value, dict):
        return {k: _redacted(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, key) for v in value]
    return value
