"""The worker's own HTTP endpoint: /metrics, /healthz (event loop and loops alive), /readyz
(claiming: the database answers and the listener is connected)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from npcforge.worker.daemon import Worker


async def serve_metrics(worker: Worker, host: str, port: int) -> web.AppRunner:
    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(worker.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        # Answering at all proves the event loop runs; `loops` says whether they all report.
        return web.json_response({"status": "ok", "loops": "alive" if worker.alive else "stuck"})

    async def readyz(_request: web.Request) -> web.Response:
        database = await worker.check_database()
        checks = {
            "started": worker.ready.is_set(),
            "stopping": worker.stopping.is_set(),
            "database": database,
            "listener": worker.listener.up,
            "loops": worker.alive,
        }
        ready = (
            checks["started"]
            and not checks["stopping"]
            and database
            and checks["listener"]
            and checks["loops"]
        )
        return web.json_response(
            {"status": "ready" if ready else "not ready", **checks},
            status=200 if ready else 503,
            headers={"Cache-Control": "no-store"},
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
