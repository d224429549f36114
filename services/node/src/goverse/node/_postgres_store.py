"""The PostgreSQL backend of the store: object state shared by the nodes of a cluster."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import unquote

import asyncpg

from goverse.node._config import redact_store, store_passwords
from goverse.node._store import (
    ObjectKey,
    Op,
    OpKind,
    Outcome,
    SchemaTooNew,
    StaleEpoch,
    StoreUnavailable,
)

_T = TypeVar("_T")

TIMEOUT = timedelta(seconds=10)
"""How long connecting, waiting for a pooled connection, and each statement may take before
the transaction fails with :class:`StoreUnavailable`: a frozen server must not hold the
writer (and every caller queued behind it) forever."""

ATTEMPTS = 3
"""Runs of a transaction that failed in a way a new run can fix: a deadlock with another
node's transaction, or a pooled connection the server closed (after a restart). Running a
batch again is safe even when the first run committed and only its reply was lost: under its
epoch a load claims again, a save writes the same state again, a delete finds nothing to
delete (next_epoch skips a number, which is allowed)."""

MIGRATION_LOCK = zlib.crc32(b"goverse store schema")
"""The advisory lock key that serializes the schema migration of nodes starting together."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: one row per object with state, and the counter of the static-membership epochs.
    (
        """CREATE TABLE goverse_objects (
            type TEXT NOT NULL,
            id TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            data BYTEA,
            PRIMARY KEY (type, id)
        )""",
        """CREATE TABLE goverse_epoch (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            value BIGINT NOT NULL
        )""",
        "INSERT INTO goverse_epoch (singleton, value) VALUES (1, 0)",
    ),
)
"""The schema, one step per version: step N (from 1) brings a database from version N-1 to N.
A new version appends a step; a released step never changes."""

SCHEMA_VERSION = len(MIGRATIONS)

# Each statement carries a whole batch's operations of one kind as arrays (one round trip for
# 512 saves instead of 512). The epoch conditions are evaluated by PostgreSQL on the row's
# latest committed version (READ COMMITTED re-checks an UPDATE's WHERE after waiting for a
# concurrent writer, and ON CONFLICT locks the row it updates), so two nodes' transactions
# cannot both pass the check on the same row.
_LOAD = """
    INSERT INTO goverse_objects AS o (type, id, epoch)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
    ON CONFLICT (type, id) DO UPDATE SET epoch = EXCLUDED.epoch WHERE o.epoch <= EXCLUDED.epoch
    RETURNING o.type, o.id, o.data
"""
_SAVE = """
    UPDATE goverse_objects AS o SET epoch = i.epoch, data = i.data
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[]) AS i(type, id, epoch, data)
    WHERE o.type = i.type AND o.id = i.id AND o.epoch <= i.epoch
    RETURNING o.type, o.id
"""
_DELETE = """
    DELETE FROM goverse_objects AS o
    USING unnest($1::text[], $2::text[], $3::bigint[]) AS i(type, id, epoch)
    WHERE o.type = i.type AND o.id = i.id AND o.epoch <= i.epoch
    RETURNING o.type, o.id
"""
_STORED = """
    SELECT o.type, o.id, o.epoch FROM goverse_objects AS o
    JOIN unnest($1::text[], $2::text[]) AS i(type, id) ON o.type = i.type AND o.id = i.id
"""

_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What a failed connection or transaction raises: refused or reset sockets, timeouts, the
server's errors (a wrong password, a shutdown) and asyncpg's own (a closed connection)."""

_RUN_AGAIN = (
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    ConnectionResetError,
    BrokenPipeError,
)


class PostgresBackend:
    """A :class:`~goverse.node._store.Backend` on the PostgreSQL database `url` names.

    Connections come from an asyncpg pool of at most `pool_size`, opened by :meth:`open`;
    a connection the server closed is replaced on the next transaction, so the backend
    recovers by itself once the server is back. `password`, when given, replaces the URL's;
    without either, asyncpg reads PGPASSWORD and PGPASSFILE like libpq. No message of this
    backend contains the password.
    """

    def __init__(
        self, url: str, password: str | None, pool_size: int, timeout: timedelta = TIMEOUT
    ) -> None:
        self.description = redact_store(url)
        self._url = url
        self._password = password
        self._pool_size = max(pool_size, 1)
        self._timeout = timeout.total_seconds()
        self._secrets = ([password] if password else []) + _url_passwords(url)
        self._pool: Any = None
        self.statements = 0
        """Statements sent (BEGIN and COMMIT included): the round trips the transactions
        cost."""

    async def open(self) -> None:
        """Opens the pool, connects once and creates or migrates the schema under an
        advisory lock, so nodes starting together migrate once. Raises
        :class:`StoreUnavailable` when the server cannot be reached or refuses us,
        :class:`SchemaTooNew` when a newer node migrated the database."""
        if self._pool is not None:
            return
        # No connection kept open while idle (min_size 0): with a floor, asyncpg reconnects
        # in the background during an outage and logs a traceback each time it fails; this
        # way the next transaction connects, and its failure is the one report.
        pool = asyncpg.create_pool(
            self._url,
            password=self._password,
            min_size=0,
            max_size=self._pool_size,
            timeout=self._timeout,
            command_timeout=self._timeout,
            server_settings={"application_name": "goverse-node"},
            reset=_keep_session,
        )
        try:
            try:
                await pool
                connection = await pool.acquire(timeout=self._timeout)
            except Exception as error:
                # Whatever connecting raised (a refused socket, a bad password, a port out
                # of range in the URL) means the same to the node: no database.
                raise self._unavailable("cannot connect", error) from None
            try:
                await self._migrate(connection)
            except _UNAVAILABLE as error:
                raise self._unavailable("cannot create the schema", error) from None
            finally:
                await pool.release(connection)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Closes the pool, waiting (bounded) for connections in use to be released; safe to
        call twice."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await pool.close()
        except (*_UNAVAILABLE, ValueError):
            # Closing is best effort: the server may be gone, and terminate() below frees
            # every connection anyway.
            pass
        finally:
            pool.terminate()

    async def next_epoch(self) -> int:
        async def run(connection: Any) -> int:
            self.statements += 1
            value = await connection.fetchval(
                "UPDATE goverse_epoch SET value = value + 1 RETURNING value"
            )
            return int(value)

        return await self._attempt("next epoch", run)

    async def apply(self, ops: Sequence[Op]) -> list[Outcome]:
        async def run(connection: Any) -> list[Outcome]:
            return await self._apply(connection, ops)

        return await self._attempt("transaction", run)

    async def _attempt(self, what: str, run: Callable[[Any], Awaitable[_T]]) -> _T:
        """Runs `run` on a pooled connection, again (at most :data:`ATTEMPTS` times) when it
        failed in a way a new run can fix; any other failure is :class:`StoreUnavailable`."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"{self.description}: not open")
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with pool.acquire(timeout=self._timeout) as connection:
                    return await run(connection)
            except _UNAVAILABLE as error:
                if attempt == ATTEMPTS or not isinstance(error, _RUN_AGAIN):
                    raise self._unavailable(f"{what} failed", error) from None
        raise AssertionError("unreachable")

    async def _apply(self, connection: Any, ops: Sequence[Op]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(ops)
        if not ops:
            return outcomes
        segments = _segments(ops)
        if len(segments) == 1 and len({ops[i].kind for i in segments[0]}) == 1:
            # One statement is a transaction by itself: BEGIN and COMMIT would double the
            # round trips of the common batch (all saves).
            await self._run_segment(connection, ops, segments[0], outcomes)
            return outcomes
        self.statements += 2
        async with connection.transaction():
            for segment in segments:
                await self._run_segment(connection, ops, segment, outcomes)
        return outcomes

    async def _run_segment(
        self, connection: Any, ops: Sequence[Op], segment: list[int], outcomes: list[Outcome]
    ) -> None:
        """Runs the operations `segment` indexes (each on another object, so their order does
        not matter) with one statement per kind, and fills in their outcomes."""
        by_kind: dict[OpKind, list[int]] = {}
        # Sorted by key: rows are then locked in the same order by every node, which keeps
        # two nodes' batches from deadlocking on each other.
        for index in sorted(segment, key=lambda i: ops[i].key):
            by_kind.setdefault(ops[index].kind, []).append(index)
        refused: list[int] = []
        for kind, indexes in by_kind.items():
            types = [ops[i].key[0] for i in indexes]
            ids = [ops[i].key[1] for i in indexes]
            epochs = [ops[i].epoch for i in indexes]
            self.statements += 1
            if kind is OpKind.LOAD:
                rows = await connection.fetch(_LOAD, types, ids, epochs)
                claimed = {(row[0], row[1]): row[2] for row in rows}
                for i in indexes:
                    if ops[i].key in claimed:
                        data = claimed[ops[i].key]
                        outcomes[i] = None if data is None else bytes(data)
                    else:
                        refused.append(i)
                continue
            if kind is OpKind.SAVE:
                datas = [ops[i].data for i in indexes]
                rows = await connection.fetch(_SAVE, types, ids, epochs, datas)
            else:
                rows = await connection.fetch(_DELETE, types, ids, epochs)
            done = {(row[0], row[1]) for row in rows}
            refused += [i for i in indexes if ops[i].key not in done]
        if refused:
            await self._refuse(connection, ops, refused, outcomes)

    async def _refuse(
        self, connection: Any, ops: Sequence[Op], refused: list[int], outcomes: list[Outcome]
    ) -> None:
        """The outcomes of the operations the epoch check refused, with the epochs stored now
        (a delete of a row that is gone succeeded)."""
        self.statements += 1
        rows = await connection.fetch(
            _STORED, [ops[i].key[0] for i in refused], [ops[i].key[1] for i in refused]
        )
        stored: dict[ObjectKey, int] = {(row[0], row[1]): int(row[2]) for row in rows}
        for i in refused:
            op = ops[i]
            epoch = stored.get(op.key)
            if op.kind is OpKind.DELETE and epoch is None:
                outcomes[i] = None
            else:
                outcomes[i] = StaleEpoch(op.key, op.epoch, epoch)

    async def _migrate(self, connection: Any) -> None:
        async with connection.transaction():
            # Held until the commit: a node starting meanwhile waits, then finds the schema.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS goverse_schema "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            found = int(
                await connection.fetchval("SELECT coalesce(max(version), 0) FROM goverse_schema")
            )
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(found, SCHEMA_VERSION)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await connection.execute(statement)
                await connection.execute(
                    "INSERT INTO goverse_schema (version) VALUES ($1)", version
                )

    def _unavailable(self, what: str, error: BaseException) -> StoreUnavailable:
        """The one translation of asyncpg's and the socket's errors: a message with where and
        why, never the password."""
        reason = str(error) or type(error).__name__
        if isinstance(error, TimeoutError):
            reason = f"no answer within {self._timeout:g}s"
        elif not isinstance(error, (OSError, asyncpg.PostgresError)):
            # The driver's own messages ("invalid literal for int()...") need their kind.
            reason = f"{type(error).__name__}: {reason}"
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        return StoreUnavailable(f"{self.description}: {what}: {reason}")


async def _keep_session(connection: Any) -> None:
    """What a connection going back to the pool needs reset: nothing. The store sets no
    session state (no SET, LISTEN, cursor or session-level advisory lock: the migration's lock
    ends with its transaction), and asyncpg still rolls back a transaction left open. Its
    default reset is one more query per transaction (``SELECT pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL``): a round trip and work for the server each time, measured
    at about 0.4 ms of node CPU per transaction."""


def _segments(ops: Sequence[Op]) -> list[list[int]]:
    """`ops`' indexes cut into runs in which no object appears twice: within a run, operations
    may run in any order (grouped by kind); runs run in order, so that a batch that loads,
    saves and deletes one object does it in that order."""
    segments: list[list[int]] = [[]]
    keys: set[ObjectKey] = set()
    for index, op in enumerate(ops):
        if op.key in keys:
            segments.append([])
            keys.clear()
        keys.add(op.key)
        segments[-1].append(index)
    return segments


def _url_passwords(url: str) -> list[str]:
    """The password in `url`'s user part or query, as written and percent-decoded (and,
    for one written with an unescaped '/', the part before it: the driver, reading that as
    the end of the host, quotes it as a port)."""
    found = store_passwords(url)
    found += [password.partition("/")[0] for password in found if "/" in password]
    return [text for password in found for text in (password, unquote(password)) if text]


__all__ = ["SCHEMA_VERSION", "PostgresBackend"]
