"""The `openrouter` provider: chat completions over aiohttp, with LLM-aware retries.

One `generate()` call may make several HTTP requests:
- transient failures (transport errors, timeouts, 408/429/5xx, retryable errors inside a 200,
  empty content) are retried up to `OPENROUTER_MAX_RETRIES` times, waiting for Retry-After when
  the upstream gives one (up to `OPENROUTER_MAX_RETRY_AFTER_SECONDS`), else exponential backoff
  with full jitter;
- a 400 rejecting `response_format` is asked once more without it (remembered for later calls);
- `finish_reason: "length"` is asked once more with twice the `max_tokens`; truncated twice, the
  call fails with AI_INVALID_XML (a truncated document is invalid output, and a deterministic
  model would truncate again, so the worker must not requeue it).
A wait for a retry that would outlast the job's deadline (the worker's, passed in) is not slept:
the error goes to the worker to requeue the job for then. Failures are JobError subclasses (see
upstream_errors.classify_error); a retryable one tells the worker to requeue, with `retry_after`
when the upstream named a delay.

Logs carry ids, sizes, durations, token counts, retry counts and codes — never the key, prompts,
completions or XML.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from npcforge import speedups
from npcforge.backoff import backoff, parse_retry_after
from npcforge.config import Settings
from npcforge.errors import AiInvalidXml, AiUpstream, JobError, LimitExceeded
from npcforge.generation.answer import extract_xml
from npcforge.generation.base import CallStats, Generated, RepairRequest
from npcforge.generation.completion import (
    Truncated,
    answer_text,
    clean,
    first_choice,
    record_usage,
    redact_error,
)
from npcforge.generation.prompt import build_messages, max_tokens_for
from npcforge.generation.upstream_errors import (
    ResponseFormatRejected,
    classify_error,
    classify_transport_error,
)
from npcforge.generation.upstream_gate import OpenGate, UpstreamGate
from npcforge.npc import NpcRecord

log = logging.getLogger("npcforge.openrouter")

SEED = 7
# Upper bound for the "length" retry; beyond this the record is not the problem.
MAX_COMPLETION_TOKENS = 32_768
# A chat completion carrying one NPC file is far below this; anything bigger is not one.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "npc_xml",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"xml": {"type": "string"}},
            "required": ["xml"],
            "additionalProperties": False,
        },
    },
}


class OpenRouterProvider:
    """Provider that asks an OpenAI-compatible chat completions endpoint for the XML."""

    name = "openrouter"

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        gate: UpstreamGate | None = None,
        rng: random.Random | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
    ) -> None:
        self._key = settings.require_openrouter_key()
        self._settings = settings
        self._url = settings.openrouter_base_url.rstrip("/") + "/chat/completions"
        self._session = session
        self._owns_session = session is None
        self._gate: UpstreamGate = gate if gate is not None else OpenGate()
        self._rng = rng if rng is not None else random.Random()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # Flipped off the first time the model rejects response_format; saves a request per job.
        self._structured_output = True

    # --- Provider protocol ---------------------------------------------------------------------

    async def generate(
        self,
        npc: NpcRecord,
        repair: RepairRequest | None = None,
        *,
        account: CallStats | None = None,
        deadline: float | None = None,
    ) -> Generated:
        stats = CallStats()
        failed = True
        try:
            xml = await self._generate(
                npc, repair, stats, math.inf if deadline is None else deadline
            )
            failed = False
        except JobError as error:
            if error.request_id is None:
                error.request_id = stats.request_id
            # Also in the error document, for whoever reads only the job's error.
            error.details = {**(error.details or {}), "retries": stats.retries}
            if stats.generation_id:
                error.details["generationId"] = stats.generation_id
            redact_error(error, self._key)
            self._log_failure(npc, error, stats)
            raise
        finally:
            if failed and stats.model is None:
                # The attempt row of a failed call names the model asked for if none answered.
                stats.model = self._settings.openrouter_model
            if account is not None:
                account.add(stats)
        if log.isEnabledFor(logging.DEBUG):  # the job's own line at info carries the outcome
            log.debug(
                "openrouter generation done",
                extra={
                    "npc_id": str(npc.id),
                    "repair": repair is not None,
                    "model": stats.model,
                    "generation_id": stats.generation_id,
                    "request_id": stats.request_id,
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "cost": stats.cost,
                    "retries": stats.retries,
                    "upstream_ms": round(stats.upstream_ms, 1),
                    "xml_bytes": len(xml.encode("utf-8", "surrogatepass")),
                },
            )
        return Generated(xml=xml, stats=stats)

    @property
    def paused_for(self) -> float:
        """How long the fleet still holds off upstream calls after a 429 (0 when not paused)."""
        return self._gate.paused_for

    async def close(self) -> None:
        """Close the session (when this provider opened it) and the rate gate it was given."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None
        await self._gate.close()

    # --- one generate() call -----------------------------------------------------------------

    async def _generate(
        self, npc: NpcRecord, repair: RepairRequest | None, stats: CallStats, deadline: float
    ) -> str:
        max_tokens = max_tokens_for(npc)
        transient_failures = 0
        widened = False
        while True:
            structured = self._structured_output
            body = self._request_body(npc, repair, max_tokens, structured=structured)
            try:
                content = await self._request(body, stats)
                return extract_xml(content)
            except ResponseFormatRejected:
                if not structured:
                    raise
                self._structured_output = False
                stats.retries += 1
                log.warning(
                    "openrouter model rejected response_format; asking again without it",
                    extra={"npc_id": str(npc.id), "model": self._settings.openrouter_model},
                )
            except Truncated:
                if widened or max_tokens >= MAX_COMPLETION_TOKENS:
                    raise AiInvalidXml(
                        f"the model's output was cut off at max_tokens={max_tokens}",
                        details={"findings": [f"output truncated at {max_tokens} tokens"]},
                        retryable=False,
                    ) from None
                widened = True
                max_tokens = min(max_tokens * 2, MAX_COMPLETION_TOKENS)
                stats.retries += 1
                log.info(
                    "openrouter output truncated; asking again with a larger budget",
                    extra={"npc_id": str(npc.id), "max_tokens": max_tokens},
                )
            except JobError as error:
                if not error.retryable:
                    raise
                delay = self._retry_delay(error, transient_failures)
                if transient_failures >= self._settings.openrouter_max_retries:
                    raise
                if delay > deadline - time.monotonic():
                    # Sleeping would outlive the job; let the worker requeue it with the delay.
                    error.retry_after = max(delay, error.retry_after or 0.0)
                    raise
                transient_failures += 1
                stats.retries += 1
                log.info(
                    "openrouter retrying",
                    extra={
                        "npc_id": str(npc.id),
                        "error_code": error.code,
                        "status": (error.details or {}).get("status"),
                        "retry": transient_failures,
                        "delay_s": round(delay, 3),
                        "request_id": error.request_id,
                    },
                )
                await asyncio.sleep(delay)

    def _retry_delay(self, error: JobError, failures: int) -> float:
        """Retry-After when given (raising at once above the cap), else jittered backoff."""
        retry_after = error.retry_after
        if retry_after is None:
            return backoff(failures, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng)
        cap = self._settings.openrouter_max_retry_after_seconds
        if retry_after > cap:
            # Not worth holding a job slot: hand the wait to the queue.
            if isinstance(error, LimitExceeded):
                raise error
            raise LimitExceeded(
                f"{error.message} (Retry-After {retry_after:g}s exceeds the "
                f"{cap:g}s the worker waits in place)",
                details=error.details,
                retryable=True,
                retry_after=retry_after,
                request_id=error.request_id,
            ) from error
        return retry_after

    def _request_body(
        self, npc: NpcRecord, repair: RepairRequest | None, max_tokens: int, *, structured: bool
    ) -> dict[str, Any]:
        settings = self._settings
        body: dict[str, Any] = {
            "model": settings.openrouter_model,
            "messages": build_messages(npc, repair, json_answer=structured),
            "temperature": 0,
            "seed": SEED,
            "max_tokens": max_tokens,
        }
        if settings.openrouter_fallback_models:
            body["models"] = list(settings.openrouter_fallback_models)
        if structured:
            body["response_format"] = RESPONSE_SCHEMA
        return body

    # --- one HTTP request ----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        if self._settings.app_url:
            headers["HTTP-Referer"] = self._settings.app_url
        if self._settings.app_title:
            headers["X-Title"] = self._settings.app_title
        return headers

    def _client(self) -> aiohttp.ClientSession:
        # No await between the check and the assignment: concurrent callers share one session.
        if self._session is None or (self._owns_session and self._session.closed):
            connector = aiohttp.TCPConnector(limit=self._settings.effective_openrouter_connections)
            self._session = aiohttp.ClientSession(connector=connector)
            self._owns_session = True
        return self._session

    async def _request(self, body: dict[str, Any], stats: CallStats) -> str:
        await self._gate.acquire()
        session = self._client()
        timeout = aiohttp.ClientTimeout(total=self._settings.openrouter_timeout_seconds)
        started = time.monotonic()
        status: int | None = None
        raw = b""
        request_id: str | None = None
        header_generation: str | None = None
        retry_after: float | None = None
        stats.requests += 1
        try:
            async with session.post(
                self._url, data=speedups.json_bytes(body), headers=self._headers(), timeout=timeout
            ) as response:
                status = response.status
                request_id = clean(response.headers.get("x-request-id"), self._key)
                if request_id:
                    stats.request_id = request_id
                header_generation = clean(response.headers.get("x-generation-id"), self._key)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                raw = await self._read_body(response)
                stats.answered += 1
        except (TimeoutError, aiohttp.ClientError) as exc:
            elapsed = (time.monotonic() - started) * 1000
            stats.upstream_ms += elapsed
            error = classify_transport_error(exc, request_id=request_id or stats.request_id)
            log.info(
                "openrouter request failed",
                extra={
                    "error_code": error.code,
                    "transport": type(exc).__name__,
                    "status": status,
                    "duration_ms": round(elapsed, 1),
                },
            )
            raise error from None
        elapsed = (time.monotonic() - started) * 1000
        stats.upstream_ms += elapsed
        if header_generation:
            stats.generation_id = header_generation
        payload = _json_or_none(raw)
        log.debug(
            "openrouter response",
            extra={
                "status": status,
                "request_id": request_id,
                "generation_id": header_generation,
                "response_bytes": len(raw),
                "duration_ms": round(elapsed, 1),
            },
        )
        if not 200 <= status < 300:
            raise await self._upstream_error(status, payload, retry_after, stats)
        if not isinstance(payload, Mapping):
            raise AiUpstream(
                f"the upstream answered HTTP {status} with a body that is not a JSON object",
                details={"status": status, "responseBytes": len(raw)},
                retryable=True,
                request_id=stats.request_id,
            )
        return await self._completion(status, payload, stats, retry_after)

    async def _upstream_error(
        self,
        status: int,
        payload: object,
        retry_after: float | None,
        stats: CallStats,
        embedded: Mapping[str, Any] | None = None,
    ) -> JobError:
        """The error an upstream answer means: scrubbed of the key, its delay bounded, and the
        fleet paused (for at most that bound) when it says "slow down"."""
        error = classify_error(
            status,
            payload,
            retry_after=retry_after,
            request_id=stats.request_id,
            embedded=embedded,
            secrets=(self._key,),
        )
        if error.retry_after is not None:
            error.retry_after = min(error.retry_after, self._settings.openrouter_max_delay_seconds)
            if error.details is not None and "retryAfter" in error.details:
                error.details["retryAfter"] = error.retry_after
        if isinstance(error, LimitExceeded) and error.retryable:
            await self._gate.on_rate_limited(error.retry_after)
        return error

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65_536):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise AiUpstream(
                    f"the upstream response exceeded {MAX_RESPONSE_BYTES} bytes",
                    details={"status": response.status},
                    retryable=False,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _completion(
        self,
        status: int,
        payload: Mapping[str, Any],
        stats: CallStats,
        retry_after: float | None,
    ) -> str:
        """Read a 2xx chat completion, raising for the errors that arrive with HTTP 200."""
        record_usage(payload, stats, self._key)
        choice, embedded = first_choice(payload)
        if embedded is not None:
            raise await self._upstream_error(status, payload, retry_after, stats, embedded)
        if choice is None:
            raise AiUpstream(
                "the upstream answered without any choices",
                details={"status": status},
                retryable=True,
                request_id=stats.request_id,
            )
        await self._gate.on_success()
        return answer_text(status, choice, stats.request_id, self._key)

    def _log_failure(self, npc: NpcRecord, error: JobError, stats: CallStats) -> None:
        log.warning(
            "openrouter generation failed",
            extra={
                "npc_id": str(npc.id),
                "error_code": error.code,
                "retryable": error.retryable,
                "retry_after": error.retry_after,
                "request_id": error.request_id,
                "generation_id": stats.generation_id,
                "retries": stats.retries,
                "upstream_ms": round(stats.upstream_ms, 1),
            },
        )


def _json_or_none(raw: bytes) -> object:
    try:
        return speedups.json_value(raw)
    except ValueError:
        return None
