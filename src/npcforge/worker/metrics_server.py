"""The worker's own HTTP endpoint: /metrics, /healthz (loop alive), /readyz (db + listener)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from npcforge.worker.daemon import Worker


async def serve_metrics(worker: Worker, host: str, port: int) -> web.AppRunner:
    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(worker.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ready = worker.ready.is_set() and worker.healthy and not worker.stopping.is_set()
        return web.json_response(
            {"status": "ready" if ready else "not ready", "listener": worker.listener.up},
            status=200 if ready else 503,
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
