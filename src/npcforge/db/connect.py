"""Connections: the pool, the dedicated LISTEN connection, and their shared set-up."""

from __future__ import annotations

import json
import socket
from typing import Any

import asyncpg
from asyncpg import exceptions as pg

from npcforge.config import ConfigError

# Errors that mean "the database cannot do this right now" (unreachable, restarting, shutting
# down, out of connections, a deadlock or a cancelled statement), not "the statement is wrong".
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    pg.PostgresConnectionError,
    pg.OperatorInterventionError,
    pg.InsufficientResourcesError,
    pg.TransactionRollbackError,
    pg.ReadOnlySQLTransactionError,
    # asyncpg raises this when the server closed a pooled connection just as it was released.
    pg.InternalClientError,
)


# Detect a dead server on an idle connection from the client side too (TCP only).
_KEEPALIVE_OPTIONS = (
    ("TCP_KEEPIDLE", 10),
    ("TCP_KEEPINTVL", 3),
    ("TCP_KEEPCNT", 3),
)


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    _enable_keepalive(conn)


def _enable_keepalive(conn: asyncpg.Connection) -> None:
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE_OPTIONS:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


# Startup parameters are limited to what poolers pass on: PgBouncer and Supavisor refuse a
# connection that sends any other (e.g. synchronous_commit); those are SET after connecting.
def _server_settings(application_name: str) -> dict[str, str]:
    return {"application_name": application_name}


def _statement_cache_size(transaction_pooler: bool) -> int:
    # Behind a transaction pooler the next statement may reach another server connection,
    # where a named prepared statement does not exist (or is someone else's); with the cache
    # off asyncpg parses each statement again in the same round trip as it runs it.
    return 0 if transaction_pooler else 100


# What asyncpg raises for a URL it cannot use at all (ClientConfigurationError is also an
# InterfaceError, which DB_UNAVAILABLE would otherwise retry for ever).
MALFORMED_URL = (pg.ClientConfigurationError, ValueError)


def malformed_url(exc: Exception) -> ConfigError:
    """asyncpg refused the URL itself: a configuration error (exit 2), never a retry. A bare
    ValueError may quote a piece of the URL (a password, say), so only asyncpg's own message
    about a parameter is passed on."""
    if isinstance(exc, pg.ClientConfigurationError):
        return ConfigError(f"DATABASE_URL: {exc}")
    return ConfigError("DATABASE_URL: not a URL asyncpg can use (check the host and port)")


async def connect(
    dsn: str,
    *,
    application_name: str = "npcforge",
    timeout: float = 10.0,
    transaction_pooler: bool = False,
) -> Any:
    try:
        conn = await asyncpg.connect(
            dsn,
            timeout=timeout,
            server_settings=_server_settings(application_name),
            statement_cache_size=_statement_cache_size(transaction_pooler),
        )
    except MALFORMED_URL as exc:
        raise malformed_url(exc) from None
    await init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without RESET ALL: for users that change no session state (no LISTEN, SET, ...)."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    application_name: str = "npcforge",
    keep_session: bool = False,
    command_timeout: float = 60.0,
    synchronous_commit: bool = True,
    transaction_pooler: bool = False,
) -> asyncpg.Pool:
    """A pool. `keep_session` saves the reset round trip on every release; asyncpg still rolls
    back an open transaction. `synchronous_commit=False` needs `keep_session` (a reset would
    undo it) and is ignored behind a transaction pooler, where a session setting would stay on
    a server connection that other clients use next."""
    session_sql = (
        None if synchronous_commit or transaction_pooler else "SET synchronous_commit = off"
    )

    async def init(conn: asyncpg.Connection) -> None:
        await init_connection(conn)
        if session_sql is not None:
            await conn.execute(session_sql)

    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=init,
            reset=_keep_session if keep_session else None,
            timeout=10.0,
            command_timeout=command_timeout,
            max_inactive_connection_lifetime=300.0,
            server_settings=_server_settings(application_name),
            statement_cache_size=_statement_cache_size(transaction_pooler),
        )
    except MALFORMED_URL as exc:
        raise malformed_url(exc) from None
    assert pool is not None
    return pool
