"""Object state: loading a stateful object's state from the store and saving it back, fenced.

Every store operation carries the epoch this node owns the object's shard with: the claim's
revision with etcd membership, else the epoch the store handed this node at start (which grows
across restarts). The store refuses an operation older than the row's epoch, and a load
claims the row, so a node that lost a shard can never overwrite what the new owner saved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from google.protobuf.message import DecodeError, Message

from goverse._object_types import ObjectType
from goverse.errors import DataLoss, Internal, ShardNotServed, Unavailable
from goverse.node._shards import ShardTable
from goverse.node._store import ObjectKey, StaleEpoch, Store, StoreError, StoreUnavailable
from goverse.objects import Object
from goverse.placement import shard_of
from goverse.server import StartupError
from goverse.wire import ShardRefusal

log = structlog.get_logger(__name__)

T = TypeVar("T")

RETRY_INITIAL = 0.2
RETRY_MAX = 5.0
"""Bounds of the backoff between attempts to open an unreachable store."""


class ObjectState:
    """The node's view of its store: opens it, and loads, saves and deletes object states.

    Without a store, a stateful object starts from an empty state at each activation and
    nothing is saved. With one, :meth:`open` retries until the store is reachable and fails
    the node for what retrying cannot fix (a schema newer than this code). A call that needs
    the store while the first attempt to open it is under way waits for that attempt; once it
    failed, calls answer UNAVAILABLE until a later attempt succeeds. Every error reaches
    callers as a :class:`~goverse.errors.GoverseError`: UNAVAILABLE when the store cannot be
    reached, DATA_LOSS for a stored state that does not parse, and a shard refusal (routing
    sends the call again, to the owner it finds) when a newer owner claimed the object.
    """

    def __init__(
        self, store: Store | None, table: ShardTable, node: str, static: bool = True
    ) -> None:
        self.store = store
        self._table = table
        self._node = node
        self._static = static
        self._static_epoch = 0
        self._opened = asyncio.Event()
        self._first_attempt: asyncio.Event | None = None
        """Set once :meth:`open`'s first attempt ended, opened or not (None before open)."""

    @property
    def description(self) -> str:
        """Where state is kept, without credentials; "" in memory."""
        return "" if self.store is None else self.store.description

    @property
    def available(self) -> bool:
        """The store was opened and its last transaction succeeded (True without a store)."""
        return self.store is None or (self._opened.is_set() and self.store.available)

    async def open(self, fail: Callable[[BaseException], None]) -> None:
        """Opens the store, retrying while it is unreachable, then takes this node's static
        epoch; runs as the node's ``store`` task. A store that cannot be used (schema too new)
        is passed to `fail`."""
        store = self.store
        if store is None:
            return
        first_attempt = self._first_attempt = asyncio.Event()
        delay = RETRY_INITIAL
        try:
            while True:
                try:
                    await store.open()
                    if self._static:
                        self._static_epoch = await store.next_epoch()
                except StoreUnavailable as error:
                    log.warning("store not reachable", store=store.description, error=str(error))
                    first_attempt.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                except StoreError as error:
                    fail(StartupError(f"--store {store.description}: {error}"))
                    return
                break
            self._opened.set()
            log.info("store open", store=store.description, epoch=self._static_epoch)
        finally:
            # Set after _opened: a call woken by it finds the store open when it is.
            first_attempt.set()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def epoch(self, key: ObjectKey) -> int:
        """The epoch this node's operations on `key` carry now: its claim's (etcd), else the
        epoch the store gave this run (static); 0 for a shard not owned, which no store
        operation on an existing row accepts."""
        return self._table.epoch(shard_of(*key)) or self._static_epoch

    async def restore(self, object_type: ObjectType, key: ObjectKey, instance: Object) -> bytes:
        """Gives a stateful `instance` its stored state (an empty one when there is none) and
        claims its row; returns the state as stored, to tell later whether it changed."""
        state_type = object_type.state_type
        if state_type is None:
            return b""
        state: Message = state_type()
        data = None
        if self.store is not None:
            data = await self._guarded(key, lambda: self._load(key))
        if data:
            try:
                state.ParseFromString(data)
            except DecodeError as error:
                log.error(
                    "stored state does not parse",
                    object_type=key[0],
                    object_id=key[1],
                    state_type=state_type.DESCRIPTOR.full_name,
                    bytes=len(data),
                )
                raise DataLoss(
                    f"the stored state of {key[0]}/{key[1]} is not a valid "
                    f"{state_type.DESCRIPTOR.full_name}; it was left as it is"
                ) from error
        instance.state = state  # type: ignore[attr-defined]
        return data or b""

    async def save(self, key: ObjectKey, instance: Object, stored: bytes) -> bytes:
        """Saves `instance`'s state when it differs from `stored`; returns what is stored."""
        if self.store is None:
            return stored
        try:
            data = instance.state.SerializeToString(deterministic=True)  # type: ignore[attr-defined]
        except Exception as error:
            # The object's own defect (a proto2 required field unset, `state` replaced by
            # something else): a failed save of this object, not of the node's upkeep.
            log.exception("state does not serialize", object_type=key[0], object_id=key[1])
            raise Internal(
                f"the state of {key[0]}/{key[1]} cannot be serialized ({type(error).__name__})"
            ) from error
        if data == stored:
            return stored
        store = self.store
        await self._guarded(key, lambda: store.save(key, self.epoch(key), data))
        return bytes(data)

    async def delete(self, key: ObjectKey) -> None:
        """Removes the stored state of `key` (nothing without a store)."""
        store = self.store
        if store is not None:
            await self._guarded(key, lambda: store.delete(key, self.epoch(key)))

    async def _load(self, key: ObjectKey) -> bytes | None:
        assert self.store is not None
        return await self.store.load(key, self.epoch(key))

    async def _guarded(self, key: ObjectKey, operation: Callable[[], Awaitable[T]]) -> T:
        """Runs a store operation on `key`, its failure told as the caller's status."""
        what = f"{key[0]}/{key[1]}"
        if not self._opened.is_set() and self._first_attempt is not None:
            # A node serves as soon as it listens, before its store is open: without this
            # wait, the calls a gate sends a node it has just (re)started fail with
            # UNAVAILABLE for the few milliseconds it takes to connect to a healthy store.
            await self._first_attempt.wait()
        if not self._opened.is_set():
            raise Unavailable(f"the state of {what} cannot be reached: the store is not open yet")
        try:
            return await operation()
        except StaleEpoch as error:
            stored = "deleted" if error.stored is None else f"claimed with epoch {error.stored}"
            raise ShardNotServed(
                shard_of(*key),
                ShardRefusal.NOT_OWNER,
                f"{what} was {stored} by a newer owner than node {self._node} "
                f"(epoch {error.epoch}): nothing was written",
            ) from error
        except StoreUnavailable as error:
            raise Unavailable(f"the state of {what} cannot be reached: {error}") from error
