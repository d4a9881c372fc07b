"""Logging formats and settings parsing."""

from __future__ import annotations

import json
import logging
import sys
import threading

import pytest

from npcforge.config import ConfigError, load_settings
from npcforge.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging():
    logger, root = logging.getLogger("npcforge"), logging.getLogger()
    saved = (logger.handlers[:], logger.level, logger.propagate, root.handlers[:], root.level)
    hooks = (sys.excepthook, threading.excepthook)
    yield
    logger.handlers[:], logger.level, logger.propagate, root.handlers[:], root.level = saved
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


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


def test_in_json_mode_every_logger_writes_one_json_object_per_line(capsys):
    import warnings

    configure_logging("info", "json")
    try:
        raise ConnectionResetError("connection lost\nsecond line of the message")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").warning("error on connection", exc_info=True)
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
        sys.excepthook(*sys.exc_info())  # as Python reports an uncaught exception
    logging.getLogger("aiohttp.server").warning("Error handling request")
    logging.getLogger("aiohttp.server").info("below the libraries' level: not written")
    warnings.warn("a library's warning", UserWarning, stacklevel=1)
    thread = threading.Thread(target=lambda: 1 / 0, name="helper")
    thread.start()
    thread.join()
    lines = capsys.readouterr().err.splitlines()
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [d["logger"] for d in docs] == [
        "asyncpg.pool", "asyncio", "npcforge", "aiohttp.server", "py.warnings", "npcforge",
    ]  # fmt: skip
    assert "ConnectionResetError: connection lost" in docs[0]["exc"]
    assert docs[0]["exc"].startswith("Traceback") and docs[0]["exc_type"] == "ConnectionResetError"
    assert docs[2]["level"] == "critical" and "uncaught" in docs[2]["msg"]
    assert "a library's warning" in docs[4]["msg"]
    assert docs[5]["exc_type"] == "ZeroDivisionError" and docs[5]["thread_name"] == "helper"


def test_say_writes_plain_text_or_a_json_record(capsys):
    from npcforge.logs import say

    configure_logging("error", "text")
    say("npcforge: queued 2 job(s)")
    assert capsys.readouterr().err == "npcforge: queued 2 job(s)\n"
    configure_logging("error", "json")  # shown whatever the level: the user asked for it
    say("npcforge: queued 2 job(s)")
    doc = json.loads(capsys.readouterr().err)
    assert doc["msg"] == "npcforge: queued 2 job(s)" and doc["logger"] == "npcforge.cli"


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


# --- only the documented names are read ------------------------------------------------------


def _bare_names() -> list[str]:
    """Every field's own name where it differs from its documented name (AUTH, HOME, ...)."""
    from npcforge.config import Settings

    return [
        name.upper()
        for name, field in Settings.model_fields.items()
        if name.upper() != (field.alias or "").upper()
    ]


@pytest.fixture
def no_npcforge_env(monkeypatch, tmp_path):
    from npcforge.config import Settings

    monkeypatch.chdir(tmp_path)  # no .env but the one a test writes
    for field in Settings.model_fields.values():
        if field.alias:
            monkeypatch.delenv(field.alias, raising=False)
    return tmp_path


def test_a_bare_field_name_changes_nothing_in_the_environment_or_dotenv(
    monkeypatch, no_npcforge_env
):
    bare = _bare_names()
    assert {"AUTH", "HOME", "PROVIDER", "STORAGE", "CONCURRENCY"} <= set(bare)
    documented = load_settings()
    # "7" is a valid value for most types and an invalid one for the rest: read, it would
    # change the settings or fail them.
    for name in bare:
        monkeypatch.setenv(name, "7")
    assert load_settings() == documented
    for name in bare:
        monkeypatch.delenv(name)
    (no_npcforge_env / ".env").write_text("".join(f"{name}=7\n" for name in bare))
    assert load_settings() == documented
    # the documented names do count, in both places
    (no_npcforge_env / ".env").write_text("NPCFORGE_AUTH=none\n")
    monkeypatch.setenv("NPCFORGE_HOME", "/srv/npcforge")
    settings = load_settings()
    assert settings.auth == "none" and str(settings.home) == "/srv/npcforge"


def test_bare_field_names_are_not_keyword_arguments_either(no_npcforge_env):
    from npcforge.config import Settings

    fields = {name: "7" for name in Settings.model_fields if name.upper() in _bare_names()}
    assert Settings(**fields) == Settings()


# --- URL settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("DATABASE_URL", "garbage", "not a URL"),
        ("DATABASE_URL", "host=/tmp user=postgres", "key=value form"),
        ("DATABASE_URL", "mysql://u@h/db", "postgresql://"),
        ("DATABASE_URL", "postgresql://u:pw-secret@h:abc/db", "port"),
        ("DATABASE_URL", "postgresql://u:pw-secret@h:99999/db", "port"),
        ("DATABASE_URL", "postgresql://u:pw/secret@h:5432/db", "port"),
        ("DATABASE_URL", "postgresql://u:pw@secret@h/db", "more than one @"),
        ("DATABASE_URL", "postgresql://u@[::1/db", "not a valid URL"),
        ("DATABASE_URL", "postgresql://u@h/db?sslmode=sometimes", "sslmode"),
        ("SUPABASE_URL", "project.supabase.co", "http://"),
        ("SUPABASE_URL", "https://project.supabase.co:port", "port"),
        ("OPENROUTER_BASE_URL", "openrouter.ai/api/v1", "http://"),
        ("NPCFORGE_JWKS_URL", "file:///etc/jwks.json", "http://"),
        ("APP_URL", "my site", "http://"),
    ],
)
def test_a_malformed_url_is_a_configuration_error_naming_the_variable(
    monkeypatch, no_npcforge_env, variable, value, says
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert f"{variable}: " in str(info.value) and says in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://postgres:@/postgres?host=/tmp/npcforge-pg-x/data",  # the embedded form
        "postgres://u:p%40ss@db.example.com:6543/postgres?sslmode=require",
        "postgresql://u@[::1]:5432,replica:5433/db?target_session_attrs=read-write",
        "postgresql:///db",
    ],
)
def test_well_formed_database_urls_are_accepted(monkeypatch, no_npcforge_env, value):
    monkeypatch.setenv("DATABASE_URL", value)
    assert load_settings().database_url == value
