"""Shard table: which shards this node serves now, and the calls in flight in each of them.

Every call a node serves passes :meth:`ShardTable.admit` before it waits for its object's turn:
one synchronous step checks that the shard is *owned* (not draining, not someone else's) and
that the lease is valid, and counts the call in flight. A release marks the shard *draining* in
one synchronous step too and then waits for its count to reach zero, so no call can slip into a
shard that is being handed off. Fencing makes every shard unowned at once and cancels the calls
still running: a node never serves an object after another node may have activated it. A call
the fence cancelled answers UNAVAILABLE (a cancelled gRPC handler answers nothing: its caller
would wait for its deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from types import TracebackType
from typing import Any

from goverse.errors import ShardNotServed, Unavailable
from goverse.placement import SHARD_COUNT
from goverse.wire import ShardRefusal


class ShardState(enum.Enum):
    UNOWNED = "unowned"
    """Another node's, or nobody's yet: calls are refused as "not the owner"."""
    OWNED = "owned"
    """This node's: calls are served."""
    DRAINING = "draining"
    """Being handed off: new calls are refused as "moving"; those in flight finish."""


class ShardTable:
    """The state, ownership epoch and calls in flight of each of the 8192 shards.

    `lease_valid` says whether this node may still serve anything (static membership: always);
    it is asked on every admission, so a node whose lease ran out refuses calls even before its
    fencing has run (after a pause, the first thing the loop runs may be a call).
    """

    def __init__(
        self,
        node: str,
        lease_valid: Callable[[], bool] = lambda: True,
        owner_of: Callable[[int], str | None] = lambda shard: None,
    ) -> None:
        self._node = node
        self._lease_valid = lease_valid
        self._owner_of = owner_of
        self._state = [ShardState.UNOWNED] * SHARD_COUNT
        self._epoch = [0] * SHARD_COUNT
        self._calls: list[set[asyncio.Task[Any]]] = [set() for _ in range(SHARD_COUNT)]
        self._idle: dict[int, asyncio.Event] = {}
        self._fenced: dict[asyncio.Task[Any], str] = {}
        """The calls :meth:`fence` cancelled, until they end, with why."""

    # -- reading --------------------------------------------------------------------------

    def state(self, shard: int) -> ShardState:
        return self._state[shard]

    def epoch(self, shard: int) -> int:
        """The ownership epoch of a shard this node owns (0 otherwise, and in static mode)."""
        return self._epoch[shard]

    def shards(self, state: ShardState) -> list[int]:
        return [shard for shard in range(SHARD_COUNT) if self._state[shard] is state]

    def count(self, state: ShardState) -> int:
        return sum(1 for value in self._state if value is state)

    def in_flight(self, shard: int) -> int:
        return len(self._calls[shard])

    # -- serving --------------------------------------------------------------------------

    def admit(self, shard: int, what: str = "") -> _Admission:
        """Admits a call for `shard` (the block gets the ownership epoch) or raises
        :class:`~goverse.errors.ShardNotServed` saying why, about `what` (the object). The
        call counts as in flight until the block ends. When :meth:`fence` cancels it, the
        block raises :class:`~goverse.errors.Unavailable` instead of the cancellation."""
        return _Admission(self, shard, what)

    def _enter(self, shard: int, what: str) -> asyncio.Task[Any]:
        state = self._state[shard]
        if state is ShardState.DRAINING:
            raise ShardNotServed(
                shard, ShardRefusal.MOVING, f"{what} is moving away from node {self._node}"
            )
        if state is not ShardState.OWNED or not self._lease_valid():
            owner = self._owner_of(shard)
            by = f"owned by node {owner}, not by {self._node}" if owner else "not owned by"
            raise ShardNotServed(
                shard,
                ShardRefusal.NOT_OWNER,
                f"{what} is {by}" if owner else f"{what} is {by} node {self._node}",
            )
        task = asyncio.current_task()
        assert task is not None, "a call always runs in a task"
        self._calls[shard].add(task)
        return task

    def _exit(self, shard: int, what: str, task: asyncio.Task[Any], cancelled: bool) -> None:
        why = self._fenced.pop(task, None)
        calls = self._calls[shard]
        calls.discard(task)
        if not calls and shard in self._idle:
            self._idle.pop(shard).set()
        # The fence's cancellation is ours to end; any other (the caller gone, the server
        # stopping) goes on.
        if cancelled and why is not None and task.uncancel() == 0:
            raise Unavailable(
                f"node {self._node} {why} while {what} ran the call: it was stopped, and "
                "may have run in part"
            ) from None

    def still_admitted(self, shard: int, what: str = "") -> None:
        """Raises :class:`~goverse.errors.ShardNotServed` (not the owner) when a call admitted
        for `shard` may not run any more: the shard is no longer this node's (fenced, or taken
        away) or the lease is not valid now. Checked again once the call has its object's
        turn, just before anything of the object runs: the call may have waited there through
        a pause of the process past its lease (SIGSTOP, a long GC), and on resumption it would
        run before the fence, which comes from a timer, had cancelled it. A draining shard
        still runs the calls it admitted."""
        if not self._may_run(shard):
            owner = self._owner_of(shard)
            by = f"owned by node {owner}, not by" if owner else "not owned by"
            raise ShardNotServed(
                shard,
                ShardRefusal.NOT_OWNER,
                f"{what or f'shard {shard}'} is {by} node {self._node}",
            )

    def still_serving(self, shard: int, what: str = "") -> None:
        """Raises :class:`~goverse.errors.Unavailable` when the lease stopped being valid (or
        the shard left this node) while an admitted call ran, before its answer goes out: the
        process was paused in the middle of the call (SIGSTOP, a long GC), and another node
        may own the object by now, so the result is not given as this node's. The call may
        have run, so it is not sent again (as for a call the fence cancels)."""
        if not self._may_run(shard):
            raise Unavailable(
                f"node {self._node} stopped serving {what or f'shard {shard}'} while it ran "
                "the call: it may have run, and its result is not given"
            )

    def _may_run(self, shard: int) -> bool:
        """Whether an admitted call for `shard` may still run and answer: the shard is still
        this node's (owned, or draining) and the lease is valid now."""
        return self._state[shard] is not ShardState.UNOWNED and self._lease_valid()

    # -- ownership ------------------------------------------------------------------------

    def own(self, shard: int, epoch: int = 0) -> None:
        """This node owns `shard` from now on (claimed with `epoch`, or static)."""
        self._state[shard] = ShardState.OWNED
        self._epoch[shard] = epoch

    def start_draining(self, shard: int) -> None:
        """New calls for `shard` are refused as moving from now on."""
        self._state[shard] = ShardState.DRAINING

    def keep(self, shard: int) -> None:
        """A handoff that could not finish: the shard is served again."""
        if self._state[shard] is ShardState.DRAINING:
            self._state[shard] = ShardState.OWNED

    async def drained(self, shard: int, timeout: float) -> bool:
        """Waits up to `timeout` seconds for the calls in flight in a draining shard to end;
        True when none is left."""
        if not self._calls[shard]:
            return True
        idle = self._idle.setdefault(shard, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await idle.wait()
        return not self._calls[shard]

    def disown(self, shard: int) -> None:
        """`shard` is no longer this node's (its key was deleted, or it was never claimed)."""
        self._state[shard] = ShardState.UNOWNED
        self._epoch[shard] = 0

    def fence(self, why: str = "fenced itself") -> int:
        """Makes every shard unowned at once and cancels every call in flight, each of which
        then answers UNAVAILABLE saying `why` the node stopped it (see :meth:`admit`); returns
        how many calls were cancelled. Safe to call again."""
        self._state = [ShardState.UNOWNED] * SHARD_COUNT
        self._epoch = [0] * SHARD_COUNT
        cancelled = 0
        for calls in self._calls:
            for task in calls:
                if task not in self._fenced and task.cancel():
                    self._fenced[task] = why
                    cancelled += 1
        return cancelled


class _Admission:
    """The block of one admitted call (:meth:`ShardTable.admit`). A class, not a generator:
    entered once per call served, where contextlib's machinery cost more than the work."""

    __slots__ = ("_shard", "_table", "_task", "_what")

    def __init__(self, table: ShardTable, shard: int, what: str) -> None:
        self._table = table
        self._shard = shard
        self._what = what or f"shard {shard}"

    def __enter__(self) -> int:
        self._task = self._table._enter(self._shard, self._what)
        return self._table._epoch[self._shard]

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        cancelled = kind is not None and issubclass(kind, asyncio.CancelledError)
        self._table._exit(self._shard, self._what, self._task, cancelled)


__all__ = ["ShardState", "ShardTable"]
