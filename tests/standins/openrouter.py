"""An OpenRouter stand-in: a real HTTP server on 127.0.0.1 speaking the chat completions protocol.

Wire facts follow /work/shared/reference/protocols.md Part A: `POST /api/v1/chat/completions`
with Bearer auth; completions shaped like `ChatResult` with `X-Generation-Id` on every response;
errors as `{"error": {"code", "message", "metadata"?}}` with the same HTTP status (or inside an
HTTP 200 when the failure happened while the model was answering).

By default it answers correctly: it reads the NPC record JSON from the user prompt, renders the
XML with the template renderer and returns it as `{"xml": ...}` when the request asked for
`response_format`, else as a bare document. Tests override that with `standin.xml` (a fixed
document), `standin.responder` (a function of the request), or `standin.script(...)` (a queue of
replies consumed in order, one per request, before the default applies).

    async with openrouter_standin() as s:
        s.script(error_reply(429, "Rate limit exceeded", headers={"Retry-After": "1"}))
        ... Settings(OPENROUTER_BASE_URL=s.base_url) ...
        assert len(s.requests) == 2
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from npcforge.generation.prompt import RECORD_CLOSE, RECORD_OPEN
from npcforge.generation.xmlrules import render_npc_xml
from npcforge.npc import Keyword, Look, Messages, NpcRecord, ShopItem

DEFAULT_MODEL = "openai/gpt-4o-mini"


@dataclass
class Reply:
    """One scripted HTTP response."""

    status: int = 200
    json: Any = None
    body: bytes | str | None = None  # raw body; wins over `json`
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None
    delay: float = 0.0  # seconds before the status line is sent
    drop_mid_body: bool = False  # send headers and half the body, then reset the connection
    body_delay: float = 0.0  # seconds between the first half of the body and the rest


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDict[str]
    json: Any
    received_at: float  # time.monotonic()

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.json.get("messages") if isinstance(self.json, dict) else None
        return messages if isinstance(messages, list) else []

    def prompt_text(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages)

    def record(self) -> NpcRecord:
        return record_from_prompt(self.prompt_text())


Responder = Callable[[RecordedRequest], "Reply | Awaitable[Reply]"]


# --- building replies ------------------------------------------------------------------------

_ids = itertools.count(1)


def new_generation_id() -> str:
    return f"gen-{int(time.time())}-{next(_ids):06d}"


def completion_json(
    content: Any,
    *,
    model: str = DEFAULT_MODEL,
    finish_reason: str | None = "stop",
    generation_id: str | None = None,
    prompt_tokens: int = 812,
    completion_tokens: int = 431,
    cost: float = 0.00037,
    error: Mapping[str, Any] | None = None,
    refusal: str | None = None,
) -> dict[str, Any]:
    """A non-streaming `ChatResult` body."""
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": finish_reason,
        "native_finish_reason": finish_reason,
        "logprobs": None,
        "message": {
            "role": "assistant",
            "content": content,
            "refusal": refusal,
            "reasoning": None,
        },
    }
    if error is not None:
        choice["error"] = dict(error)
    return {
        "id": generation_id or new_generation_id(),
        "provider": "OpenAI",
        "model": model,
        "object": "chat.completion",
        "created": int(time.time()),
        "system_fingerprint": "fp_standin",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
            "cost": cost,
            "is_byok": False,
        },
    }


def error_json(
    code: int | None,
    message: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """`{"error": {"code", "message", "metadata"?, ...}}`; `code=None` leaves `code` out."""
    error: dict[str, Any] = {"message": message}
    if code is not None:
        error = {"code": code, **error}
    if metadata is not None:
        error["metadata"] = dict(metadata)
    error.update(extra)
    body: dict[str, Any] = {"error": error}
    if user_id is not None:
        body["user_id"] = user_id
    return body


def completion_reply(content: Any, *, headers: Mapping[str, str] | None = None, **kw: Any) -> Reply:
    body = completion_json(content, **kw)
    merged = {"X-Generation-Id": body["id"], **(headers or {})}
    return Reply(json=body, headers=merged)


def xml_reply(xml: str, *, wrapped: bool = True, **kw: Any) -> Reply:
    """A successful completion carrying `xml`, as `{"xml": ...}` JSON text or bare."""
    return completion_reply(json.dumps({"xml": xml}) if wrapped else xml, **kw)


def error_reply(
    status: int,
    message: str,
    *,
    code: int | str | None = "same",
    metadata: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Reply:
    """An HTTP error whose JSON `error.code` equals the status (unless `code` says otherwise)."""
    error_code = status if code == "same" else code
    assert error_code is None or isinstance(error_code, int)
    return Reply(
        status=status,
        json=error_json(error_code, message, metadata=metadata, **extra),
        headers=dict(headers or {}),
    )


# --- reading the record back out of the prompt -----------------------------------------------


def record_from_prompt(text: str) -> NpcRecord:
    """Rebuild the NpcRecord from the `<npc_record>` JSON the prompt carries."""
    start = text.index(RECORD_OPEN) + len(RECORD_OPEN)
    end = text.index(RECORD_CLOSE, start)
    data = json.loads(text[start:end])
    messages = data["messages"]
    items: list[ShopItem] = []
    for list_type in ("buy", "sell"):
        for item in data["shop"][list_type]:
            items.append(
                ShopItem(
                    list_type=list_type,
                    name=item["name"],
                    item_id=item["item_id"],
                    price=item["price"],
                    subtype=item.get("subtype", 0),
                    charges=item.get("charges", 0),
                    real_name=item.get("real_name"),
                    container_item_id=item.get("container_item_id"),
                )
            )
    return NpcRecord(
        id=uuid.UUID(int=0),
        name=data["name"],
        script=data["script"],
        walk_interval=data["walk_interval"],
        floor_change=data["floor_change"],
        health_now=data["health"]["now"],
        health_max=data["health"]["max"],
        look=Look(**data["look"]),
        messages=Messages(
            greet=messages["message_greet"],
            farewell=messages["message_farewell"],
            decline=messages["message_decline"],
            no_shop=messages["message_noshop"],
            on_close_shop=messages["message_oncloseshop"],
        ),
        focus_enabled=data["flags"]["focus_enabled"],
        travel_enabled=data["flags"]["travel_enabled"],
        voice_enabled=data["flags"]["voice_enabled"],
        shop_enabled=data["shop"]["enabled"],
        shop_mode=data["shop"]["mode"],
        keywords_enabled=data["keywords"]["enabled"],
        shop_items=tuple(items),
        keywords=tuple(
            Keyword(response=k["response"], phrases=tuple(k["phrases"]))
            for k in data["keywords"]["entries"]
        ),
    )


# --- the server ----------------------------------------------------------------------------


class OpenRouterStandin:
    def __init__(self, *, api_key: str | None = None, xml: str | None = None) -> None:
        self.api_key = api_key  # when set, any other Bearer token gets a 401
        self.xml = xml  # fixed document for the default responder
        self.responder: Responder | None = None
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.peers: set[tuple[str, int]] = set()
        self._queue: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # scripting

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order; the default answers after them."""
        self._queue.extend(replies)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def completions(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v1/chat/completions", self._chat)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/api/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # handlers

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(error_json(404, "Not Found"), status=404)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add((str(peer[0]), int(peer[1])))
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=CIMultiDict(request.headers),
            json=body,
            received_at=time.monotonic(),
        )
        self.requests.append(recorded)

        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return web.json_response(error_json(401, "Missing Authentication header"), status=401)
        if self.api_key is not None and auth[7:] != self.api_key:
            return web.json_response(error_json(401, "User not found."), status=401)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return web.json_response(
                error_json(400, 'Input required: specify "messages"'), status=400
            )

        if self._queue:
            reply = self._queue.popleft()
        elif self.responder is not None:
            produced = self.responder(recorded)
            reply = await produced if inspect.isawaitable(produced) else produced
        else:
            reply = self.default_reply(recorded)
        return await self._send(request, reply)

    def default_reply(self, recorded: RecordedRequest) -> Reply:
        """The right answer: the record's XML, wrapped when `response_format` was asked for."""
        xml = self.xml if self.xml is not None else render_npc_xml(recorded.record())
        wrapped = "response_format" in recorded.json
        model = recorded.json.get("model") or DEFAULT_MODEL
        return xml_reply(xml, wrapped=wrapped, model=model)

    async def _send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.body is not None:
            payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
            content_type = reply.content_type or "text/html; charset=utf-8"
        else:
            payload = json.dumps(reply.json).encode()
            content_type = reply.content_type or "application/json"
        headers = CIMultiDict(reply.headers)
        headers.setdefault("X-Generation-Id", new_generation_id())
        headers["Content-Type"] = content_type
        response = web.StreamResponse(status=reply.status, headers=headers)
        response.content_length = len(payload)
        await response.prepare(request)
        if reply.drop_mid_body:
            await response.write(payload[: len(payload) // 2])
            await asyncio.sleep(0.01)
            if request.transport is not None:
                request.transport.abort()
            return response
        if reply.body_delay:
            half = len(payload) // 2
            await response.write(payload[:half])
            await asyncio.sleep(reply.body_delay)
            await response.write(payload[half:])
        else:
            await response.write(payload)
        await response.write_eof()
        return response


@asynccontextmanager
async def openrouter_standin(
    *, api_key: str | None = None, xml: str | None = None
) -> AsyncIterator[OpenRouterStandin]:
    standin = OpenRouterStandin(api_key=api_key, xml=xml)
    await standin.start()
    try:
        yield standin
    finally:
        await standin.stop()
