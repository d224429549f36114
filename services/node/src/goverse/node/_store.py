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
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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


__all__ = [
    "Backend",
    "ObjectKey",
    "Op",
    "OpKind",
    "Outcome",
    "StaleEpoch",
    "StoreError",
    "StoreUnavailable",
]
