"""The openrouter provider end to end: SQL enqueue → worker → OpenRouter stand-in → validator →
storage → job status and attempt rows, on real PostgreSQL.

Each case scripts the stand-in's answers, runs one job through an in-process worker and checks
what a user would see: the job's final status and error code, the attempt rows, the requests the
upstream received, and that storage holds a file only for a success.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from conftest import make_npc
from npcforge.config import Settings
from npcforge.generation.openrouter import OpenRouterProvider
from npcforge.generation.xmlrules import render_npc_xml
from standins.openrouter import (
    RecordedRequest,
    Reply,
    completion_json,
    completion_reply,
    error_json,
    error_reply,
    openrouter_standin,
    xml_reply,
)
from workerkit import running_worker, wait_status

KEY = "sk-or-v1-e2e-0123456789abcdef-secret"
MODEL = "openai/gpt-4o-mini"
TOKENS = (812, 431)  # the stand-in's usage per completion
REQUEST_ID = "req-7d1f0c2a"


def settings_for(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "OPENROUTER_API_KEY": KEY,
        "OPENROUTER_BASE_URL": base_url,
        "OPENROUTER_MODEL": MODEL,
        "OPENROUTER_TIMEOUT_SECONDS": 2.0,
        "OPENROUTER_MAX_RETRIES": 2,
        "OPENROUTER_MAX_RETRY_AFTER_SECONDS": 5.0,
        "NPCFORGE_JOB_DEADLINE_SECONDS": 20.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Run:
    status: str
    error: dict[str, Any] | None
    attempts: list[Any]
    calls: list[RecordedRequest]
    stored: bytes | None
    npc_name: str

    @property
    def code(self) -> str | None:
        return self.error["code"] if self.error else None

    @property
    def last(self) -> Any:
        return self.attempts[-1]


Responder = Callable[[RecordedRequest], Reply]


async def run_job(
    conn: Any,
    db_dsn: str,
    storage_dir: Path,
    *,
    script: Sequence[Reply] = (),
    responder: Responder | None = None,
    max_attempts: int = 1,
    timeout: float = 15.0,
    **overrides: Any,
) -> Run:
    npc_id = await make_npc(conn)
    name = await conn.fetchval("SELECT name FROM npcs WHERE id = $1", npc_id)
    async with openrouter_standin() as standin:
        standin.script(*script)
        standin.responder = responder
        provider = OpenRouterProvider(
            settings_for(standin.base_url, **overrides),
            rng=random.Random(5),
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        try:
            async with running_worker(
                db_dsn, storage_dir, provider=provider, max_attempts=max_attempts
            ):
                await conn.execute(
                    "UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1", npc_id
                )
                row = await wait_status(conn, npc_id, "succeeded", "failed", timeout=timeout)
        finally:
            await provider.close()
    attempts = await conn.fetch(
        "SELECT * FROM npc_generation_attempts WHERE npc_id = $1 ORDER BY attempt, id", npc_id
    )
    path = storage_dir / "npc-xml-files" / f"{npc_id}.xml"
    run = Run(
        status=row["status"],
        error=row["error"],
        attempts=list(attempts),
        calls=standin.completions(),
        stored=path.read_bytes() if path.exists() else None,
        npc_name=name,
    )
    # Storage holds a file exactly when the job succeeded, and never an invalid one.
    assert (run.stored is not None) == (run.status == "succeeded")
    assert KEY not in json.dumps(run.error or {})
    return run


def correct_xml(request: RecordedRequest) -> str:
    return render_npc_xml(request.record())


def assert_succeeded(run: Run, *, calls: int, retries: int = 0) -> None:
    assert run.status == "succeeded", run.error
    assert run.stored is not None
    assert f'<npc name="{run.npc_name}"'.encode() in run.stored
    assert len(run.calls) == calls
    assert [a["outcome"] for a in run.attempts] == ["succeeded"]
    assert run.last["model"] == MODEL
    assert run.last["generation_id"].startswith("gen-")
    assert run.last["retries"] == retries
    assert run.last["error_code"] is None


def assert_failed(run: Run, code: str, *, calls: int) -> None:
    assert run.status == "failed"
    assert run.code == code, run.error
    assert len(run.calls) == calls
    assert [a["outcome"] for a in run.attempts] == ["failed"]
    assert run.last["error_code"] == code
    assert run.last["model"] == MODEL  # the model asked for, even when none answered
    assert run.last["retries"] == calls - 1


# --- answers that carry the XML ----------------------------------------------------------------


async def test_json_wrapped_xml(conn, db_dsn, storage_dir):
    run = await run_job(
        conn,
        db_dsn,
        storage_dir,
        responder=lambda r: xml_reply(correct_xml(r), headers={"X-Request-Id": REQUEST_ID}),
    )
    assert_succeeded(run, calls=1)
    assert run.calls[0].json["response_format"]["type"] == "json_schema"
    assert run.calls[0].headers["Authorization"] == f"Bearer {KEY}"
    assert (run.last["prompt_tokens"], run.last["completion_tokens"]) == TOKENS
    assert float(run.last["cost"]) == pytest.approx(0.00037)
    assert run.last["request_id"] == REQUEST_ID


async def test_bare_xml(conn, db_dsn, storage_dir):
    run = await run_job(
        conn, db_dsn, storage_dir, responder=lambda r: xml_reply(correct_xml(r), wrapped=False)
    )
    assert_succeeded(run, calls=1)


async def test_fenced_xml_with_prose(conn, db_dsn, storage_dir):
    def fenced(request: RecordedRequest) -> Reply:
        text = f"Here is the NPC file you asked for:\n\n```xml\n{correct_xml(request)}```\n\nEnjoy!"
        return completion_reply(text)

    run = await run_job(conn, db_dsn, storage_dir, responder=fenced)
    assert_succeeded(run, calls=1)
    assert b"Enjoy" not in (run.stored or b"")


async def test_content_as_a_list_of_parts(conn, db_dsn, storage_dir):
    def parts(request: RecordedRequest) -> Reply:
        xml = correct_xml(request)
        half = len(xml) // 2
        return completion_reply(
            [{"type": "text", "text": xml[:half]}, {"type": "text", "text": xml[half:]}]
        )

    run = await run_job(conn, db_dsn, storage_dir, responder=parts)
    assert_succeeded(run, calls=1)


# --- errors inside an HTTP 200 -------------------------------------------------------------------


async def test_200_with_top_level_error_and_no_choices(conn, db_dsn, storage_dir):
    body = error_json(502, "Provider returned error", user_id="user_2x")
    run = await run_job(conn, db_dsn, storage_dir, script=[Reply(json=body)] * 3)
    assert_failed(run, "AI_UPSTREAM", calls=3)
    assert "inside an HTTP 200" in run.error["message"]


async def test_200_with_error_in_the_choice_records_tokens(conn, db_dsn, storage_dir):
    body = completion_json(
        "partial output...",
        finish_reason="error",
        generation_id="gen-choice-error",
        error={"code": 502, "message": "Provider disconnected mid-stream",
               "metadata": {"error_type": "provider_unavailable"}},
    )  # fmt: skip
    run = await run_job(conn, db_dsn, storage_dir, script=[Reply(json=body)] * 3)
    assert_failed(run, "AI_UPSTREAM", calls=3)
    # The failed calls were billed: the attempt row says what they cost.
    assert run.last["generation_id"] == "gen-choice-error"
    assert run.last["prompt_tokens"] == 3 * TOKENS[0]
    assert run.last["completion_tokens"] == 3 * TOKENS[1]


async def test_200_with_empty_content_is_retried(conn, db_dsn, storage_dir):
    run = await run_job(conn, db_dsn, storage_dir, script=[completion_reply("")])
    assert_succeeded(run, calls=2, retries=1)
    assert run.last["prompt_tokens"] == 2 * TOKENS[0]


async def test_200_error_without_a_code_falls_back_to_its_type(conn, db_dsn, storage_dir):
    body = error_json(None, "Provider overloaded", metadata={"error_type": "provider_overloaded"})
    run = await run_job(conn, db_dsn, storage_dir, script=[Reply(json=body)])
    assert_succeeded(run, calls=2, retries=1)


async def test_content_filter_is_refused(conn, db_dsn, storage_dir):
    run = await run_job(
        conn, db_dsn, storage_dir, script=[completion_reply("", finish_reason="content_filter")]
    )
    assert_failed(run, "AI_REFUSED", calls=1)


# --- response_format -----------------------------------------------------------------------------


async def test_response_format_rejected_then_plain_request(conn, db_dsn, storage_dir):
    rejected = error_reply(
        400, "Provider returned error: response_format json_schema is not supported by this model"
    )
    run = await run_job(conn, db_dsn, storage_dir, script=[rejected])
    assert_succeeded(run, calls=2, retries=1)
    assert "response_format" in run.calls[0].json
    assert "response_format" not in run.calls[1].json


# --- HTTP errors ---------------------------------------------------------------------------------


async def test_401_is_a_configuration_error(conn, db_dsn, storage_dir):
    reply = error_reply(401, "User not found.", headers={"X-Request-Id": REQUEST_ID})
    run = await run_job(conn, db_dsn, storage_dir, script=[reply])
    assert_failed(run, "AI_CONFIG", calls=1)
    assert run.error["requestId"] == REQUEST_ID
    assert run.last["request_id"] == REQUEST_ID


async def test_402_is_not_retried(conn, db_dsn, storage_dir):
    reply = error_reply(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
    run = await run_job(conn, db_dsn, storage_dir, script=[reply], max_attempts=3)
    assert_failed(run, "LIMIT_EXCEEDED", calls=1)


async def test_403_moderation_is_refused(conn, db_dsn, storage_dir):
    reply = error_reply(
        403,
        "Your chosen model requires moderation and your input was flagged",
        metadata={"reasons": ["violence"], "flagged_input": "...", "provider_name": "OpenAI",
                  "model_slug": MODEL},
    )  # fmt: skip
    run = await run_job(conn, db_dsn, storage_dir, script=[reply], max_attempts=3)
    assert_failed(run, "AI_REFUSED", calls=1)


async def test_408_is_retried_then_times_out(conn, db_dsn, storage_dir):
    reply = error_reply(408, "Operation timed out. Please try again later.")
    run = await run_job(conn, db_dsn, storage_dir, script=[reply] * 3)
    assert_failed(run, "AI_TIMEOUT", calls=3)


@pytest.mark.parametrize("status", [500, 502, 503, 524, 529])
async def test_5xx_is_retried_then_fails_upstream(conn, db_dsn, storage_dir, status):
    reply = error_reply(status, "Provider returned error", metadata={"error_type": "server"})
    run = await run_job(conn, db_dsn, storage_dir, script=[reply] * 3)
    assert_failed(run, "AI_UPSTREAM", calls=3)
    assert run.error["details"]["status"] == status


async def test_5xx_then_success(conn, db_dsn, storage_dir):
    run = await run_job(conn, db_dsn, storage_dir, script=[error_reply(503, "overloaded")])
    assert_succeeded(run, calls=2, retries=1)


# --- 429 and Retry-After -------------------------------------------------------------------------


def rate_limited(retry_after: str) -> Reply:
    return error_reply(
        429,
        "Rate limit exceeded: free-models-per-min",
        metadata={"error_type": "rate_limit_exceeded"},
        headers={"Retry-After": retry_after},
    )


async def test_429_with_retry_after_seconds(conn, db_dsn, storage_dir):
    run = await run_job(conn, db_dsn, storage_dir, script=[rate_limited("1")])
    assert_succeeded(run, calls=2, retries=1)
    assert run.calls[1].received_at - run.calls[0].received_at >= 0.95


async def test_429_with_retry_after_http_date(conn, db_dsn, storage_dir):
    # Whole seconds only: the wait is between one and two seconds.
    run = await run_job(
        conn, db_dsn, storage_dir, script=[rate_limited(formatdate(time.time() + 2, usegmt=True))]
    )
    assert_succeeded(run, calls=2, retries=1)
    assert run.calls[1].received_at - run.calls[0].received_at >= 0.9


async def test_429_beyond_the_in_place_cap_requeues_the_job(conn, db_dsn, storage_dir):
    run = await run_job(
        conn,
        db_dsn,
        storage_dir,
        script=[rate_limited("1")],
        max_attempts=2,
        OPENROUTER_MAX_RETRY_AFTER_SECONDS=0.2,
    )
    assert run.status == "succeeded"
    assert [(a["attempt"], a["outcome"], a["error_code"]) for a in run.attempts] == [
        (1, "retry", "LIMIT_EXCEEDED"),
        (2, "succeeded", None),
    ]
    assert run.calls[1].received_at - run.calls[0].received_at >= 0.95


async def test_429_until_retries_run_out(conn, db_dsn, storage_dir):
    run = await run_job(conn, db_dsn, storage_dir, script=[rate_limited("0")] * 3)
    assert_failed(run, "LIMIT_EXCEEDED", calls=3)


# --- transport failures and broken bodies ----------------------------------------------------------


async def test_slower_than_the_timeout(conn, db_dsn, storage_dir):
    slow = Reply(json=completion_json("<npc/>"), delay=1.0)
    run = await run_job(
        conn, db_dsn, storage_dir, script=[slow] * 3, OPENROUTER_TIMEOUT_SECONDS=0.3
    )
    assert_failed(run, "AI_TIMEOUT", calls=3)


async def test_connection_reset_mid_body_then_success(conn, db_dsn, storage_dir):
    broken = Reply(json=completion_json("x" * 4000), drop_mid_body=True)
    run = await run_job(conn, db_dsn, storage_dir, script=[broken])
    assert_succeeded(run, calls=2, retries=1)


async def test_connection_reset_mid_body_every_time(conn, db_dsn, storage_dir):
    broken = Reply(json=completion_json("x" * 4000), drop_mid_body=True)
    run = await run_job(conn, db_dsn, storage_dir, script=[broken] * 3)
    assert_failed(run, "AI_UPSTREAM", calls=3)


async def test_non_json_body(conn, db_dsn, storage_dir):
    page = Reply(body="<html><body>502 Bad Gateway</body></html>")
    run = await run_job(conn, db_dsn, storage_dir, script=[page] * 3)
    assert_failed(run, "AI_UPSTREAM", calls=3)


# --- output that fails validation ----------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE npc [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<npc name="&lol9;" script="default.lua"><health now="100" max="100"/></npc>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE npc [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<npc name="&secret;" script="default.lua"><health now="100" max="100"/></npc>
"""


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "xxe"])
async def test_entity_tricks_are_rejected_without_expansion(conn, db_dsn, storage_dir, document):
    started = time.monotonic()
    run = await run_job(
        conn, db_dsn, storage_dir, responder=lambda r: xml_reply(document, wrapped=False)
    )
    assert time.monotonic() - started < 10
    assert run.status == "failed" and run.code == "AI_INVALID_XML"
    assert len(run.calls) == 2  # the answer, then one repair round
    findings = run.error["details"]["findings"]
    assert any("DOCTYPE" in finding for finding in findings)
    everything = json.dumps(run.error) + json.dumps([c.json for c in run.calls])
    assert "lollollol" not in everything  # nothing was expanded, not even into the repair prompt
    assert "root:" not in everything  # and no file was read
    assert len(json.dumps(run.calls[1].json)) < 40_000


def misnamed_and_mispriced(request: RecordedRequest) -> str:
    record = request.record()
    xml = render_npc_xml(record)
    return xml.replace(f'name="{record.name}"', 'name="Mirela the Witch"', 1).replace(
        "health potion,7618,45", "health potion,7618,4500"
    )


async def test_wrong_name_and_price_are_repaired_on_the_second_call(conn, db_dsn, storage_dir):
    def first_wrong(request: RecordedRequest) -> Reply:
        is_repair = len(request.messages) > 2
        return xml_reply(correct_xml(request) if is_repair else misnamed_and_mispriced(request))

    run = await run_job(conn, db_dsn, storage_dir, responder=first_wrong)
    assert_succeeded(run, calls=2)
    repair = run.calls[1].prompt_text()
    assert "Mirela the Witch" in repair and "price 4500, expected 45" in repair
    assert b"health potion,7618,45;" in (run.stored or b"")
    # Both calls count on the attempt row.
    assert run.last["prompt_tokens"] == 2 * TOKENS[0]
    assert run.last["completion_tokens"] == 2 * TOKENS[1]


async def test_a_second_bad_answer_fails_the_job(conn, db_dsn, storage_dir):
    run = await run_job(
        conn, db_dsn, storage_dir, responder=lambda r: xml_reply(misnamed_and_mispriced(r))
    )
    assert run.status == "failed" and run.code == "AI_INVALID_XML"
    assert len(run.calls) == 2
    findings = run.error["details"]["findings"]
    assert any("expected 45" in finding for finding in findings)
    assert any("Mirela the Witch" in finding for finding in findings)
    assert [(a["outcome"], a["error_code"]) for a in run.attempts] == [("failed", "AI_INVALID_XML")]
    assert run.last["prompt_tokens"] == 2 * TOKENS[0]
    assert run.last["model"] == MODEL


async def test_a_successful_job_logs_one_info_line(
    conn: Any, db_dsn: str, storage_dir: Path, logs: Any
) -> None:
    """At the default level a job that succeeds writes one line (`job succeeded`); the claim and
    the model call's details are at debug (issue 19: logging was a tenth of the worker's CPU)."""
    logging.getLogger("npcforge").setLevel(logging.INFO)
    run = await run_job(conn, db_dsn, storage_dir, responder=lambda r: xml_reply(correct_xml(r)))
    assert run.status == "succeeded"
    npc_id = str(run.last["npc_id"])
    # The fixture listens on the root and on npcforge's logger: a record may arrive twice.
    about_job = [json.loads(line) for line in dict.fromkeys(logs.lines) if npc_id in line]
    assert [line["msg"] for line in about_job] == ["job succeeded"], about_job
