"""Logging formats and settings parsing."""

from __future__ import annotations

import json
import logging

import pytest

from npcforge.config import ConfigError, load_settings
from npcforge.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging():
    logger = logging.getLogger("npcforge")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def _emit(capsys, fmt):
    configure_logging("info", fmt)
    logging.getLogger("npcforge.worker").info(
        "job succeeded", extra={"job_id": "j1", "npc_id": "n1", "duration_ms": 12, "code": None}
    )
    logging.getLogger("npcforge.worker").debug("hidden at info level")
    return capsys.readouterr().err.strip().splitlines()


def test_json_lines_carry_the_fields(capsys):
    (line,) = _emit(capsys, "json")
    doc = json.loads(line)
    assert doc["msg"] == "job succeeded"
    assert doc["level"] == "info"
    assert doc["job_id"] == "j1" and doc["npc_id"] == "n1" and doc["duration_ms"] == 12


def test_text_format_is_readable(capsys):
    (line,) = _emit(capsys, "text")
    assert "job succeeded" in line and "job_id=j1" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_default_format_is_json_when_not_a_terminal(capsys):
    (line,) = _emit(capsys, None)  # pytest's captured stderr is not a TTY
    assert json.loads(line)["msg"] == "job succeeded"


def test_log_settings_are_validated(monkeypatch):
    monkeypatch.setenv("NPCFORGE_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="NPCFORGE_LOG_FORMAT"):
        load_settings()
    monkeypatch.setenv("NPCFORGE_LOG_FORMAT", "TEXT")
    monkeypatch.setenv("NPCFORGE_LOG_LEVEL", "Debug")
    settings = load_settings()
    assert settings.log_format == "text" and settings.log_level == "debug"


def test_csv_settings_and_secrets_are_not_echoed(monkeypatch):
    monkeypatch.setenv("OPENROUTER_FALLBACK_MODELS", " a/b ,c/d,, ")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-very-secret")
    monkeypatch.setenv("NPCFORGE_CONCURRENCY", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "NPCFORGE_CONCURRENCY" in str(info.value)
    assert "very-secret" not in str(info.value)
    monkeypatch.setenv("NPCFORGE_CONCURRENCY", "4")
    settings = load_settings()
    assert settings.openrouter_fallback_models == ["a/b", "c/d"]
    assert "very-secret" not in repr(settings)


def test_provider_connections_follow_concurrency_unless_set():
    from npcforge.config import Settings

    assert Settings().effective_openrouter_connections == 64
    assert Settings(NPCFORGE_CONCURRENCY=100).effective_openrouter_connections == 100
    explicit = Settings(NPCFORGE_CONCURRENCY=100, OPENROUTER_MAX_CONNECTIONS=2)
    assert explicit.effective_openrouter_connections == 2
