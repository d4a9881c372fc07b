"""An LLM stand-in in its own process: OpenAI-style chat completions on 127.0.0.1.

Answers `POST …/chat/completions` after `--delay-ms` (plus a uniform draw from `--spread-ms`)
with a valid Jiddo XML for the NPC whose `<npc_record>` the prompt carries, as `{"xml": …}`.
aiohttp's low-level server, uvloop, orjson and a cache of finished bodies keep it out of the way
(its CPU per request is in every report). The answer's body and the record parser are the test
suite's OpenRouter stand-in's (tests/standins/openrouter.py). `GET /_bench/arrivals`
(`[[unix_time, npc_name], …]`), `POST /_bench/reset`.

    python bench/llm_standin.py --port 8787 --delay-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
import sys
import time
from pathlib import Path

import orjson
import uvloop
from aiohttp import web

from npcforge.generation.prompt import RECORD_CLOSE, RECORD_OPEN
from npcforge.generation.xmlrules import render_npc_xml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from standins.openrouter import completion_json, record_from_prompt  # the test suite's


class StandIn:
    def __init__(self, delay: float, spread: float) -> None:
        self.delay, self.spread = delay, spread
        self.arrivals: list[tuple[float, str]] = []
        self.answers: dict[str, tuple[bytes, str]] = {}  # record text -> (body, NPC name)

    def answer(self, record_text: str, model: str) -> tuple[bytes, str]:
        if record_text not in self.answers:
            npc = record_from_prompt(f"{RECORD_OPEN}{record_text}{RECORD_CLOSE}")
            content = orjson.dumps({"xml": render_npc_xml(npc)}).decode()
            body = completion_json(content, model=model, prompt_tokens=1500, completion_tokens=300)
            self.answers[record_text] = (orjson.dumps(body), npc.name)
        return self.answers[record_text]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            payload = orjson.loads(await request.read())
            arrived = time.time()
            texts = [str(m.get("content")) for m in payload.get("messages") or ()]
            text = next((t for t in texts if RECORD_OPEN in t), None)
            if text is None:
                body = b'{"error":{"code":400,"message":"no <npc_record> in the prompt"}}'
                return web.Response(status=400, body=body, content_type="application/json")
            start = text.index(RECORD_OPEN) + len(RECORD_OPEN)
            record = text[start : text.index(RECORD_CLOSE, start)].strip()
            body, name = self.answer(record, str(payload.get("model") or "bench/standin"))
            self.arrivals.append((arrived, name))
            wait = self.delay + (random.uniform(0, self.spread) if self.spread else 0.0)
            if wait > 0:
                await asyncio.sleep(wait)
            return web.Response(body=body, content_type="application/json")
        if request.path == "/_bench/arrivals":
            return web.Response(body=orjson.dumps(self.arrivals), content_type="application/json")
        if request.path == "/_bench/reset":
            self.arrivals = []
            return web.Response(body=b"{}", content_type="application/json")
        return web.Response(status=404)


async def serve(args: argparse.Namespace) -> None:
    server = web.Server(StandIn(args.delay_ms / 1000, args.spread_ms / 1000).handle)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, sock=sock, backlog=4096)
    host, port = listener.sockets[0].getsockname()[:2]
    print(f"LISTENING http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    listener.close()
    await server.shutdown(1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--spread-ms", type=float, default=0.0)
    uvloop.run(serve(parser.parse_args()))
