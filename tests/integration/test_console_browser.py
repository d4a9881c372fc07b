"""The web console in a real Chromium (Debian's `chromium`, driven by Playwright), against a
dev-like stack: `npcforge api` and `npcforge worker` as processes on the test's PostgreSQL, the
worker calling the OpenRouter stand-in (which holds each answer until the test lets it go, so
`processing` can be seen).

With NPCFORGE_SCREENSHOTS=DIR the test also saves the main pages there (docs/console/refresh.sh).
Without chromium the test fails when CI=true, and is skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from apikit import SECRET, owner_of, queue_job, token
from clikit import cli_env, free_port
from conftest import make_npc
from npcforge.generation.xmlrules import render_npc_xml
from standins.openrouter import (
    OpenRouterStandin,
    RecordedRequest,
    Reply,
    openrouter_standin,
    xml_reply,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
WAIT_MS = 30_000


def _chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Gate:
    """Holds the stand-in's answers until `open` (then answers at once until `close`)."""

    event: asyncio.Event

    def open(self) -> None:
        self.event.set()

    def close(self) -> None:
        self.event.clear()


def answer_held_by(gate: Gate, standin: OpenRouterStandin) -> Callable[[RecordedRequest], Any]:
    async def respond(request: RecordedRequest) -> Reply:
        record = request.record()
        if record.name.startswith("Broken"):
            # Wrong health, every time (the repair round too): the job fails AI_INVALID_XML.
            wrong = render_npc_xml(record).replace(f'now="{record.health_now}"', 'now="1"')
            return xml_reply(wrong, wrapped="response_format" in request.json)
        await gate.event.wait()
        return standin.default_reply(request)

    return respond


@asynccontextmanager
async def process(
    args: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "npcforge", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the API did not start:\n{log.read_text()}")


async def test_the_console_in_chromium(db_dsn: str, conn: Any, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    chromium = _chromium()
    shots = os.environ.get("NPCFORGE_SCREENSHOTS")
    expect.set_options(timeout=WAIT_MS)

    alice_npc = await make_npc(conn, name="Sam the Smith")
    alice = await owner_of(conn, alice_npc)
    broken = await make_npc(conn, name="Broken Bob", ownerId=str(alice))
    slow = await make_npc(conn, name="Slow Sally", ownerId=str(alice))
    bob_npc = await make_npc(conn, name="Hidden Harry", ownerId=str(uuid.uuid4()))
    await queue_job(conn, bob_npc)  # in the list of its owner only

    (tmp_path / "storage" / "npc-xml-files").mkdir(parents=True)
    gate = Gate(asyncio.Event())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with openrouter_standin() as standin:
        standin.responder = answer_held_by(gate, standin)
        common = {
            "DATABASE_URL": db_dsn, "NPCFORGE_STORAGE": "filesystem",
            "NPCFORGE_STORAGE_DIR": str(tmp_path / "storage"), "NPCFORGE_LOG_LEVEL": "warning",
        }  # fmt: skip
        api_env = cli_env(**common, NPCFORGE_AUTH="jwt", SUPABASE_JWT_SECRET=SECRET)
        worker_env = cli_env(
            **common, NPCFORGE_PROVIDER="openrouter", OPENROUTER_API_KEY="sk-or-test",
            OPENROUTER_BASE_URL=standin.base_url, NPCFORGE_POLL_SECONDS="1",
        )  # fmt: skip
        api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
        async with (
            process(["api", "--port", str(port)], api_env, api_log) as api,
            process(["worker"], worker_env, worker_log),
            async_playwright() as playwright,
        ):
            await wait_ready(base, api, api_log)
            browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                await _click_through(
                    browser, expect, base, conn, gate, shots,
                    alice=alice, npc=alice_npc, broken=broken, slow=slow, hidden=bob_npc,
                )  # fmt: skip
            finally:
                await browser.close()


async def _sign_in(browser: Any, base: str, user: uuid.UUID) -> Any:
    context = await browser.new_context(base_url=base, viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    await page.goto("/console/jobs")
    assert "/console/sign-in" in page.url  # no identity: the sign-in page
    await page.get_by_label("Access token").fill(token(user))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/console/jobs")
    return page


async def _click_through(
    browser: Any, expect: Any, base: str, conn: Any, gate: Gate, shots: str | None, *,
    alice: uuid.UUID, npc: uuid.UUID, broken: uuid.UUID, slow: uuid.UUID, hidden: uuid.UUID,
) -> None:  # fmt: skip
    def shot(name: str) -> Any:
        return (
            page.screenshot(path=str(Path(shots) / f"{name}.png"), full_page=True)
            if shots
            else asyncio.sleep(0)
        )

    page = await _sign_in(browser, base, alice)
    await expect(page.locator("#live")).to_be_visible()
    await page.evaluate("window.__sameDocument = true")

    # A job appears and goes queued -> processing -> succeeded, live, without a reload.
    # Due in 3 s, so the browser has time to show it queued before a worker claims it.
    await conn.execute(
        "UPDATE npcs SET generation_job_status = 'queued', "
        "generation_job_run_after = now() + interval '3 seconds' WHERE id = $1", npc
    )  # fmt: skip
    row = page.locator(f'tr[data-npc="{npc}"]')
    status = row.locator('[data-field="status"]')
    await expect(status).to_have_text("queued")
    await expect(status).to_have_text("processing")
    await shot("jobs")
    gate.open()
    await expect(status).to_have_text("succeeded")
    assert await page.evaluate("window.__sameDocument === true")
    # Another user's NPC is not listed.
    await expect(page.get_by_text("Hidden Harry")).to_have_count(0)

    # The NPC page: the stored XML, highlighted, with a download link.
    await row.get_by_role("link", name="Sam the Smith").click()
    await expect(page.locator("#xml")).to_contain_text('<npc name="Sam the Smith"')
    await expect(page.locator("#xml .x-tag").first).to_be_visible()
    await expect(page.get_by_role("link", name=f"Download {npc}.xml")).to_be_visible()
    await expect(page.locator("#h-diff + p")).to_contain_text("no earlier successful file")

    # Regenerate after the record changed: the page follows the job and shows the diff.
    await conn.execute("UPDATE npcs SET health_now = 77, health_max = 100 WHERE id = $1", npc)
    gate.close()
    await page.get_by_role("button", name="Regenerate").click()
    await expect(page.locator("#job-status")).to_have_text("processing")
    gate.open()
    await expect(page.locator("#job-status")).to_have_text("succeeded")
    await expect(page.locator("#diff .d-add")).to_contain_text('now="77"')
    await expect(page.locator("#diff .d-del").first).to_be_visible()
    await shot("npc")

    # Cancel a running job.
    gate.close()
    await queue_job(conn, slow)
    await page.goto(f"/console/npcs/{slow}")
    await expect(page.locator("#job-status")).to_have_text("processing")
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#job-status")).to_have_text("failed")
    await expect(page.get_by_role("alert")).to_contain_text("CANCELLED")
    gate.open()

    # A failed job shows the validator's findings.
    await queue_job(conn, broken)
    await page.goto(f"/console/npcs/{broken}")
    await expect(page.locator("#job-status")).to_have_text("failed")
    await expect(page.get_by_role("alert")).to_contain_text("AI_INVALID_XML")
    await expect(page.locator("ul.findings li").first).to_contain_text("health")
    await shot("failed")

    await page.goto("/console")
    await expect(page.get_by_role("heading", name="Jobs by status")).to_be_visible()
    await expect(page.locator('[data-count="failed"]')).to_have_text("2")
    await shot("overview")

    # The other user: their NPC only; Alice's NPC is "not found".
    other = await _sign_in(browser, base, (await owner_of(conn, hidden)))
    await expect(other.get_by_text("Hidden Harry")).to_be_visible()
    await expect(other.get_by_text("Sam the Smith")).to_have_count(0)
    answer = await other.goto(f"/console/npcs/{npc}")
    assert answer is not None and answer.status == 404
    await expect(other.get_by_role("alert")).to_have_text("No such NPC.")
    await other.context.close()
