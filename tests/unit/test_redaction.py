"""Outside text made safe to keep: secrets and their fragments redacted first, then cut; error
documents bounded whatever an upstream sent."""

from __future__ import annotations

import json

import pytest
from storage3.exceptions import StorageApiError

from npcforge.errors import (
    MAX_DETAIL_CHARS,
    MAX_ERROR_JSON_CHARS,
    MAX_MESSAGE_CHARS,
    AiInvalidXml,
    AiUpstream,
)
from npcforge.generation.upstream_errors import classify_error
from npcforge.redaction import MIN_FRAGMENT, REDACTED, cut, redact, scrub
from npcforge.storage.supabase import classify_storage_failure

KEY = "sk-or-v1-REDTEAMSECRET-0123456789abcdef0123456789abcdef"


def fragments(secret: str) -> list[str]:
    return [secret[i : i + MIN_FRAGMENT] for i in range(len(secret) - MIN_FRAGMENT + 1)]


def assert_clean(text: str, secret: str = KEY) -> None:
    leaked = [f for f in fragments(secret) if f in text]
    assert not leaked, leaked


def test_every_occurrence_and_every_fragment_is_redacted() -> None:
    text = f"key {KEY}, again {KEY}; its head {KEY[:12]}, its middle {KEY[10:30]}, tail {KEY[-9:]}"
    redacted = redact(text, [KEY])
    assert_clean(redacted)
    assert redacted.count(REDACTED) == 5
    assert redacted.startswith("key [redacted], again [redacted]; its head [redacted]")


def test_fragments_shorter_than_the_minimum_are_ordinary_text() -> None:
    assert redact(f"starts with {KEY[:7]}", [KEY]) == f"starts with {KEY[:7]}"


def test_a_short_secret_is_redacted_whole() -> None:
    assert redact("pin 4711 and 4711", ["4711"]) == "pin [redacted] and [redacted]"


@pytest.mark.parametrize("cut_at", range(280, 300))
def test_redaction_comes_before_the_cut(cut_at: int) -> None:
    # The original bug: cut at 299 first, then redact the whole key only; its head survived.
    message = "x" * (cut_at - 10) + " " + KEY + " was refused"
    scrubbed = scrub(message, [KEY], 300)
    assert len(scrubbed) <= 300
    assert_clean(scrubbed)


def test_a_prefix_left_at_the_cut_counts_as_the_secret() -> None:
    # The upstream itself cut the key off: what is left is still a fragment of the secret.
    scrubbed = scrub("Invalid API key: " + KEY[:20], [KEY], 300)
    assert scrubbed == "Invalid API key: [redacted]"


def test_scrub_bounds_a_huge_text_quickly_and_still_finds_a_key_in_the_head() -> None:
    huge = "y" * 6_000_000
    assert scrub(huge, [KEY], 100) == "y" * 99 + "…"
    assert_clean(scrub(KEY * 100_000, [KEY], 300))


def test_cut_marks_the_cut() -> None:
    assert cut("abcdef", 4) == "abc…"
    assert cut("abc", 4) == "abc"


def test_classify_error_scrubs_every_upstream_field() -> None:
    body = {
        "error": {
            "code": 401,
            "message": f"Invalid API key: {KEY}",
            "metadata": {"provider_code": KEY, "error_type": KEY * 3, "limit_source": KEY},
            "availability": {"code": KEY},
        }
    }
    error = classify_error(401, body, secrets=[KEY])
    document = json.dumps(error.as_json())
    assert_clean(document)
    assert error.details is not None
    assert error.details["errorType"] == REDACTED
    assert error.details["providerCode"] == REDACTED


def test_the_error_document_is_bounded_as_a_whole() -> None:
    findings = [f"finding {n}: " + "z" * 2000 for n in range(500)]
    error = AiInvalidXml("m" * 10_000, details={"findings": findings, "deep": {"a": {"b": "c"}}})
    document = error.as_json()
    assert len(document["message"]) == MAX_MESSAGE_CHARS
    assert len(json.dumps(document, ensure_ascii=False)) <= MAX_ERROR_JSON_CHARS
    kept = document["details"]["findings"]
    assert kept and all(len(finding) <= MAX_DETAIL_CHARS for finding in kept)
    assert document["details"]["truncated"] is True


def test_a_message_set_later_is_bounded_too() -> None:
    error = AiUpstream("short")
    error.message = "q" * 100_000
    assert len(error.message) == MAX_MESSAGE_CHARS
    assert error.args == (error.message,)


def test_a_storage_answer_echoing_the_key_in_any_field_is_scrubbed() -> None:
    echoed = StorageApiError(f"key {KEY[:20]}… is not valid", KEY, KEY * 2)
    failure = classify_storage_failure(echoed, operation="upload", secrets=[KEY])
    assert_clean(json.dumps(failure.as_json()))
    assert failure.details is not None and failure.details["storageCode"] == REDACTED
