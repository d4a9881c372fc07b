"""The one typed settings object. Nothing else in npcforge reads os.environ."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
    )

    database_url: str | None = Field(default=None, alias="DATABASE_URL")

    openrouter_api_key: SecretStr | None = Field(default=None, alias="OPENROUTER_API_KEY")
    openrouter_base_url: str = Field(
        default=DEFAULT_OPENROUTER_BASE_URL, alias="OPENROUTER_BASE_URL"
    )
    openrouter_model: str = Field(default="openai/gpt-4o-mini", alias="OPENROUTER_MODEL")
    openrouter_fallback_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="OPENROUTER_FALLBACK_MODELS"
    )
    app_url: str = Field(default="", alias="APP_URL")
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
    supabase_url: str | None = Field(default=None, alias="SUPABASE_URL")
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
    jwks_url: str | None = Field(default=None, alias="NPCFORGE_JWKS_URL")
    # Unset: $SUPABASE_URL/auth/v1 when SUPABASE_URL is set (what Supabase Auth puts in `iss`).
    jwt_issuer: str | None = Field(default=None, alias="NPCFORGE_JWT_ISSUER")
    generate_per_minute: int = Field(default=10, ge=1, alias="NPCFORGE_GENERATE_PER_MINUTE")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="NPCFORGE_CORS_ORIGINS"
    )

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="NPCFORGE_LOG_LEVEL"
    )
    log_format: Literal["json", "text"] | None = Field(default=None, alias="NPCFORGE_LOG_FORMAT")
    home: Path = Field(default=Path("./.npcforge"), alias="NPCFORGE_HOME")
    # Set by systemd for Type=notify services.
    notify_socket: str | None = Field(default=None, alias="NOTIFY_SOCKET")
    watchdog_usec: str | None = Field(default=None, alias="WATCHDOG_USEC")
    watchdog_pid: str | None = Field(default=None, alias="WATCHDOG_PID")

    @field_validator("openrouter_fallback_models", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("log_level", "log_format", "provider", "storage", "auth", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "openrouter_requests_per_minute",
        "openrouter_max_connections",
        "metrics_port",
        "log_format",
        "jwks_url",
        "jwt_issuer",
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
            problems.append(f"{env_name}: {err.get('msg', 'invalid value')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
