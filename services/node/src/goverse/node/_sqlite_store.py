"""The SQLite backend of the store: object state in one local file, for a node that runs alone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from goverse.node._store import (
    Op,
    OpKind,
    Outcome,
    SchemaTooNew,
    StaleEpoch,
    StoreError,
    StoreUnavailable,
)

_T = TypeVar("_T")

BUSY_TIMEOUT_MS = 5000
"""How long a transaction waits for the file's write lock held by another connection (a
backup, the sqlite3 shell) before it fails."""
WAL_SWITCH_PAUSE = 0.005
"""Seconds between two attempts to switch a database another connection is switching too."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: one row per object with state, and the counter of the static-membership epochs.
    (
        """CREATE TABLE goverse_objects (
            type TEXT NOT NULL,
            id TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            data BLOB,
            PRIMARY KEY (type, id)
        )""",
        """CREATE TABLE goverse_epoch (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            value INTEGER NOT NULL
        )""",
        "INSERT INTO goverse_epoch (singleton, value) VALUES (1, 0)",
    ),
)
"""The schema, one step per version: step N (from 1) brings a database from version N-1 to N.
A new version appends a step; a released step never changes."""

SCHEMA_VERSION = len(MIGRATIONS)


class SqliteBackend:
    """A :class:`~goverse.node._store.Backend` on the SQLite file `path`, which is created when
    missing (its directory is not).

    sqlite3 blocks, so every call runs on one worker thread that the backend owns (started by
    :meth:`open`, ended by :meth:`close`), with the one connection created there. The file is
    in WAL mode with ``synchronous=FULL``: a commit returns after the log is on disk, so a save
    that returned survives a killed process and a power loss.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite:{path}"
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Opens (or creates) the file and migrates its schema. Raises
        :class:`StoreUnavailable` when it cannot be opened (a missing directory, no
        permission), :class:`StoreError` when it is not an SQLite database or its schema is
        newer than this code."""
        if self._executor is not None:
            return
        try:
            # Python 3.11's is_dir() raises some errors (no permission, a name too long).
            is_dir = self.path.parent.is_dir()
        except OSError as error:
            raise StoreUnavailable(f"{self.description}: cannot open: {error.strerror}") from None
        if not is_dir:
            raise StoreUnavailable(
                f"{self.description}: directory {self.path.parent} does not exist"
            )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="goverse-sqlite-store")
        try:
            await self._run(self._open)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Closes the connection and ends the worker thread, after the call it runs (if any)
        is done. Safe to call twice."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=False)

    async def next_epoch(self) -> int:
        return await self._run(self._next_epoch)

    async def apply(self, ops: Sequence[Op]) -> list[Outcome]:
        return await self._run(self._apply, ops)

    async def _run(self, call: Callable[..., _T], *args: object) -> _T:
        if self._executor is None:
            raise StoreUnavailable(f"{self.description}: not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    # What follows runs on the worker thread.

    def _open(self) -> None:
        try:
            connection = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self.description}: cannot open: {error}") from None
        self._connection = connection
        try:
            mode = _switch_to_wal(connection)
            if mode != "wal":
                raise StoreError(f"{self.description}: cannot use a write-ahead log ({mode})")
            # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on a power loss.
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._transaction(self._migrate)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"{self.description}: cannot open: {error}") from None
        except sqlite3.DatabaseError as error:
            raise StoreError(
                f"{self.description}: not a usable SQLite database ({error})"
            ) from None

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _transaction(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Runs `body` in a transaction that holds the write lock from its start (IMMEDIATE:
        a deferred one that later needs to write can fail on a busy lock without waiting)."""
        connection = self._connection
        if connection is None:
            raise StoreUnavailable(f"{self.description}: not open")
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = body(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result

    def _migrate(self, connection: sqlite3.Connection) -> None:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS goverse_schema "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        found = connection.execute("SELECT max(version) FROM goverse_schema").fetchone()[0] or 0
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO goverse_schema (version, applied_at) VALUES (?, ?)",
                (version, datetime.now(UTC).isoformat()),
            )

    def _next_epoch(self) -> int:
        def body(connection: sqlite3.Connection) -> int:
            row = connection.execute(
                "UPDATE goverse_epoch SET value = value + 1 RETURNING value"
            ).fetchone()
            return int(row[0])

        return self._translated(body)

    def _apply(self, ops: Sequence[Op]) -> list[Outcome]:
        def body(connection: sqlite3.Connection) -> list[Outcome]:
            # In-process, a statement costs microseconds: one per operation is simplest, and
            # the write lock held since BEGIN IMMEDIATE makes each read-then-write atomic.
            return [_APPLY[op.kind](connection, op) for op in ops]

        return self._translated(body)

    def _translated(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return self._transaction(body)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"{self.description}: {error}") from None


def _stored_epoch(connection: sqlite3.Connection, op: Op) -> int | None:
    row = connection.execute(
        "SELECT epoch FROM goverse_objects WHERE type = ? AND id = ?", op.key
    ).fetchone()
    return None if row is None else int(row[0])


def _load(connection: sqlite3.Connection, op: Op) -> Outcome:
    # CAST: SQLite keeps a value's own type whatever the column says, and a state set to text
    # or a number by hand must reach the node as bytes that do not parse (DATA_LOSS for its
    # object only), not fail the transaction of every operation batched with it.
    row = connection.execute(
        "SELECT epoch, CAST(data AS BLOB) FROM goverse_objects WHERE type = ? AND id = ?", op.key
    ).fetchone()
    if row is None:
        connection.execute(
            "INSERT INTO goverse_objects (type, id, epoch, data) VALUES (?, ?, ?, NULL)",
            (*op.key, op.epoch),
        )
        return None
    stored, data = int(row[0]), row[1]
    if stored > op.epoch:
        return StaleEpoch(op.key, op.epoch, stored)
    if stored < op.epoch:
        connection.execute(
            "UPDATE goverse_objects SET epoch = ? WHERE type = ? AND id = ?", (op.epoch, *op.key)
        )
    return None if data is None else bytes(data)


def _save(connection: sqlite3.Connection, op: Op) -> Outcome:
    cursor = connection.execute(
        "UPDATE goverse_objects SET epoch = ?, data = ? WHERE type = ? AND id = ? AND epoch <= ?",
        (op.epoch, op.data, *op.key, op.epoch),
    )
    if cursor.rowcount == 1:
        return None
    return StaleEpoch(op.key, op.epoch, _stored_epoch(connection, op))


def _delete(connection: sqlite3.Connection, op: Op) -> Outcome:
    cursor = connection.execute(
        "DELETE FROM goverse_objects WHERE type = ? AND id = ? AND epoch <= ?",
        (*op.key, op.epoch),
    )
    if cursor.rowcount == 1:
        return None
    stored = _stored_epoch(connection, op)
    return None if stored is None else StaleEpoch(op.key, op.epoch, stored)


_APPLY: dict[OpKind, Callable[[sqlite3.Connection, Op], Outcome]] = {
    OpKind.LOAD: _load,
    OpKind.SAVE: _save,
    OpKind.DELETE: _delete,
}


__all__ = ["SCHEMA_VERSION", "SqliteBackend"]


def _switch_to_wal(connection: sqlite3.Connection) -> str:
    """Puts the database in WAL mode; returns the journal mode it is in.

    The switch needs the file's exclusive lock, and where waiting for it could deadlock (several
    connections switching a new file at once, each holding its shared lock) SQLite answers
    SQLITE_BUSY at once instead of calling the busy handler; its documented remedy is to try
    again. So does this, for at most BUSY_TIMEOUT_MS, as the busy handler would have waited.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(WAL_SWITCH_PAUSE)
