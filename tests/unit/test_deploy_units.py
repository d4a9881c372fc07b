"""The systemd units and the env example in deploy/ say what the operations guide promises."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = DEPLOY / "systemd"
ENV_EXAMPLE = DEPLOY / "npcforge.env.example"

WORKER_UNITS = ("npcforge-worker.service", "npcforge-worker@.service")
API_UNIT = "npcforge-api.service"
ALL_UNITS = (*WORKER_UNITS, API_UNIT)

INSTALLED_BINARY = "/opt/npcforge/venv/bin/npcforge"
ENV_FILE = "/etc/npcforge/npcforge.env"
DEFAULT_SHUTDOWN_SECONDS = 30

# Every variable of SPEC §3, with its documented default. REQUIRED: no default, the example must
# carry an uncommented placeholder. UNSET: no default, optional. "" means empty or derived.
REQUIRED = object()
UNSET = object()
SPEC_VARIABLES: dict[str, object] = {
    "DATABASE_URL": REQUIRED,
    "OPENROUTER_API_KEY": REQUIRED,
    "OPENROUTER_BASE_URL": "https://openrouter.ai/api/v1",
    "OPENROUTER_MODEL": "openai/gpt-4o-mini",
    "OPENROUTER_FALLBACK_MODELS": "",
    "APP_URL": "",
    "APP_TITLE": "",
    "OPENROUTER_TIMEOUT_SECONDS": "60",
    "OPENROUTER_MAX_RETRIES": "2",
    "OPENROUTER_REQUESTS_PER_MINUTE": "",
    "NPCFORGE_PROVIDER": "openrouter",
    "NPCFORGE_STORAGE": "supabase",
    "SUPABASE_URL": REQUIRED,
    "SUPABASE_SERVICE_ROLE_KEY": REQUIRED,
    "NPCFORGE_BUCKET": "npc-xml-files",
    "NPCFORGE_STORAGE_DIR": "./.npcforge/storage",
    "NPCFORGE_CONCURRENCY": "16",
    "NPCFORGE_LEASE_SECONDS": "30",
    "NPCFORGE_MAX_ATTEMPTS": "3",
    "NPCFORGE_POLL_SECONDS": "5",
    "NPCFORGE_SHUTDOWN_SECONDS": str(DEFAULT_SHUTDOWN_SECONDS),
    "NPCFORGE_METRICS_PORT": "",
    "NPCFORGE_AUTH": "jwt",
    "SUPABASE_JWT_SECRET": UNSET,
    "NPCFORGE_JWT_AUDIENCE": "authenticated",
    "NPCFORGE_GENERATE_PER_MINUTE": "10",
    "NPCFORGE_CORS_ORIGINS": "",
    "NPCFORGE_LOG_LEVEL": "info",
    "NPCFORGE_LOG_FORMAT": "",
    "NPCFORGE_JWKS_URL": "",
    "NPCFORGE_DAILY_BUDGET_USD": "",
    "NPCFORGE_USER_DAILY_BUDGET_USD": "",
}
EXTRA_VARIABLES: dict[str, object] = {
    "NPCFORGE_JOB_DEADLINE_SECONDS": "300",
    "OPENROUTER_MAX_RETRY_AFTER_SECONDS": "20",
    "OPENROUTER_MAX_DELAY_SECONDS": "180",
    "OPENROUTER_MAX_CONNECTIONS": "64",
    "NPCFORGE_JWT_ISSUER": "",
    "NPCFORGE_HOME": "./.npcforge",
    "NPCFORGE_DB_POOLER": "none",
    "DATABASE_LISTEN_URL": "",
    "NPCFORGE_EVENT_LOOP": "auto",
    "NPCFORGE_MODEL_PRICES": "",
}
KNOWN_VARIABLES = {**SPEC_VARIABLES, **EXTRA_VARIABLES}
SECRETS = (
    "DATABASE_URL",
    "DATABASE_LISTEN_URL",
    "OPENROUTER_API_KEY",
    "SUPABASE_SERVICE_ROLE_KEY",
    "SUPABASE_JWT_SECRET",
)

# Hardening every unit carries, with the value each must have.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectControlGroups": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "KillSignal": "SIGTERM",
}
TRUE_WORDS = {"yes", "true", "on", "1"}


@dataclass
class Unit:
    """A unit file as systemd reads it: sections of keys that may repeat, in order."""

    name: str
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        return [value for name, value in self.sections.get(section, []) if name == key]

    def last(self, section: str, key: str) -> str | None:
        found = self.values(section, key)
        return found[-1] if found else None

    def service(self, key: str) -> str:
        value = self.last("Service", key)
        assert value is not None, f"{self.name}: [Service] {key}= is missing"
        return value


def parse_unit(path: Path) -> Unit:
    unit = Unit(path.name)
    section: str | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):  # systemd joins continuation lines with a space
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, [])
            continue
        assert section is not None, f"{path.name}: {line!r} comes before any [Section]"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not Key=Value"
        unit.sections[section].append((key.strip(), value.strip()))
    assert not pending, f"{path.name}: ends inside a continued line"
    return unit


def seconds(span: str) -> float:
    """A systemd time span such as 45, 45s, 1min 30s or 2m, in seconds."""
    factors = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(number) * factors[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def units() -> dict[str, Unit]:
    return {name: parse_unit(UNITS / name) for name in ALL_UNITS}


def test_the_parser_keeps_repeated_keys_and_continuations(tmp_path: Path) -> None:
    sample = tmp_path / "sample.service"
    sample.write_text(
        "# comment\n[Service]\nEnvironmentFile=/a\nEnvironmentFile=-/b\n"
        "ExecStart=/bin/true \\\n  --flag\n; also a comment\n",
        encoding="utf-8",
    )
    unit = parse_unit(sample)
    assert unit.values("Service", "EnvironmentFile") == ["/a", "-/b"]
    assert unit.service("ExecStart") == "/bin/true  --flag"


def test_the_deploy_directory_holds_the_three_units() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(ALL_UNITS)


@pytest.mark.parametrize("name", WORKER_UNITS)
def test_worker_units_speak_sd_notify_with_a_watchdog(units: dict[str, Unit], name: str) -> None:
    unit = units[name]
    assert unit.service("Type") == "notify"
    assert unit.service("NotifyAccess") == "main"
    assert seconds(unit.service("WatchdogSec")) > 0


@pytest.mark.parametrize("name", WORKER_UNITS)
def test_worker_units_outlast_the_drain_before_sigkill(units: dict[str, Unit], name: str) -> None:
    # The worker drains for NPCFORGE_SHUTDOWN_SECONDS after SIGTERM, then hands jobs back;
    # SIGKILL before that would leave its jobs to wait out their leases.
    unit = units[name]
    assert unit.service("KillSignal") == "SIGTERM"
    assert seconds(unit.service("TimeoutStopSec")) > DEFAULT_SHUTDOWN_SECONDS


@pytest.mark.parametrize("name", WORKER_UNITS)
def test_worker_units_run_the_installed_worker(units: dict[str, Unit], name: str) -> None:
    argv = shlex.split(units[name].service("ExecStart"))
    assert argv == [INSTALLED_BINARY, "worker"]


def test_api_unit_runs_the_api_on_loopback(units: dict[str, Unit]) -> None:
    unit = units[API_UNIT]
    assert unit.service("Type") in {"exec", "simple"}
    argv = shlex.split(unit.service("ExecStart"))
    assert argv[:2] == [INSTALLED_BINARY, "api"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8080"


def test_the_template_names_its_instance(units: dict[str, Unit]) -> None:
    unit = units["npcforge-worker@.service"]
    assert "%i" in (unit.last("Unit", "Description") or "")
    assert "%i" in unit.service("SyslogIdentifier")
    # Per-instance overrides (such as a metrics port) come after the shared file, optionally.
    assert unit.values("Service", "EnvironmentFile") == [ENV_FILE, "-/etc/npcforge/worker-%i.env"]


@pytest.mark.parametrize("name", ALL_UNITS)
def test_every_unit_restarts_on_failure_only(units: dict[str, Unit], name: str) -> None:
    unit = units[name]
    assert unit.service("Restart") == "on-failure"
    assert seconds(unit.service("RestartSec")) > 0
    # Exit status 2 is a configuration error; restarting cannot fix it.
    assert "2" in unit.service("RestartPreventExitStatus").split()


@pytest.mark.parametrize("name", ALL_UNITS)
def test_every_unit_reads_the_shared_env_file(units: dict[str, Unit], name: str) -> None:
    # The first EnvironmentFile has no "-" prefix: a missing env file must stop the start.
    assert units[name].values("Service", "EnvironmentFile")[0] == ENV_FILE


@pytest.mark.parametrize("name", ALL_UNITS)
def test_every_unit_runs_unprivileged(units: dict[str, Unit], name: str) -> None:
    unit = units[name]
    dynamic = (unit.last("Service", "DynamicUser") or "no").lower() in TRUE_WORDS
    user = unit.last("Service", "User")
    assert dynamic or user not in {None, "", "root", "0"}
    if dynamic:
        assert unit.service("StateDirectory"), "a DynamicUser unit needs a StateDirectory"


@pytest.mark.parametrize("name", ALL_UNITS)
def test_every_unit_is_hardened(units: dict[str, Unit], name: str) -> None:
    unit = units[name]
    wrong = {
        key: unit.last("Service", key)
        for key, expected in HARDENING.items()
        if unit.last("Service", key) != expected
    }
    assert wrong == {}, f"{name}: hardening directives missing or different: {wrong}"
    families = unit.service("RestrictAddressFamilies").split()
    assert not families[0].startswith("~"), "an allow-list, not a deny-list"
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert unit.service("MemoryMax") not in {"", "infinity"}


def test_all_units_share_one_hardening_profile(units: dict[str, Unit]) -> None:
    def profile(unit: Unit) -> list[tuple[str, str]]:
        keys = {
            *HARDENING,
            "RestrictAddressFamilies",
            "SystemCallFilter",
            "CapabilityBoundingSet",
            "DynamicUser",
            "User",
            "StateDirectory",
        }
        return [(k, v) for k, v in unit.sections["Service"] if k in keys]

    reference = profile(units["npcforge-worker.service"])
    for name in ALL_UNITS:
        assert profile(units[name]) == reference, name


def env_assignments() -> dict[str, tuple[str, bool, list[str]]]:
    """KEY -> (value, commented out, comment lines right above it)."""
    found: dict[str, tuple[str, bool, list[str]]] = {}
    comments: list[str] = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            commented, key, value = match.groups()
            assert key not in found, f"{key} is assigned twice"
            found[key] = (value, bool(commented), comments)
            continue
        if not line.strip():
            comments = []
        elif line.startswith("#"):
            comments = [*comments, line]
        else:
            pytest.fail(f"not a comment, blank or KEY=value line: {line!r}")
    return found


def test_env_example_documents_every_spec_variable() -> None:
    found = env_assignments()
    assert sorted(set(KNOWN_VARIABLES) - set(found)) == []
    assert sorted(set(found) - set(KNOWN_VARIABLES)) == [], "unknown (misspelt?) variables"


def test_env_example_shows_the_defaults() -> None:
    found = env_assignments()
    for key, default in KNOWN_VARIABLES.items():
        value, commented, comments = found[key]
        assert comments, f"{key} has no explanation above it"
        if default is REQUIRED:
            assert not commented and value, f"{key} is required: give it a placeholder"
        elif default is not UNSET:
            assert commented, f"{key} is optional: leave it commented out at its default"
            assert value == default, f"{key}: example shows {value!r}, default is {default!r}"


def test_env_example_marks_the_secrets() -> None:
    found = env_assignments()
    for key in SECRETS:
        assert any("[secret]" in line for line in found[key][2]), key
    marked = {key for key, (_, _, notes) in found.items() if any("[secret]" in n for n in notes)}
    assert marked == set(SECRETS)


@pytest.mark.parametrize("name", ALL_UNITS)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # verify also checks that ExecStart's binary exists. The test host has no
    # /opt/npcforge, so point only that path at a stand-in executable; all else is verbatim.
    binary = tmp_path / "bin" / "npcforge"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    binary.chmod(0o755)
    for unit_file in UNITS.glob("*.service"):
        text = unit_file.read_text(encoding="utf-8")
        assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1, unit_file.name
        text = text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={binary} ")
        (tmp_path / unit_file.name).write_text(text, encoding="utf-8")

    result = subprocess.run(
        [analyze, "verify", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"},
    )
    output = (result.stdout + result.stderr).strip()
    # verify exits 0 on unknown keys and bad values too, so any output counts as a failure.
    assert result.returncode == 0, output
    assert output == "", output
