"""Apply `sql/migrations/*.sql` once each, in order, each in a transaction under an advisory lock.

The lock is transaction-scoped (`pg_advisory_xact_lock`), so it also holds behind a
transaction-mode pooler, where a session lock could be taken on one server connection and
released on another.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from npcforge.db.queries import q

log = logging.getLogger("npcforge.migrate")

# Any constant works; it only has to be the same for every npcforge process.
MIGRATION_LOCK_KEY = 0x6E7063666F726765  # "npcforge"

# Files edited after release only by adding steps that change nothing on a database that had
# applied the earlier text (guarded adoption of the original system's schema): their earlier
# checksums still count as applied.
ACCEPTED_EARLIER_CHECKSUMS: dict[str, frozenset[str]] = {
    # 0001 before it learnt to adopt an existing `npcs` table
    "0001": frozenset({"d8a849ec76cc527004c1c730e6237e3a6b5072eff0417664f8ada67d00a9ff54"}),
}


class MigrationError(Exception):
    """The database's migration history disagrees with the files shipped."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def _migrations_dir() -> Traversable:
    # Installed wheel: shipped inside the package. Editable checkout: the repo's top-level sql/.
    packaged = resources.files("npcforge").joinpath("sql", "migrations")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "sql" / "migrations"


def load_migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in _migrations_dir().iterdir():
        if not entry.name.endswith(".sql"):
            continue
        stem = entry.name[: -len(".sql")]
        version, _, name = stem.partition("_")
        if not version.isdigit():
            raise MigrationError(f"migration file {entry.name!r} does not start with a number")
        found.append(Migration(version=version, name=name or stem, sql=entry.read_text("utf-8")))
    found.sort(key=lambda m: int(m.version))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


async def applied_migrations(conn: asyncpg.Connection) -> dict[str, str]:
    exists = await conn.fetchval(q("migrations_ledger_exists"))
    if not exists:
        return {}
    rows = await conn.fetch(q("migrations_applied"))
    return {row["version"]: row["checksum"] for row in rows}


def pending(migrations: list[Migration], applied: dict[str, str]) -> list[Migration]:
    """Migrations not yet applied; raise if an applied one's file changed."""
    todo: list[Migration] = []
    for migration in migrations:
        checksum = applied.get(migration.version)
        if checksum is None:
            todo.append(migration)
        elif checksum != migration.checksum and checksum not in ACCEPTED_EARLIER_CHECKSUMS.get(
            migration.version, frozenset()
        ):
            raise MigrationError(
                f"migration {migration.version}_{migration.name}.sql was changed after it was "
                f"applied (checksum {checksum[:12]}… in the database, {migration.checksum[:12]}… "
                "on disk); restore the file or write a new migration"
            )
    return todo


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations. Safe to run concurrently: each file is applied in a transaction
    that first takes the advisory lock and then re-reads the ledger."""
    migrations = load_migrations()
    done: list[str] = []
    while True:
        async with conn.transaction():
            await conn.execute(q("migrations_lock"), MIGRATION_LOCK_KEY)
            await conn.execute(q("migrations_ledger"))
            todo = pending(migrations, await applied_migrations(conn))
            if not todo:
                return done
            migration = todo[0]
            await conn.execute(migration.sql)
            await conn.execute(
                q("migration_applied"), migration.version, migration.name, migration.checksum
            )
        log.info("applied migration", extra={"version": migration.version})
        done.append(f"{migration.version}_{migration.name}")


async def check_current(conn: asyncpg.Connection) -> list[str]:
    """Names of migrations not yet applied (raises MigrationError on a changed file)."""
    todo = pending(load_migrations(), await applied_migrations(conn))
    return [f"{m.version}_{m.name}" for m in todo]
