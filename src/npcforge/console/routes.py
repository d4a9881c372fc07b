"""The console's routes (/console): its pages, actions, live updates, sign-in and static files."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from npcforge.console.actions import act, retry_failed, sign_in, sign_out
from npcforge.console.frame import page
from npcforge.console.pages import events, jobs, npc_page, npc_xml, overview


def console_routes() -> list[BaseRoute]:
    return [
        Route("/", page(overview), methods=["GET"], name="console_overview"),
        Route("/jobs", page(jobs), methods=["GET"], name="console_jobs"),
        Route("/jobs/retry-failed", page(retry_failed), methods=["POST"]),
        Route("/npcs/{npc_id}", page(npc_page), methods=["GET"], name="console_npc"),
        Route("/npcs/{npc_id}/xml", page(npc_xml), methods=["GET"]),
        Route("/npcs/{npc_id}/{action}", page(act), methods=["POST"]),
        Route("/events", page(events), methods=["GET"]),
        Route("/sign-in", sign_in, methods=["GET", "POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("npcforge.console", "static")]), name="static"),
    ]


def console_mount() -> list[BaseRoute]:
    """/console itself (the overview) and everything under it."""
    return [
        Route("/console", page(overview), methods=["GET"]),
        Mount("/console", routes=console_routes()),
    ]
