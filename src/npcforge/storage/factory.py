"""Build the configured Storage backend from Settings (the composition root calls this once)."""

from __future__ import annotations

from npcforge.config import ConfigError, Settings
from npcforge.storage.base import Storage


def build_storage(settings: Settings) -> Storage:
    """The backend NPCFORGE_STORAGE names; ConfigError when its settings are missing."""
    if settings.storage == "filesystem":
        from npcforge.storage.filesystem import FilesystemStorage

        return FilesystemStorage(settings.storage_dir, settings.bucket)
    if settings.storage == "supabase":
        from npcforge.storage.supabase import DEFAULT_MAX_CONNECTIONS, SupabaseStorage

        url, service_key = settings.require_supabase()
        # Enough pooled connections for every job slot to upload at once.
        connections = max(DEFAULT_MAX_CONNECTIONS, settings.concurrency)
        return SupabaseStorage(url, service_key, settings.bucket, max_connections=connections)
    raise ConfigError(
        f"NPCFORGE_STORAGE must be 'supabase' or 'filesystem', not {settings.storage!r}"
    )
