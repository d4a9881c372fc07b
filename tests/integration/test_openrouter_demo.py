"""`npcforge demo` through the openrouter provider, with OPENROUTER_BASE_URL at the stand-in."""

from __future__ import annotations

from clikit import cli_env, run_cli
from standins.openrouter import openrouter_standin

KEY = "sk-or-v1-demo-0123456789abcdef"


async def test_demo_succeeds_through_the_openrouter_provider(tmp_path):
    async with openrouter_standin(api_key=KEY) as standin:
        env = cli_env(OPENROUTER_API_KEY=KEY, OPENROUTER_BASE_URL=standin.base_url)
        result = await run_cli("demo", env=env, cwd=tmp_path, timeout=90)
    assert result.code == 0, result.err
    assert result.out.startswith(
        '<?xml version="1.0" encoding="UTF-8"?>\n<npc name="Mirela the Herbalist"'
    )
    assert "provider `openrouter`" in result.err
    assert "template" not in result.err
    assert KEY not in result.out + result.err
    calls = standin.completions()
    assert len(calls) == 1
    assert calls[0].headers["Authorization"] == f"Bearer {KEY}"
    assert "Mirela the Herbalist" in calls[0].prompt_text()


async def test_a_failed_demo_prints_what_was_wrong_with_the_xml(tmp_path):
    wrong = '<?xml version="1.0" encoding="UTF-8"?>\n<npc name="Somebody Else" script="x.lua"/>'
    async with openrouter_standin(api_key=KEY, xml=wrong) as standin:
        env = cli_env(
            OPENROUTER_API_KEY=KEY, OPENROUTER_BASE_URL=standin.base_url, NPCFORGE_LOG_FORMAT="text"
        )
        result = await run_cli("demo", env=env, cwd=tmp_path, timeout=90)
        calls = len(standin.completions())
    assert result.code == 1, result.err
    assert calls == 2  # the answer and one repair
    assert "AI_INVALID_XML" in result.err
    findings = [line for line in result.err.splitlines() if line.startswith("  - ")]
    assert findings, result.err
    assert any("Mirela the Herbalist" in line for line in findings), findings
    assert result.out == ""


async def test_a_demo_stopped_by_a_signal_exits_1_and_removes_its_postgresql(tmp_path):
    import asyncio
    import signal
    import subprocess
    import sys

    import psutil

    from queuekit import slow_model

    async with slow_model() as model:
        held = model.hold("Mirela the Herbalist")
        env = cli_env(
            OPENROUTER_API_KEY=KEY, OPENROUTER_BASE_URL=model.standin.base_url,
            NPCFORGE_LOG_FORMAT="text", TMPDIR=str(tmp_path),
        )  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "npcforge", "demo", env=env, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        await model.wait_arrival("Mirela the Herbalist", timeout=90)
        clusters = [
            p for p in psutil.process_iter(["cmdline"])
            if str(tmp_path) in " ".join(p.info["cmdline"] or []) and "-D" in (p.info["cmdline"] or [])
        ]  # fmt: skip
        assert clusters  # its PostgreSQL runs under our TMPDIR
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        held.set()
    assert proc.returncode == 1, err.decode()
    assert "interrupted" in err.decode()
    assert not [p for p in clusters if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], [
        (p, p.status()) for p in clusters
    ]
    assert not list(tmp_path.glob("npcforge-*"))
