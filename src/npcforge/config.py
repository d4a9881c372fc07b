"""The one typed settings object. Nothing else in npcforge reads os.environ."""

from __future__ import annotations

import base64
import binascii
import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
SERVICE_ROLE = "service_role"


class ConfigError(Exception):
    """A setting is missing or wrong. The message names the variable; it never holds a secret."""


def service_key_problem(key: str) -> str | None:
    """Why `key` cannot be the key storage needs, or None when it is (or cannot be told apart).

    Supabase keys are either opaque (`sb_secret_…`, `sb_publishable_…`) or JWTs whose `role`
    claim names the role (legacy `service_role` and `anon` keys). With any role but
    `service_role`, row-level security hides the bucket and its files: storage answers "no such
    bucket" and "no such object" instead of refusing the key. The key itself is never quoted.
    """
    if key.startswith("sb_secret_"):
        return None
    if key.startswith("sb_publishable_"):
        return "is a publishable key (sb_publishable_…), not a secret key"
    parts = key.split(".")
    if len(parts) != 3:
        return None  # opaque: only storage can judge it
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return "looks like a JWT but its claims cannot be read"
    role = claims.get("role") if isinstance(claims, dict) else None
    if role == SERVICE_ROLE:
        return None
    if isinstance(role, str) and role:
        shown = role if len(role) <= 40 else role[:39] + "…"
        return f"is a key for the {shown!r} role, not {SERVICE_ROLE!r}"
    return "is a JWT without a role claim"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# URL checks name what is wrong but never echo the value: a URL may hold a password, and a
# password with an unencoded `/` or `@` puts part of itself where the host or port should be.
_ENCODE_HINT = "percent-encode special characters such as @ : / ? # in the user name and password"
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def _check_port(port: str) -> None:
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port is not a number between 1 and 65535 ({_ENCODE_HINT})")


def _check_postgres_url(value: str) -> str:
    """A URL asyncpg accepts: postgresql://USER:PASSWORD@HOST[:PORT][,HOST[:PORT]...]/DB?…"""
    example = "a URL such as postgresql://USER:PASSWORD@HOST:5432/DBNAME"
    if "://" not in value:
        if "=" in value:
            raise ValueError(f"the key=value form is not supported; use {example}")
        raise ValueError(f"not a URL; expected {example}")
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"the scheme must be postgresql:// or postgres://; expected {example}")
    try:
        parts = urlsplit("postgresql://" + rest)
    except ValueError:
        raise ValueError(f"not a valid URL ({_ENCODE_HINT})") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and "@" in userinfo:
        raise ValueError(f"more than one @ before the host ({_ENCODE_HINT})")
    for host in hosts.split(","):
        port = host.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in host else ""
        if host.startswith("[") and "]" not in host:
            raise ValueError("an IPv6 host lacks its closing ]")
        _check_port(port)
    query = parse_qs(parts.query, keep_blank_values=True)
    for port in query.get("port", []):
        for one in port.split(","):
            _check_port(one)
    for mode in query.get("sslmode", []):
        if mode not in _SSL_MODES:
            raise ValueError("sslmode must be one of " + ", ".join(sorted(_SSL_MODES)))
    return value


def _check_http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"not a valid URL; the port must be a number ({_ENCODE_HINT})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


# Every URL setting is one of these two types, so a malformed value is a configuration error at
# start (exit 2, naming the variable), never a connection error later.
PostgresUrl = Annotated[str, AfterValidator(_check_postgres_url)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # Only the documented names (the aliases) are read, from the environment, from .env and
        # as keyword arguments; a bare field name (AUTH, HOME, PROVIDER) never counts.
        validate_by_name=False,
        validate_by_alias=True,
    )

    database_url: PostgresUrl | None = Field(default=None, alias="DATABASE_URL")
    # A direct or session-mode URL for the worker's LISTEN, when DATABASE_URL is a transaction
    # pooler (which hands the server connection to other clients after every transaction).
    database_listen_url: PostgresUrl | None = Field(default=None, alias="DATABASE_LISTEN_URL")
    # `transaction`: DATABASE_URL is a transaction-mode pooler (PgBouncer, Supavisor port 6543):
    # no prepared-statement cache, no session settings. `none`/`session` behave alike.
    db_pooler: Literal["none", "session", "transaction"] = Field(
        default="none", alias="NPCFORGE_DB_POOLER"
    )

    openrouter_api_key: SecretStr | None = Field(default=None, alias="OPENROUTER_API_KEY")
    openrouter_base_url: HttpUrl = Field(
        default=DEFAULT_OPENROUTER_BASE_URL, alias="OPENROUTER_BASE_URL"
    )
    openrouter_model: str = Field(default="openai/gpt-4o-mini", alias="OPENROUTER_MODEL")
    openrouter_fallback_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="OPENROUTER_FALLBACK_MODELS"
    )
    app_url: HttpUrl | None = Field(default=None, alias="APP_URL")
    app_title: str = Field(default="", alias="APP_TITLE")
    openrouter_timeout_seconds: float = Field(
        default=60.0, gt=0, alias="OPENROUTER_TIMEOUT_SECONDS"
    )
    openrouter_max_retries: int = Field(default=2, ge=0, le=10, alias="OPENROUTER_MAX_RETRIES")
    openrouter_requests_per_minute: int | None = Field(
        default=None, gt=0, alias="OPENROUTER_REQUESTS_PER_MINUTE"
    )
    # Retry-After values above this are not slept on a slot: the job goes back to the queue.
    openrouter_max_retry_after_seconds: float = Field(
        default=20.0, ge=0, alias="OPENROUTER_MAX_RETRY_AFTER_SECONDS"
    )
    # The longest any one outside answer may make anything wait: a requeued job's Retry-After
    # (OpenRouter's or storage's) and the fleet-wide pause after a 429.
    openrouter_max_delay_seconds: float = Field(
        default=180.0, gt=0, le=86_400, alias="OPENROUTER_MAX_DELAY_SECONDS"
    )
    # Unset: 64, or NPCFORGE_CONCURRENCY when that is larger (a slot never waits for a socket).
    openrouter_max_connections: int | None = Field(
        default=None, ge=1, alias="OPENROUTER_MAX_CONNECTIONS"
    )

    provider: Literal["openrouter", "template"] = Field(
        default="openrouter", alias="NPCFORGE_PROVIDER"
    )
    storage: Literal["supabase", "filesystem"] = Field(default="supabase", alias="NPCFORGE_STORAGE")
    supabase_url: HttpUrl | None = Field(default=None, alias="SUPABASE_URL")
    supabase_service_role_key: SecretStr | None = Field(
        default=None, alias="SUPABASE_SERVICE_ROLE_KEY"
    )
    bucket: str = Field(default="npc-xml-files", min_length=1, alias="NPCFORGE_BUCKET")
    storage_dir: Path = Field(default=Path("./.npcforge/storage"), alias="NPCFORGE_STORAGE_DIR")

    concurrency: int = Field(default=16, ge=1, le=1000, alias="NPCFORGE_CONCURRENCY")
    lease_seconds: float = Field(default=30.0, ge=1, alias="NPCFORGE_LEASE_SECONDS")
    max_attempts: int = Field(default=3, ge=1, le=100, alias="NPCFORGE_MAX_ATTEMPTS")
    poll_seconds: float = Field(default=5.0, gt=0, alias="NPCFORGE_POLL_SECONDS")
    shutdown_seconds: float = Field(default=30.0, ge=0, alias="NPCFORGE_SHUTDOWN_SECONDS")
    job_deadline_seconds: float = Field(default=300.0, gt=0, alias="NPCFORGE_JOB_DEADLINE_SECONDS")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, alias="NPCFORGE_METRICS_PORT")

    auth: Literal["jwt", "none"] = Field(default="jwt", alias="NPCFORGE_AUTH")
    supabase_jwt_secret: SecretStr | None = Field(default=None, alias="SUPABASE_JWT_SECRET")
    jwt_audience: str = Field(default="authenticated", alias="NPCFORGE_JWT_AUDIENCE")
    jwks_url: HttpUrl | None = Field(default=None, alias="NPCFORGE_JWKS_URL")
    # Unset: $SUPABASE_URL/auth/v1 when SUPABASE_URL is set (what Supabase Auth puts in `iss`).
    jwt_issuer: str | None = Field(default=None, alias="NPCFORGE_JWT_ISSUER")
    generate_per_minute: int = Field(default=10, ge=1, alias="NPCFORGE_GENERATE_PER_MINUTE")
    daily_budget_usd: Decimal | None = Field(
        default=None, gt=0, max_digits=16, decimal_places=8, alias="NPCFORGE_DAILY_BUDGET_USD"
    )
    user_daily_budget_usd: Decimal | None = Field(
        default=None, gt=0, max_digits=16, decimal_places=8, alias="NPCFORGE_USER_DAILY_BUDGET_USD"
    )
    # `model=PROMPT/COMPLETION,...` in USD per million tokens, over the packaged price table.
    model_prices: str = Field(default="", alias="NPCFORGE_MODEL_PRICES")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="NPCFORGE_CORS_ORIGINS"
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="NPCFORGE_LOG_LEVEL"
    )
    log_format: Literal["json", "text"] | None = Field(default=None, alias="NPCFORGE_LOG_FORMAT")
    # `auto`: uvloop when it is installed (the `fast` extra), else asyncio's own loop.
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", alias="NPCFORGE_EVENT_LOOP"
    )
    home: Path = Field(default=Path("./.npcforge"), alias="NPCFORGE_HOME")
    # Set by systemd for Type=notify services.
    notify_socket: str | None = Field(default=None, alias="NOTIFY_SOCKET")
    watchdog_usec: str | None = Field(default=None, alias="WATCHDOG_USEC")
    watchdog_pid: str | None = Field(default=None, alias="WATCHDOG_PID")

    @field_validator("openrouter_fallback_models", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator(
        "log_level",
        "log_format",
        "event_loop",
        "provider",
        "storage",
        "auth",
        "db_pooler",
        mode="before",
    )
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "openrouter_requests_per_minute",
        "openrouter_max_connections",
        "metrics_port",
        "log_format",
        "database_url",
        "app_url",
        "supabase_url",
        "jwks_url",
        "database_listen_url",
        "jwt_issuer",
        "daily_budget_usd",
        "user_daily_budget_usd",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    # --- derived values -------------------------------------------------------------------

    @property
    def effective_openrouter_connections(self) -> int:
        return self.openrouter_max_connections or max(64, self.concurrency)

    @property
    def effective_jwks_url(self) -> str | None:
        if self.jwks_url:
            return self.jwks_url
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return None

    @property
    def effective_jwt_issuer(self) -> str | None:
        """The `iss` access tokens must carry, or None when nothing says which."""
        if self.jwt_issuer:
            return self.jwt_issuer.rstrip("/")
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1"
        return None

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set (a libpq URL such as postgresql://…)")
        return self.database_url

    @property
    def transaction_pooler(self) -> bool:
        return self.db_pooler == "transaction"

    def require_listen_url(self) -> str:
        """The URL the worker LISTENs on: DATABASE_LISTEN_URL, else DATABASE_URL unless that is
        a transaction pooler, where a LISTEN never hears its notifications."""
        if self.database_listen_url:
            return self.database_listen_url
        if self.transaction_pooler:
            raise ConfigError(
                "NPCFORGE_DB_POOLER=transaction: the worker's LISTEN needs a connection that "
                "stays its own, which a transaction pooler does not give; set DATABASE_LISTEN_URL "
                "to the direct connection (on Supabase db.PROJECT_REF.supabase.co:5432) or to the "
                "session pooler (port 5432)"
            )
        return self.require_database_url()

    def require_openrouter_key(self) -> str:
        if self.openrouter_api_key is None or not self.openrouter_api_key.get_secret_value():
            raise ConfigError(
                "OPENROUTER_API_KEY is not set; it is required when NPCFORGE_PROVIDER=openrouter "
                "(use NPCFORGE_PROVIDER=template for the offline provider)"
            )
        return self.openrouter_api_key.get_secret_value()

    def require_supabase(self) -> tuple[str, str]:
        if not self.supabase_url:
            raise ConfigError(
                "SUPABASE_URL is not set; it is required when NPCFORGE_STORAGE=supabase"
            )
        key = self.supabase_service_role_key
        if key is None or not key.get_secret_value():
            raise ConfigError(
                "SUPABASE_SERVICE_ROLE_KEY is not set; it is required when NPCFORGE_STORAGE=supabase"
            )
        problem = service_key_problem(key.get_secret_value())
        if problem is not None:
            raise ConfigError(
                f"SUPABASE_SERVICE_ROLE_KEY {problem}; set it to the project's service_role key "
                "(or a secret key, sb_secret_…): with any other key row-level security hides the "
                "bucket and its files"
            )
        return self.supabase_url, key.get_secret_value()


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (and .env), turning validation errors into ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError) as exc:
        if isinstance(exc, SettingsError):
            raise ConfigError(f"invalid configuration: {exc}") from None
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ("?",)
            name = str(loc[0])
            field = Settings.model_fields.get(name)
            env_name = field.alias if field is not None and field.alias else name
            message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            problems.append(f"{env_name}: {message}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
