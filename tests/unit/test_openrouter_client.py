"""The OpenRouter client against the stand-in: wire format, response handling, retry policy."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest

from npcforge.config import ConfigError, Settings
from npcforge.errors import JobError
from npcforge.generation.answer import extract_xml
from npcforge.generation.base import CallStats, RepairRequest
from npcforge.generation.openrouter import SEED, OpenRouterProvider
from npcforge.generation.prompt import (
    RECORD_CLOSE,
    RECORD_OPEN,
    build_messages,
    max_tokens_for,
)
from npcforge.generation.upstream_errors import classify_error
from npcforge.generation.validator import validate_npc_xml
from npcforge.generation.xmlrules import render_npc_xml
from npcforge.npc import Keyword, Look, Messages, NpcRecord, ShopItem
from npcforge.worker.attempt import generate_valid_xml
from standins.openrouter import (
    OpenRouterStandin,
    Reply,
    completion_json,
    completion_reply,
    error_json,
    error_reply,
    openrouter_standin,
    xml_reply,
)

KEY = "sk-or-v1-0123456789abcdef-test-secret"

NPC = NpcRecord(
    id=uuid.UUID("6f1d2c3b-0000-4000-8000-00000000abcd"),
    name="Mirela the Herbalist",
    look=Look(type="player", type_id=136, head=78, body=52, legs=113, feet=95, addons=1),
    messages=Messages(
        greet="Welcome to my stall, |PLAYERNAME|. Herbs & potions!",
        farewell="Safe roads, |PLAYERNAME|.",
        decline="As you wish.",
        no_shop="My stall is closed right now.",
        on_close_shop='Come back when your pouch is "heavier".',
    ),
    shop_enabled=True,
    keywords_enabled=True,
    shop_items=(
        ShopItem("buy", "health potion", 7618, 45),
        ShopItem("buy", "vial of water", 2006, 8, subtype=1),
        ShopItem("sell", "empty potion flask", 7636, 5),
    ),
    keywords=(
        Keyword("I trade herbs from the northern hills.", ("job", "occupation")),
        Keyword("They say the old mine is open again.", ("rumours", "gossip")),
    ),
)
XML = render_npc_xml(NPC)


def make_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "OPENROUTER_API_KEY": KEY,
        "OPENROUTER_BASE_URL": base_url,
        "OPENROUTER_MODEL": "openai/gpt-4o-mini",
        "OPENROUTER_FALLBACK_MODELS": "",
        "APP_URL": "https://npcforge.example",
        "APP_TITLE": "npcforge tests",
        "OPENROUTER_TIMEOUT_SECONDS": 2.0,
        "OPENROUTER_MAX_RETRIES": 2,
        "OPENROUTER_MAX_RETRY_AFTER_SECONDS": 5.0,
        "OPENROUTER_MAX_CONNECTIONS": 8,
        "NPCFORGE_JOB_DEADLINE_SECONDS": 10.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class RecordingGate:
    def __init__(self) -> None:
        self.events: list[tuple[str, float | None]] = []

    async def acquire(self) -> None:
        self.events.append(("acquire", None))

    async def on_rate_limited(self, retry_after: float | None) -> None:
        self.events.append(("rate_limited", retry_after))

    async def on_success(self) -> None:
        self.events.append(("success", None))

    async def close(self) -> None:
        return None

    paused_for = 0.0


@asynccontextmanager
async def client(
    standin: OpenRouterStandin, gate: RecordingGate | None = None, **overrides: Any
) -> AsyncIterator[OpenRouterProvider]:
    provider = OpenRouterProvider(
        make_settings(standin.base_url, **overrides),
        gate=gate,
        rng=random.Random(1),
        backoff_base=0.01,
        backoff_cap=0.05,
    )
    try:
        yield provider
    finally:
        await provider.close()


async def failure(provider: OpenRouterProvider, repair: RepairRequest | None = None) -> JobError:
    with pytest.raises(JobError) as caught:
        await provider.generate(NPC, repair)
    return caught.value


# --- answers the client accepts ------------------------------------------------------------


async def test_json_wrapped_xml_from_the_default_responder() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert validate_npc_xml(generated.xml, NPC) == []
    assert len(s.requests) == 1


async def test_bare_xml() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(xml_reply(XML, wrapped=False))
        generated = await provider.generate(NPC)
    assert generated.xml == XML


async def test_fenced_xml_with_prose() -> None:
    content = f"Sure! Here is the NPC file:\n\n```xml\n{XML}```\n\nLet me know if you need more."
    async with openrouter_standin() as s, client(s) as provider:
        s.script(completion_reply(content))
        generated = await provider.generate(NPC)
    assert generated.xml == XML


async def test_content_as_a_list_of_parts() -> None:
    wrapped = json.dumps({"xml": XML})
    parts = [{"type": "text", "text": wrapped[:40]}, {"type": "text", "text": wrapped[40:]}]
    async with openrouter_standin() as s, client(s) as provider:
        s.script(completion_reply(parts))
        generated = await provider.generate(NPC)
    assert generated.xml == XML


def test_extract_xml_variants() -> None:
    assert extract_xml(json.dumps({"xml": XML})) == XML
    assert extract_xml("```json\n" + json.dumps({"xml": XML}) + "\n```") == XML
    assert extract_xml("prose " + XML.strip() + " more prose") == XML
    assert extract_xml("no document here") == "no document here"


# --- errors that arrive with HTTP 200 ------------------------------------------------------

TOP_LEVEL_ERROR = Reply(json=error_json(502, "Provider returned error", user_id="user_2abc"))
CHOICE_ERROR = Reply(
    json=completion_json(
        "<?xml version=",
        finish_reason="error",
        error={
            "code": 502,
            "message": "Provider disconnected mid-stream",
            "metadata": {"error_type": "provider_unavailable"},
        },
    )
)
EMPTY_CONTENT = completion_reply("")


@pytest.mark.parametrize(
    "reply", [TOP_LEVEL_ERROR, CHOICE_ERROR, EMPTY_CONTENT], ids=["top-level", "choice", "empty"]
)
async def test_errors_inside_http_200_are_retried(reply: Reply) -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(reply)
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert generated.stats.retries == 1
    assert len(s.requests) == 2


@pytest.mark.parametrize(
    "reply", [TOP_LEVEL_ERROR, CHOICE_ERROR, EMPTY_CONTENT], ids=["top-level", "choice", "empty"]
)
async def test_errors_inside_http_200_after_retries_are_upstream(reply: Reply) -> None:
    async with openrouter_standin() as s, client(s, OPENROUTER_MAX_RETRIES=1) as provider:
        s.script(reply, reply)
        error = await failure(provider)
    assert error.code == "AI_UPSTREAM"
    assert error.retryable
    assert len(s.requests) == 2


async def test_rate_limit_inside_http_200_is_limit_exceeded() -> None:
    body = completion_json(
        "",
        finish_reason="error",
        error={
            "code": 429,
            "message": "Rate limit exceeded",
            "metadata": {"error_type": "rate_limit_exceeded"},
        },
    )
    gate = RecordingGate()
    async with openrouter_standin() as s, client(s, gate, OPENROUTER_MAX_RETRIES=0) as provider:
        s.script(Reply(json=body))
        error = await failure(provider)
    assert error.code == "LIMIT_EXCEEDED"
    assert error.retryable
    assert ("rate_limited", None) in gate.events


async def test_non_retryable_error_inside_http_200_is_not_retried() -> None:
    body = error_json(
        400, "This endpoint's maximum context length is 8192 tokens",
        metadata={"error_type": "context_length_exceeded"},
    )  # fmt: skip
    async with openrouter_standin() as s, client(s) as provider:
        s.script(Reply(json=body))
        error = await failure(provider)
    assert error.code == "AI_UPSTREAM"
    assert not error.retryable
    assert len(s.requests) == 1


# --- response_format fallback --------------------------------------------------------------


async def test_response_format_rejected_then_fallback_without_it() -> None:
    rejected = error_reply(
        400,
        "Provider returned error",
        metadata={
            "raw": '{"error":{"message":"response_format json_schema is not supported"}}',
            "provider_name": "Together",
        },
    )
    async with openrouter_standin() as s, client(s) as provider:
        s.script(rejected)
        generated = await provider.generate(NPC)
        # Remembered: the next call does not try response_format again.
        await provider.generate(NPC)
    assert generated.xml == XML
    first, second, third = (r.json for r in s.requests)
    assert first["response_format"]["type"] == "json_schema"
    assert "response_format" not in second
    assert "response_format" not in third
    assert first["messages"][1] == second["messages"][1]
    assert '"xml"' in first["messages"][0]["content"]
    assert "XML document only" in second["messages"][0]["content"]


async def test_structured_outputs_message_also_triggers_the_fallback() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(400, "This model does not support structured outputs"))
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert "response_format" not in s.requests[1].json


# --- HTTP errors ---------------------------------------------------------------------------


async def test_401_is_ai_config_and_never_echoes_the_key() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(401, f"Invalid API key {KEY}"))
        error = await failure(provider)
    assert error.code == "AI_CONFIG"
    assert not error.retryable
    assert len(s.requests) == 1
    assert KEY not in str(error)
    assert KEY not in json.dumps(error.as_json())
    assert KEY not in repr(error.args)


async def test_wrong_key_against_the_standin_is_ai_config() -> None:
    async with openrouter_standin(api_key="sk-or-v1-other") as s, client(s) as provider:
        error = await failure(provider)
    assert error.code == "AI_CONFIG"


async def test_402_is_limit_exceeded_and_not_retried() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(
            error_reply(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
        )
        error = await failure(provider)
    assert error.code == "LIMIT_EXCEEDED"
    assert not error.retryable
    assert len(s.requests) == 1


async def test_403_moderation_is_refused_without_the_flagged_input() -> None:
    flagged = "a very secret part of the prompt"
    moderation = error_reply(
        403,
        "Your chosen model requires moderation and your input was flagged",
        metadata={
            "reasons": ["violence"],
            "flagged_input": flagged,
            "provider_name": "OpenAI",
            "model_slug": "openai/gpt-4o-mini",
        },
    )
    async with openrouter_standin() as s, client(s) as provider:
        s.script(moderation)
        error = await failure(provider)
    assert error.code == "AI_REFUSED"
    assert not error.retryable
    assert len(s.requests) == 1
    assert flagged not in json.dumps(error.as_json())


async def test_403_guardrail_is_refused_and_plain_403_is_config() -> None:
    guardrail = error_reply(403, "Request blocked: guardrail", metadata={"patterns": ["x"]})
    async with openrouter_standin() as s, client(s) as provider:
        s.script(guardrail, error_reply(403, "Key is not allowed to use this model"))
        assert (await failure(provider)).code == "AI_REFUSED"
        assert (await failure(provider)).code == "AI_CONFIG"


async def test_408_is_retried() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(408, "Operation timed out. Please try again later."))
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert len(s.requests) == 2


async def test_429_waits_for_retry_after_seconds() -> None:
    gate = RecordingGate()
    async with openrouter_standin() as s, client(s, gate) as provider:
        s.script(error_reply(429, "Rate limit exceeded", headers={"Retry-After": "0.4"}))
        generated = await provider.generate(NPC)
    assert generated.stats.retries == 1
    gap = s.requests[1].received_at - s.requests[0].received_at
    assert gap >= 0.38
    assert gate.events == [
        ("acquire", None),
        ("rate_limited", 0.4),
        ("acquire", None),
        ("success", None),
    ]


async def test_429_waits_for_retry_after_http_date() -> None:
    when = formatdate(time.time() + 1.6, usegmt=True)
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(429, "Rate limit exceeded", headers={"Retry-After": when}))
        await provider.generate(NPC)
    gap = s.requests[1].received_at - s.requests[0].received_at
    assert gap >= 0.5  # the date has whole seconds: between 0.6 and 1.6 s away when sent


async def test_retry_after_above_the_cap_is_handed_to_the_queue_at_once() -> None:
    started = time.monotonic()
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(429, "Rate limit exceeded", headers={"Retry-After": "120"}))
        error = await failure(provider)
    assert time.monotonic() - started < 1.0
    assert error.code == "LIMIT_EXCEEDED"
    assert error.retryable
    assert error.retry_after == 120.0
    assert len(s.requests) == 1


async def test_long_retry_after_on_503_is_also_handed_to_the_queue() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(503, "No provider available", headers={"Retry-After": "150"}))
        error = await failure(provider)
    assert error.code == "LIMIT_EXCEEDED"
    assert (error.retryable, error.retry_after) == (True, 150.0)
    assert len(s.requests) == 1


async def test_429_after_all_retries_is_limit_exceeded_and_retryable() -> None:
    limited = error_reply(
        429, "Rate limit exceeded", metadata={"error_type": "rate_limit_exceeded"}
    )
    async with openrouter_standin() as s, client(s, OPENROUTER_MAX_RETRIES=2) as provider:
        s.script(limited, limited, limited)
        error = await failure(provider)
    assert error.code == "LIMIT_EXCEEDED"
    assert error.retryable
    assert len(s.requests) == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504, 524, 529])
async def test_5xx_retried_then_ai_upstream(status: int) -> None:
    async with openrouter_standin() as s, client(s, OPENROUTER_MAX_RETRIES=2) as provider:
        s.script(*[error_reply(status, "Provider returned error")] * 3)
        error = await failure(provider)
    assert error.code == "AI_UPSTREAM"
    assert error.retryable
    assert error.details is not None and error.details["status"] == status
    assert len(s.requests) == 3


async def test_5xx_then_success() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(502, "Provider returned error"), error_reply(529, "Overloaded"))
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert generated.stats.retries == 2


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_client_errors_are_not_retried(status: int) -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(status, "nope"))
        error = await failure(provider)
    assert not error.retryable
    assert len(s.requests) == 1


async def test_missing_error_code_falls_back_to_http_status() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(401, "No auth credentials found", code=None))
        error = await failure(provider)
    assert error.code == "AI_CONFIG"
    assert error.details is not None and error.details["status"] == 401


async def test_availability_error_without_code_honours_retryable_and_retry_after() -> None:
    body = {
        "error": {
            "message": "Model temporarily unavailable",
            "error_type": "provider_overloaded",
            "http_status": 503,
            "availability": {
                "code": "temporarily_unavailable",
                "retryable": True,
                "retry_after": 0.3,
                "requested_models": ["openai/gpt-4o-mini"],
                "docs_url": "https://openrouter.ai/docs",
            },
        }
    }
    async with openrouter_standin() as s, client(s) as provider:
        s.script(Reply(status=503, json=body))
        await provider.generate(NPC)
    assert s.requests[1].received_at - s.requests[0].received_at >= 0.28


async def test_availability_not_retryable_is_not_retried() -> None:
    body = {
        "error": {
            "message": "Model openai/gpt-9 does not exist",
            "error_type": "not_found",
            "availability": {"code": "model_not_found", "retryable": False},
        }
    }
    async with openrouter_standin() as s, client(s) as provider:
        s.script(Reply(status=404, json=body))
        error = await failure(provider)
    assert error.code == "AI_CONFIG"
    assert len(s.requests) == 1


# --- transport ------------------------------------------------------------------------------


async def test_slower_than_the_timeout_is_ai_timeout() -> None:
    started = time.monotonic()
    async with (
        openrouter_standin() as s,
        client(s, OPENROUTER_TIMEOUT_SECONDS=0.2, OPENROUTER_MAX_RETRIES=0) as provider,
    ):
        s.script(Reply(json=completion_json(json.dumps({"xml": XML})), delay=1.5))
        error = await failure(provider)
    assert error.code == "AI_TIMEOUT"
    assert error.retryable
    assert time.monotonic() - started < 1.2


async def test_slow_once_then_retried() -> None:
    async with openrouter_standin() as s, client(s, OPENROUTER_TIMEOUT_SECONDS=0.2) as provider:
        s.script(Reply(json=completion_json(json.dumps({"xml": XML})), delay=1.0))
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert len(s.requests) == 2


async def test_stalled_body_is_ai_timeout() -> None:
    slow_body = Reply(json=completion_json(json.dumps({"xml": XML})), body_delay=1.0)
    async with (
        openrouter_standin() as s,
        client(s, OPENROUTER_TIMEOUT_SECONDS=0.2, OPENROUTER_MAX_RETRIES=0) as provider,
    ):
        s.script(slow_body)
        error = await failure(provider)
    assert error.code == "AI_TIMEOUT"


async def test_job_deadline_bounds_the_whole_call() -> None:
    """The job's one deadline is the worker's: it cuts the provider call short."""
    started = time.monotonic()
    slow = Reply(json=completion_json(json.dumps({"xml": XML})), delay=1.5)
    async with openrouter_standin() as s, client(s, OPENROUTER_TIMEOUT_SECONDS=5) as provider:
        s.script(slow)
        with pytest.raises(JobError) as caught:
            await generate_valid_xml(provider, NPC, CallStats(), deadline_seconds=0.3)
        error = caught.value
    assert error.code == "AI_TIMEOUT"
    assert "deadline" in error.message
    assert time.monotonic() - started < 1.2


async def test_a_call_cut_off_by_the_job_deadline_is_still_paid_for() -> None:
    account = CallStats()
    async with openrouter_standin() as s, client(s, OPENROUTER_TIMEOUT_SECONDS=5) as provider:
        s.script(
            error_reply(502, "Provider returned error"),
            Reply(json=completion_json(json.dumps({"xml": XML})), delay=2.0),
        )
        with pytest.raises(JobError) as caught:
            await generate_valid_xml(provider, NPC, account, deadline_seconds=0.6)
    assert caught.value.code == "AI_TIMEOUT"
    assert len(s.requests) == 2
    # The attempt row shows the retry and the model asked for, though no answer came.
    assert account.retries == 1
    assert account.model == "openai/gpt-4o-mini"


async def test_a_retry_wait_beyond_the_job_deadline_is_handed_to_the_queue() -> None:
    started = time.monotonic()
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(503, "Overloaded", headers={"Retry-After": "3"}))
        with pytest.raises(JobError) as caught:
            await provider.generate(NPC, deadline=time.monotonic() + 1.0)
    error = caught.value
    assert error.code == "AI_UPSTREAM" and error.retryable
    assert error.retry_after == 3.0  # the worker requeues the job for then
    assert len(s.requests) == 1
    assert time.monotonic() - started < 2.5


async def test_connection_reset_mid_body_is_retried() -> None:
    dropped = Reply(json=completion_json(json.dumps({"xml": XML})), drop_mid_body=True)
    async with openrouter_standin() as s, client(s) as provider:
        s.script(dropped)
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert len(s.requests) == 2


async def test_connection_reset_every_time_is_retryable_upstream() -> None:
    dropped = Reply(json=completion_json(json.dumps({"xml": XML})), drop_mid_body=True)
    async with openrouter_standin() as s, client(s, OPENROUTER_MAX_RETRIES=1) as provider:
        s.script(dropped, dropped)
        error = await failure(provider)
    assert error.code == "AI_UPSTREAM"
    assert error.retryable


async def test_unreachable_server_is_retryable_upstream() -> None:
    async with openrouter_standin() as s:
        base_url = s.base_url
    provider = OpenRouterProvider(
        make_settings(base_url, OPENROUTER_MAX_RETRIES=1), backoff_base=0.01, backoff_cap=0.02
    )
    try:
        error = await failure(provider)
    finally:
        await provider.close()
    assert error.code == "AI_UPSTREAM"
    assert error.retryable


async def test_non_json_body_is_retried() -> None:
    html = Reply(status=200, body="<html><body>upstream hiccup</body></html>")
    async with openrouter_standin() as s, client(s) as provider:
        s.script(html)
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    assert len(s.requests) == 2


async def test_non_json_body_every_time_is_retryable_upstream() -> None:
    gateway = Reply(status=502, body="<html>Bad gateway</html>")
    async with openrouter_standin() as s, client(s, OPENROUTER_MAX_RETRIES=1) as provider:
        s.script(Reply(status=200, body="not json"), gateway)
        error = await failure(provider)
    assert error.code == "AI_UPSTREAM"
    assert error.retryable


# --- finish reasons -------------------------------------------------------------------------


async def test_length_is_retried_once_with_a_larger_budget() -> None:
    truncated = completion_reply('{"xml": "<?xml version=\\"1.0\\"', finish_reason="length")
    async with openrouter_standin() as s, client(s) as provider:
        s.script(truncated)
        generated = await provider.generate(NPC)
    assert generated.xml == XML
    first, second = (r.json["max_tokens"] for r in s.requests)
    assert first == max_tokens_for(NPC)
    assert second == 2 * first


async def test_length_twice_is_invalid_xml() -> None:
    truncated = completion_reply('{"xml": "<?xml', finish_reason="length")
    async with openrouter_standin() as s, client(s) as provider:
        s.script(truncated, truncated)
        error = await failure(provider)
    assert error.code == "AI_INVALID_XML"
    assert not error.retryable
    assert len(s.requests) == 2


async def test_content_filter_is_refused() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(completion_reply("", finish_reason="content_filter"))
        error = await failure(provider)
    assert error.code == "AI_REFUSED"
    assert len(s.requests) == 1


async def test_model_refusal_is_refused() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(completion_reply(None, refusal="I can't help with that."))
        error = await failure(provider)
    assert error.code == "AI_REFUSED"


# --- the request on the wire ---------------------------------------------------------------


async def test_request_headers() -> None:
    async with openrouter_standin(api_key=KEY) as s, client(s) as provider:
        await provider.generate(NPC)
    headers = s.requests[0].headers
    assert s.requests[0].path == "/api/v1/chat/completions"
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["HTTP-Referer"] == "https://npcforge.example"
    assert headers["X-Title"] == "npcforge tests"
    assert headers["Content-Type"].startswith("application/json")


async def test_optional_headers_are_left_out_when_unset() -> None:
    async with openrouter_standin() as s, client(s, APP_URL="", APP_TITLE="") as provider:
        await provider.generate(NPC)
    headers = s.requests[0].headers
    assert "HTTP-Referer" not in headers
    assert "X-Title" not in headers


async def test_request_body() -> None:
    fallbacks = "anthropic/claude-3.5-haiku,google/gemini-2.0-flash"
    async with (
        openrouter_standin() as s,
        client(s, OPENROUTER_FALLBACK_MODELS=fallbacks) as provider,
    ):
        await provider.generate(NPC)
    body = s.requests[0].json
    assert body["model"] == "openai/gpt-4o-mini"
    assert body["models"] == ["anthropic/claude-3.5-haiku", "google/gemini-2.0-flash"]
    assert body["temperature"] == 0
    assert body["seed"] == SEED
    assert body["max_tokens"] == max_tokens_for(NPC)
    schema = body["response_format"]
    assert schema["type"] == "json_schema"
    assert schema["json_schema"]["strict"] is True
    assert schema["json_schema"]["schema"]["properties"] == {"xml": {"type": "string"}}
    assert schema["json_schema"]["schema"]["required"] == ["xml"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "stream" not in body


async def test_no_models_field_without_fallbacks() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        await provider.generate(NPC)
    assert "models" not in s.requests[0].json


async def test_call_stats_are_filled() -> None:
    served = completion_reply(
        json.dumps({"xml": XML}),
        model="anthropic/claude-3.5-haiku",
        generation_id="gen-1700000000-abcdef",
        prompt_tokens=900,
        completion_tokens=400,
        cost=0.0021,
        headers={"x-request-id": "req-42"},
    )
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(502, "Provider returned error"), served)
        generated = await provider.generate(NPC)
    stats = generated.stats
    assert stats.model == "anthropic/claude-3.5-haiku"
    assert stats.generation_id == "gen-1700000000-abcdef"
    assert stats.request_id == "req-42"
    assert stats.prompt_tokens == 900
    assert stats.completion_tokens == 400
    assert stats.cost == pytest.approx(0.0021)
    assert stats.retries == 1
    assert stats.upstream_ms > 0


async def test_generation_id_from_header_when_the_body_has_none() -> None:
    body = completion_json(json.dumps({"xml": XML}))
    del body["id"]
    async with openrouter_standin() as s, client(s) as provider:
        s.script(Reply(json=body, headers={"X-Generation-Id": "gen-from-header"}))
        generated = await provider.generate(NPC)
    assert generated.stats.generation_id == "gen-from-header"


async def test_request_id_is_put_on_errors() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(402, "Insufficient credits", headers={"x-request-id": "req-7"}))
        error = await failure(provider)
    assert error.request_id == "req-7"
    assert error.as_json()["requestId"] == "req-7"


async def test_repair_request_carries_previous_xml_and_findings() -> None:
    previous = XML.replace("45", "46")
    findings = ("shop_buyable item 1 (health potion): price 46, expected 45", "npc@name is wrong")
    async with openrouter_standin() as s, client(s) as provider:
        generated = await provider.generate(NPC, RepairRequest(previous, findings))
    assert generated.xml == XML
    messages = s.requests[0].json["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == previous
    for finding in findings:
        assert finding in messages[3]["content"]


async def test_nothing_secret_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="npcforge.openrouter")
    async with openrouter_standin() as s, client(s) as provider:
        s.script(error_reply(503, f"down {KEY}"), error_reply(401, f"bad key {KEY}"))
        await failure(provider)
        await provider.generate(NPC)
    assert caplog.records
    logged = "\n".join(
        f"{record.getMessage()} {json.dumps(record.__dict__, default=str)}"
        for record in caplog.records
    )
    assert KEY not in logged
    assert "Mirela" not in logged  # the prompt and the XML both carry the name
    assert "<npc" not in logged


async def test_missing_api_key_is_a_config_error() -> None:
    settings = make_settings("http://127.0.0.1:9", OPENROUTER_API_KEY=None)
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY"):
        OpenRouterProvider(settings)


# --- sessions and connections ----------------------------------------------------------------


async def test_concurrent_calls_share_one_session_within_the_connection_limit() -> None:
    async def slow(request: Any) -> Reply:
        await asyncio.sleep(0.05)
        return xml_reply(XML)

    async with openrouter_standin() as s, client(s, OPENROUTER_MAX_CONNECTIONS=2) as provider:
        s.responder = slow
        results = await asyncio.gather(*(provider.generate(NPC) for _ in range(10)))
    assert all(r.xml == XML for r in results)
    assert len(s.requests) == 10
    assert s.max_in_flight == 2
    # A session per call would have opened up to ten connections.
    assert len(s.peers) <= 2


async def test_a_given_session_is_used_and_left_open() -> None:
    async with openrouter_standin() as s, aiohttp.ClientSession() as session:
        provider = OpenRouterProvider(make_settings(s.base_url), session=session)
        await provider.generate(NPC)
        await provider.close()
        assert not session.closed
        await provider.generate(NPC)
    assert len(s.requests) == 2


async def test_close_then_generate_opens_a_new_session() -> None:
    async with openrouter_standin() as s, client(s) as provider:
        await provider.generate(NPC)
        await provider.close()
        await provider.generate(NPC)
    assert len(s.requests) == 2


# --- pure pieces: prompt and retry policy -------------------------------------------------


def test_user_prompt_carries_the_whole_record() -> None:
    system, user = build_messages(NPC)
    text = user["content"]
    record = json.loads(text[text.index(RECORD_OPEN) + len(RECORD_OPEN) : text.index(RECORD_CLOSE)])
    assert record["name"] == NPC.name
    assert record["shop"]["buy"][1] == {
        "name": "vial of water", "item_id": 2006, "price": 8, "subtype": 1,
        "entry": "vial of water,2006,8,1",
    }  # fmt: skip
    assert record["shop"]["sell"][0]["item_id"] == 7636
    assert [e["phrases"] for e in record["keywords"]["entries"]] == [
        ["job", "occupation"],
        ["rumours", "gossip"],
    ]
    assert record["messages"]["message_greet"] == NPC.messages.greet
    assert record["messages"]["message_oncloseshop"] == NPC.messages.on_close_shop
    assert record["look"]["type_id"] == 136
    assert "keyword_reply1..keyword_reply4" in text
    for rule in ("shop_buyable", "keyword_reply", "|PLAYERNAME|", "DOCTYPE", "&amp;"):
        assert rule in system["content"]


def test_max_tokens_grows_with_the_record_and_is_capped() -> None:
    small = NpcRecord(
        id=NPC.id, name="Bob", look=NPC.look, messages=NPC.messages, shop_enabled=False
    )
    many = tuple(Keyword(f"reply number {i} " * 10, (f"p{i}a", f"p{i}b")) for i in range(200))
    huge = NpcRecord(
        id=NPC.id, name="Bob", look=NPC.look, messages=NPC.messages,
        keywords_enabled=True, keywords=many,
    )  # fmt: skip
    assert 1024 <= max_tokens_for(small) < max_tokens_for(NPC) < max_tokens_for(huge)
    assert max_tokens_for(huge) == 16_384


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (401, error_json(401, "Missing Authentication header"), "AI_CONFIG", False),
        (402, error_json(402, "Insufficient credits"), "LIMIT_EXCEEDED", False),
        (429, error_json(429, "Rate limit exceeded"), "LIMIT_EXCEEDED", True),
        (408, error_json(408, "Operation timed out"), "AI_TIMEOUT", True),
        (500, error_json(500, "Internal Server Error"), "AI_UPSTREAM", True),
        (524, None, "AI_UPSTREAM", True),
        (400, error_json(400, "bad", metadata={"error_type": "refusal"}), "AI_REFUSED", False),
        (404, error_json(404, "No endpoints found"), "AI_CONFIG", False),
        (
            503,
            {"error": {"message": "x", "availability": {"retryable": False}}},
            "AI_UPSTREAM",
            False,
        ),
    ],
)
def test_classify_error(status: int, body: Any, code: str, retryable: bool) -> None:
    error = classify_error(status, body)
    assert (error.code, error.retryable) == (code, retryable)


def test_402_in_flight_budget_with_retry_after_is_retryable() -> None:
    body = error_json(
        402, "Too many in flight", metadata={"limit_source": "openrouter_in_flight_budget"}
    )
    assert classify_error(402, body, retry_after=2.0).retryable
    assert not classify_error(402, body).retryable
