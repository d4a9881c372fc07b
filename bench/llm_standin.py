"""An LLM stand-in in its own process: OpenAI-style chat completions on 127.0.0.1.

Every contender in the benchmarks talks to this process instead of OpenRouter. It answers
`POST …/chat/completions` after `--delay-ms` with a valid Jiddo XML for the NPC whose record the
prompt carries (the `<npc_record>` JSON that npcforge's prompt builder embeds), wrapped the way
the structured-output schema asks: `{"xml": "…"}` as the message content.

Built to stay out of the way on a 2-core machine: aiohttp's low-level server (no router),
uvloop, orjson, and a cache of finished response bodies keyed by the record text, so a repeat
request costs one JSON parse and one dict lookup. Run it once to see its own CPU cost:

    python bench/llm_standin.py --port 8787 --delay-ms 0

Bench endpoints: `GET /_bench/stats` (requests served, own CPU seconds), `GET /_bench/arrivals`
(`[[unix_time, npc_name], …]`, the moment each request's body was read), `POST /_bench/reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import orjson
from aiohttp import web

from npcforge.generation.prompt import RECORD_CLOSE, RECORD_OPEN
from npcforge.generation.xmlrules import render_npc_xml

# The test suite's OpenRouter stand-in already turns the prompt's record back into an NpcRecord.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from standins.openrouter import record_from_prompt


class StandIn:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.served = 0
        self.arrivals: list[tuple[float, str]] = []
        self._answers: dict[str, tuple[bytes, str]] = {}
        self._seq = 0

    def _answer(self, record_text: str, model: str) -> tuple[bytes, str]:
        cached = self._answers.get(record_text)
        if cached is not None:
            return cached
        npc = record_from_prompt(f"{RECORD_OPEN}{record_text}{RECORD_CLOSE}")
        xml = render_npc_xml(npc)
        content = orjson.dumps({"xml": xml}).decode()
        body = orjson.dumps(
            {
                "id": f"gen-bench-{len(self._answers)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1500, "completion_tokens": 300, "total_tokens": 1800},
            }
        )
        answer = (body, npc.name)
        self._answers[record_text] = answer
        return answer

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "POST" and path.endswith("/chat/completions"):
            raw = await request.read()
            arrived = time.time()
            payload = orjson.loads(raw)
            record_text = None
            for message in payload.get("messages") or ():
                content = message.get("content")
                if isinstance(content, str) and RECORD_OPEN in content:
                    start = content.index(RECORD_OPEN) + len(RECORD_OPEN)
                    record_text = content[start : content.index(RECORD_CLOSE, start)].strip()
                    break
            if record_text is None:
                return web.Response(
                    status=400,
                    body=b'{"error":{"code":400,"message":"no <npc_record> in the prompt"}}',
                    content_type="application/json",
                )
            body, name = self._answer(record_text, str(payload.get("model") or "bench/standin"))
            self.arrivals.append((arrived, name))
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            self.served += 1
            return web.Response(body=body, content_type="application/json")
        if path == "/_bench/stats":
            times = os.times()
            return web.json_response(
                {"served": self.served, "cpu_s": times.user + times.system, "pid": os.getpid()}
            )
        if path == "/_bench/arrivals":
            return web.Response(body=orjson.dumps(self.arrivals), content_type="application/json")
        if path == "/_bench/reset" and request.method == "POST":
            self.served = 0
            self.arrivals = []
            return web.json_response({"ok": True})
        return web.Response(status=404)


async def serve(host: str, port: int, delay: float) -> None:
    standin = StandIn(delay)
    server = web.Server(standin.handle, access_log=None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, sock=sock, backlog=1024)
    bound = listener.sockets[0].getsockname()
    print(f"LISTENING http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    listener.close()
    await server.shutdown(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer after this long")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port, args.delay_ms / 1000.0)
    if args.no_uvloop:
        asyncio.run(coro)
    else:
        import uvloop

        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
