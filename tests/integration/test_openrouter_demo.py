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
