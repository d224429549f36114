"""The state store contract: what a node asks of SQLite or PostgreSQL, and what it may answer.

A store keeps one row per object that has state: its ``(type, id)``, the serialized state (or
none yet) and the **epoch** of the last owner that wrote it. Every operation carries the epoch
the node owns the object's shard with, and the store refuses it when the stored epoch is newer
(:class:`StaleEpoch`): a paused old owner can never overwrite what a newer owner wrote, because
the newer owner *claimed* the row with its epoch when it loaded it, before it served anything.

* :meth:`Store.load` claims the row (stored epoch raised to ours, a row with no state inserted
  when there was none) and returns the state, so an old owner's later writes are refused.
* :meth:`Store.save` replaces the state of a row we claimed; refused when the row is gone or a
  newer epoch claimed it.
* :meth:`Store.delete` removes the row; refused like a save.

Operations from many objects may be carried together in one transaction (the backends batch
what arrives while a transaction runs), so a durable reply need not cost one commit. Each
operation still succeeds or fails on its own.

:class:`Store` is what the node uses: it queues operations and one writer task runs everything
queued as one :meth:`Backend.apply`. :func:`open_store` builds one from ``--store``. Errors::

    StoreError                  an operation that did not happen
    ├── StaleEpoch              refused: a newer epoch claimed the row (or, to save, it is gone)
    ├── StoreUnavailable        the database could not be reached or the transaction failed
    └── SchemaTooNew            the database was migrated by a newer node
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import structlog

from goverse.node._config import redact_store

log = structlog.get_logger(__name__)

ObjectKey = tuple[str, str]
"""``(type, id)``."""


class StoreError(Exception):
    """A store operation that did not happen."""


class StaleEpoch(StoreError):
    """The stored row was claimed by a newer epoch (or, for a save, is gone): this node no
    longer owns the object. Nothing was written."""

    def __init__(self, key: ObjectKey, epoch: int, stored: int | None) -> None:
        self.key = key
        self.epoch = epoch
        self.stored = stored
        newer = "no longer exists" if stored is None else f"was claimed with epoch {stored}"
        super().__init__(f"{key[0]}/{key[1]} {newer}; this node's epoch is {epoch}")


class StoreUnavailable(StoreError):
    """The store could not be reached or the transaction failed; nothing is known to be
    written. The message says why, without credentials."""


class SchemaTooNew(StoreError):
    """The database's schema has a version this node does not know: a newer node migrated it,
    and this one would misread it."""

    def __init__(self, found: int, known: int) -> None:
        self.found = found
        self.known = known
        super().__init__(
            f"schema version {found} is newer than this node ({known}): upgrade the node"
        )


class OpKind(enum.Enum):
    LOAD = "load"
    SAVE = "save"
    DELETE = "delete"


@dataclass(frozen=True)
class Op:
    """One operation of a batch: `data` is the state to save (SAVE only)."""

    kind: OpKind
    key: ObjectKey
    epoch: int
    data: bytes | None = None


Outcome = bytes | None | StoreError
"""The result of one operation: for LOAD the stored state (None: no state yet); for SAVE and
DELETE None; a :class:`StaleEpoch` when refused."""


class Backend(Protocol):
    """What a database provides: a transaction over many operations, and the schema."""

    description: str
    """Where the data is, for logs, without credentials (``sqlite:/var/lib/x.db``,
    ``postgresql://user@host:5432/db``)."""

    async def open(self) -> None:
        """Connects and creates or migrates the schema (idempotent, safe when several nodes
        start at once). Raises :class:`StoreUnavailable` when the database cannot be reached,
        :class:`StoreError` for a schema newer than this code knows."""

    async def close(self) -> None:
        """Closes connections; safe to call twice."""

    async def next_epoch(self) -> int:
        """A number larger than every one this database handed out before: the epoch of a
        node in static membership, which increases across restarts."""

    async def apply(self, ops: Sequence[Op]) -> list[Outcome]:
        """Runs `ops` in one transaction, each with its own outcome, in order. Raises
        :class:`StoreUnavailable` when the transaction as a whole failed."""


MAX_BATCH = 512
"""Most operations in one transaction. 200 saves of 100 bytes took one transaction of 8-12 ms
on SQLite and 20-40 ms on PostgreSQL on the 2-core test machine (against 150-200 ms and
270-580 ms saved one at a time); bounding a batch keeps one transaction, and the latency of
what is queued behind it, short when a burst arrives."""

MAX_BATCH_BYTES = 16 * 1024 * 1024
"""Most bytes of state in one transaction (a lone larger state still goes, alone): a burst of
big states must not make one statement of gigabytes."""

CLOSE_TIMEOUT = 5.0
"""How long :meth:`Store.close` lets the transaction in flight finish by default."""

_Pending = tuple[Op, "asyncio.Future[bytes | None]"]


class Store:
    """The node's store: load, save and delete object state under an epoch, with group commit.

    Every operation is queued, and one writer task (owned by the store: started by
    :meth:`open`, ended by :meth:`close`) runs everything queued while the previous transaction
    ran as one :meth:`Backend.apply`, at most :data:`MAX_BATCH` operations at a time. An idle
    store runs a lone operation at once, in a transaction of its own: nothing waits on a timer.
    Operations run in the order they were queued, so two on the same object apply in order.

    States: unopened → open → closed. Operations before :meth:`open` or after :meth:`close`
    raise :class:`StoreUnavailable`.
    """

    def __init__(
        self, backend: Backend, max_batch: int = MAX_BATCH, max_batch_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        self._backend = backend
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._state: Literal["unopened", "open", "closed"] = "unopened"
        # Unbounded on purpose: each entry is a caller awaiting its outcome, so the queue never
        # holds more than the node has objects asking, and those are bounded (--max-objects).
        self._queue: collections.deque[_Pending] = collections.deque()
        self._inflight: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.available = False
        """False from a transaction that failed until one succeeds (and before :meth:`open`)."""
        self.transactions = 0
        """Transactions attempted, successful or not (batches and :meth:`next_epoch` calls)."""
        self.ops = 0
        """Operations sent to the database in those transactions."""

    @property
    def backend(self) -> Backend:
        """The database under the store."""
        return self._backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state == "closed"

    @property
    def description(self) -> str:
        """Where the data is, without credentials (:attr:`Backend.description`)."""
        return self._backend.description

    async def open(self) -> None:
        """Connects, creates or migrates the schema (:meth:`Backend.open`) and starts the
        writer task. Raises :class:`StoreUnavailable` when the database cannot be reached and
        :class:`StoreError` when its schema cannot be used; the store stays unopened then, and
        `open` may be called again. Does nothing when open already; raises
        :class:`StoreUnavailable` once closed."""
        if self._state == "open":
            return
        if self._state == "closed":
            raise StoreUnavailable("store is closed")
        await self._backend.open()
        if self.closed:
            # close() ran while the backend opened: it found nothing to close.
            await self._backend.close()
            raise StoreUnavailable("store is closed")
        self._state = "open"
        self.available = True
        self._writer = asyncio.get_running_loop().create_task(
            self._write(), name=f"store writer {self.description}"
        )

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stops taking operations and closes the database connections.

        At once: later calls raise :class:`StoreUnavailable` ("store is closed"), and so do the
        operations still queued. Then it waits up to `timeout` seconds for the transaction in
        flight, whose operations get their real outcomes; past that, the writer is cancelled
        and they fail with "store is closed" too (the database may still commit them). Finally
        the backend is closed. Safe before :meth:`open` and a second time (which returns at
        once)."""
        if self._state == "closed":
            return
        opened = self._state == "open"
        self._state = "closed"
        self.available = False
        self._fail(self._queue, "store is closed")
        self._queue.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._wakeup.set()
            try:
                await asyncio.wait([writer], timeout=max(timeout, 0.0))
            finally:
                # Also when this close is cancelled: the writer never outlives its store.
                if not writer.done():
                    log.warning(
                        "store transaction abandoned at close",
                        store=self.description,
                        ops=len(self._inflight),
                        timeout_s=timeout,
                    )
                    writer.cancel()
                    # asyncio.wait never raises the writer's CancelledError, only ours.
                    await asyncio.wait([writer])
        self._fail(self._inflight, "store is closed")
        self._inflight = []
        if opened:
            await self._backend.close()

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def load(self, key: ObjectKey, epoch: int) -> bytes | None:
        """Claims the row of `key` for `epoch` and returns its state (None: no state yet; an
        empty row is created then). Raises :class:`StaleEpoch` when a newer epoch claimed
        it, :class:`StoreUnavailable` when the transaction failed."""
        return await self._submit(Op(OpKind.LOAD, key, epoch))

    async def save(self, key: ObjectKey, epoch: int, data: bytes) -> None:
        """Replaces the state of `key`, a row this epoch claimed; durable once this returns.
        Raises :class:`StaleEpoch` when the row is gone or a newer epoch claimed it,
        :class:`StoreUnavailable` when the transaction failed."""
        await self._submit(Op(OpKind.SAVE, key, epoch, data))

    async def delete(self, key: ObjectKey, epoch: int) -> None:
        """Removes the row of `key` (nothing to do when there is none). Raises
        :class:`StaleEpoch` when a newer epoch claimed it, :class:`StoreUnavailable` when
        the transaction failed."""
        await self._submit(Op(OpKind.DELETE, key, epoch))

    async def next_epoch(self) -> int:
        """A number larger than any this database handed out before (:meth:`Backend.
        next_epoch`), in a transaction of its own. Raises :class:`StoreUnavailable`."""
        self._check_open()
        self.transactions += 1
        try:
            epoch = await self._backend.next_epoch()
        except StoreUnavailable as error:
            self._set_available(False, error)
            raise
        self._set_available(True)
        return epoch

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreUnavailable(
                "store is closed" if self._state == "closed" else "store is not open"
            )

    async def _submit(self, op: Op) -> bytes | None:
        self._check_open()
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._wakeup.set()
        return await future

    async def _write(self) -> None:
        """The writer: a transaction for whatever is queued, again until the queue is empty,
        then sleeps until something is queued. Ends after :meth:`close` once the transaction in
        flight is done."""
        while self._state == "open":
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and self._state == "open":
                await self._commit_next()

    async def _commit_next(self) -> None:
        # A method of its own so that nothing of the batch stays referenced by the writer
        # while it sleeps: pieces kept alive from a past burst pin the allocator's memory.
        batch = self._take()
        if batch:
            await self._commit(batch)

    def _take(self) -> list[_Pending]:
        """The next batch: queued operations, oldest first, up to the bounds."""
        batch: list[_Pending] = []
        size = 0
        while self._queue and len(batch) < self._max_batch:
            op, future = self._queue[0]
            if future.done():
                # A caller that was cancelled gave up on its operation: skip it.
                self._queue.popleft()
                continue
            size += len(op.data or b"")
            if batch and size > self._max_batch_bytes:
                break
            batch.append(self._queue.popleft())
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        """Runs `batch` as one transaction and hands each caller its outcome."""
        self._inflight = batch
        self.transactions += 1
        self.ops += len(batch)
        try:
            outcomes = await self._backend.apply([op for op, _ in batch])
            if len(outcomes) != len(batch):
                raise StoreUnavailable(
                    f"{self.description}: {len(outcomes)} outcomes for {len(batch)} operations"
                )
        except StoreError as error:
            self._set_available(False, error)
            self._fail(batch, str(error), error)
        except Exception as error:
            # Not a translated store error: a defect, but the callers must still get an answer
            # rather than wait forever, and the writer must go on for the others.
            log.exception("store transaction failed unexpectedly", store=self.description)
            self._set_available(False, error)
            self._fail(batch, f"{self.description}: transaction failed: {error!r}", error)
        else:
            self._set_available(True)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, StoreError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        self._inflight = []

    @staticmethod
    def _fail(pending: Sequence[_Pending], why: str, cause: BaseException | None = None) -> None:
        """Fails each waiting caller with a StoreUnavailable of its own (a shared exception
        object would collect every caller's traceback)."""
        for _, future in pending:
            if not future.done():
                error = StoreUnavailable(why)
                error.__cause__ = cause
                future.set_exception(error)

    def _set_available(self, available: bool, error: BaseException | None = None) -> None:
        if available == self.available:
            return
        self.available = available
        if available:
            log.info("store available again", store=self.description)
        else:
            log.warning("store unavailable", store=self.description, error=str(error))


def open_store(url: str, password_file: Path | None = None, pool_size: int = 4) -> Store:
    """A :class:`Store` (not opened yet) on the database ``--store`` names: ``sqlite:PATH``
    or a ``postgresql://`` URL. The password of PostgreSQL is read from `password_file` now
    (one trailing newline ignored) when given, else taken from the URL or libpq's PGPASSWORD
    and PGPASSFILE. Raises :class:`StoreError` for another scheme, a password file with
    SQLite, or a password file that cannot be read."""
    if url.startswith("sqlite:"):
        if password_file is not None:
            raise StoreError("a store password file is for PostgreSQL, not sqlite:")
        from goverse.node._sqlite_store import SqliteBackend

        return Store(SqliteBackend(Path(url.removeprefix("sqlite:"))))
    if url.startswith(("postgresql://", "postgres://")):
        from goverse.node._postgres_store import PostgresBackend

        password = None if password_file is None else _read_password(password_file)
        return Store(PostgresBackend(url, password, pool_size))
    raise StoreError(f"{redact_store(url)!r} is not a store: use sqlite:PATH or postgresql://")


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise StoreError(f"cannot read the store password file {path}: {reason}") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise StoreError(f"the store password file {path} is empty")
    return password


__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "Backend",
    "ObjectKey",
    "Op",
    "OpKind",
    "Outcome",
    "SchemaTooNew",
    "StaleEpoch",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]
