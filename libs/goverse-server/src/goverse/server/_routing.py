"""Routing: a call's way to its shard's owner — look the owner up, hold and retry what did not run.

Routing sits above the transport: it decides *where* a call goes and *whether to try again*;
how a call is sent (a unary RPC today, a frame on a long-lived stream later) is the caller's
``send``. Gates route client calls with it, nodes the calls their objects make to objects on
other nodes. The design: ``docs/membership.md`` ("Gates and routing").

A call is sent again only when it is known not to have run:

- the shard has no owner (moving, or its owner died): nothing was sent;
- the owner is not reachable: nothing was sent (routing waits for the owner's channel to be
  READY before sending, so a call that gave up waiting never left this process);
- the transport did not send it (:class:`NotSent`: a call stream that was not open yet, or
  ended before the call was written): nothing was sent;
- the node refused it for its shard (:class:`~goverse.errors.ShardNotServed`, the
  ``goverse-shard`` trailing metadata, or a :class:`~goverse.errors.CallError` with a
  ``refusal`` from a call stream): the node ran nothing.

Any other failure — UNAVAILABLE in the middle of a call, DEADLINE_EXCEEDED from the node, any
status the node answered — may have run the call, and is answered as it is.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import grpc
import structlog

from goverse import wire
from goverse.errors import CallError, NotSent, ShardNotServed
from goverse.server._membership import ClusterView
from goverse.server._waits import first_of
from goverse.transport import Backoff, ChannelPool

log = structlog.get_logger(__name__)

R = TypeVar("R")

Send = Callable[[str, float], Awaitable[R]]
"""How a call is sent: ``send(address, timeout)`` returns the answer of the node at `address`
within `timeout` seconds, or raises what it failed with: the ``grpc.aio.AioRpcError`` of a
unary call, the :class:`~goverse.errors.CallError` of a call on a stream (its ``refusal`` set
for a shard refusal), :class:`NotSent` when it sent nothing (a local send raises
:class:`~goverse.errors.ShardNotServed` for a refusal). A unary send uses
``wait_for_ready=True``: should the connection drop between routing's check and the send, gRPC
holds the call for the next connection instead of failing it fast."""


RETRY_INITIAL = timedelta(milliseconds=20)
RETRY_MAX = timedelta(seconds=1)
"""Between attempts on the same view a call waits a delay with full jitter, its ceiling
doubling from 20 ms to 1 s, or less when the view changes first."""
MIN_RETRY_DELAY = 0.005
"""However the jitter falls, no attempt follows the last one sooner: no tight loop."""
DEADLINE_MARGIN = 0.1
MARGIN_SHARE = 0.2
"""Routing gives up this long before the call's deadline (100 ms, at most a fifth of the
call's time), so the caller gets routing's answer (UNAVAILABLE naming the node, say) rather
than its own DEADLINE_EXCEEDED racing it."""


class _Wait(enum.Enum):
    READY = "ready"
    VIEW_CHANGED = "view changed"
    TIMED_OUT = "timed out"
    CLOSED = "channel closed"


class Routing:
    """Sends calls to the owner of their shard in `view`, holding and retrying what did not run.

    `pool` holds the channels to nodes; routing watches a channel's state to know whether a
    call can be sent yet. `local` is this process's own node address, if it is a node: a call
    whose owner it is is sent at once, with no channel.
    """

    def __init__(
        self,
        view: ClusterView,
        pool: ChannelPool,
        *,
        local: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._view = view
        self._pool = pool
        self._local = local
        self._rng = rng or random.Random()

    async def call(self, shard: int, send: Send[R], timeout: float) -> R:
        """Sends a call for `shard` to its owner by `send` and returns the answer, within
        `timeout` seconds.

        With no owner, an owner that cannot be reached, or a refusal for the shard, it waits
        (for the next change of the view, or a jittered delay) and tries again, on the owner
        it finds then. It gives up a margin before the deadline (:data:`DEADLINE_MARGIN`) and
        raises the last failure as a :class:`~goverse.errors.CallError`: UNAVAILABLE naming
        the node that stayed unreachable, UNAVAILABLE "no owner", or the node's refusal. A
        failure of a call that was sent is raised at once, with the node's status (UNAVAILABLE
        and DEADLINE_EXCEEDED name the node).
        """
        loop = asyncio.get_running_loop()
        if timeout <= 0:
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left to send the call")
        started = loop.time()
        deadline = started + timeout
        give_up = deadline - min(DEADLINE_MARGIN, timeout * MARGIN_SHARE)
        backoff: Backoff | None = None
        attempts = 0
        while True:
            version = self._view.version
            address = self._view.owner_address(shard)
            waited = _Wait.READY
            if address is None:
                last = CallError(grpc.StatusCode.UNAVAILABLE, f"shard {shard} has no owner")
            elif (
                address != self._local
                and (waited := await self._connected(address, version, give_up)) is not _Wait.READY
            ):
                last = CallError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"node {address} is unavailable: not connected after "
                    f"{loop.time() - started:.3g}s",
                )
            else:
                attempts += 1
                budget = deadline - loop.time()
                try:
                    return await send(address, budget)
                except ShardNotServed as refused:
                    last = CallError(refused.status_code, refused.message)
                except NotSent as unsent:
                    last = CallError(
                        grpc.StatusCode.UNAVAILABLE, f"node {address} is unavailable: {unsent}"
                    )
                except CallError as error:
                    if address == self._local:
                        raise  # what an object's own call to another object failed with
                    if error.refusal is None:
                        failed = _named(address, error.status_code, error.message, budget)
                        log.debug(
                            "node call failed",
                            node=address,
                            code=failed.status_code.name,
                            details=failed.message,
                        )
                        raise failed from None
                    last = CallError(error.status_code, error.message)
                except grpc.aio.AioRpcError as error:
                    if wire.shard_refusal_of(error.trailing_metadata()) is None:
                        failed = _failed(address, error, budget)
                        log.debug(
                            "node call failed",
                            node=address,
                            code=failed.status_code.name,
                            details=failed.message,
                        )
                        raise failed from None
                    last = CallError.from_rpc_error(error)
            if loop.time() >= give_up or waited is _Wait.TIMED_OUT:
                log.debug(
                    "routing gave up",
                    shard=shard,
                    attempts=attempts,
                    code=last.status_code.name,
                    details=last.message,
                )
                raise last
            if waited is _Wait.VIEW_CHANGED:
                continue  # a new owner, perhaps: look again at once
            if backoff is None:
                backoff = Backoff(RETRY_INITIAL, RETRY_MAX, rng=self._rng)
            delay = max(backoff.next_delay(), MIN_RETRY_DELAY)
            log.debug(
                "routing retries",
                shard=shard,
                node=address,
                attempts=attempts,
                reason=last.message,
                retry_in_s=round(delay, 3),
            )
            pause = min(delay, give_up - loop.time())
            if await self._owner_changed(shard, address, version, pause):
                backoff.reset()  # progress: the next refusal, if any, is a new owner's

    async def _owner_changed(
        self, shard: int, address: str | None, version: int, timeout: float
    ) -> bool:
        """Waits until the view names another owner address for `shard` than `address`
        (None: no owner), or `timeout` seconds pass; True when it does. While shards move the
        view changes with every key, and waking on every change only to meet the same refusal
        again grew the backoff to its ceiling: the calls to a moving shard waited up to a
        second longer than its move took."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while self._view.owner_address(shard) == address:
            left = until - loop.time()
            if left <= 0 or not await first_of([self._view.changed(version)], left):
                return False
            version = self._view.version
        return True

    async def _connected(self, address: str, version: int, give_up: float) -> _Wait:
        """Waits until the channel to `address` is READY (asking it to connect), the view
        changes (the owner may be another node now), or `give_up` passes."""
        channel = self._pool.get(address)
        state = channel.get_state(try_to_connect=True)
        loop = asyncio.get_running_loop()
        while state is not grpc.ChannelConnectivity.READY:
            if state is grpc.ChannelConnectivity.SHUTDOWN:
                return _Wait.CLOSED
            left = give_up - loop.time()
            if left <= 0:
                return _Wait.TIMED_OUT
            done = await first_of(
                [self._view.changed(version), channel.wait_for_state_change(state)], left
            )
            if 0 in done:
                return _Wait.VIEW_CHANGED
            state = channel.get_state(try_to_connect=True)
        return _Wait.READY


def _failed(address: str, error: grpc.aio.AioRpcError, timeout: float) -> CallError:
    """A call that was sent failed: the node's status, naming the node when the status alone
    would not say which."""
    return _named(address, error.code(), error.details() or error.code().name, timeout)


def _named(address: str, code: grpc.StatusCode, details: str, timeout: float) -> CallError:
    """The error of a call sent to `address` that failed with `code` and `details`, naming
    the node when the status alone would not say which."""
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"node {address} is unavailable: {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"node {address} did not answer within {max(timeout, 0.0):.3g}s: {details}"
    return CallError(code, details)


__all__ = ["DEADLINE_MARGIN", "NotSent", "Routing", "Send"]
