"""Call context: the deadline and the chain of objects of the call being served, per task.

A call chain is the list of objects whose methods are running, outermost first, for one
request: a client calls A, A calls B, B calls C. Each of them holds its turn until its callee
answers, so a call to an object already in the chain would wait for a turn that is never
given. The node refuses such a call at once instead. The chain travels with node-to-node
calls (in the ``CallFrame`` on a Calls stream, in the ``goverse-call-chain-bin`` metadata of a
unary call), so cycles across nodes are refused too.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from goverse import wire
from goverse._scoped import Scoped
from goverse.errors import InvalidArgument
from goverse.objects import Caller, Principal
from goverse.server import PLAINTEXT_PEER, Peer, Role
from goverse.v1 import node_pb2

ObjectKey = tuple[str, str]
"""An object's identity: (type, id)."""

MAX_CHAIN_DEPTH = 64
"""Longest call chain allowed; deeper calls are refused (runaway recursion between objects)."""

_chain: contextvars.ContextVar[tuple[ObjectKey, ...]] = contextvars.ContextVar(
    "goverse_call_chain", default=()
)
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "goverse_call_deadline", default=None
)


def caller_of(message: node_pb2.Caller, peer: Peer = PLAINTEXT_PEER) -> Caller:
    """The caller an object sees, from the `Caller` a gate or node sent with the call.

    A client id and a principal are trusted only from a gate, which stamps those of the client
    it authenticated: from a peer whose certificate says it is a node, both are ignored (the
    object sees an empty id and no principal). In plaintext no peer is known and both are
    taken.
    """
    if peer.role is Role.NODE:
        return Caller("", message.object_type, message.object_id)
    principal = None
    if message.HasField("principal"):
        principal = Principal(message.principal.subject, dict(message.principal.claims))
    return Caller(message.client_id, message.object_type, message.object_id, principal)


def caller_message(caller: Caller) -> node_pb2.Caller:
    """The `Caller` message that carries `caller` to another node (inverse of caller_of)."""
    message = node_pb2.Caller(
        client_id=caller.client_id, object_type=caller.object_type, object_id=caller.object_id
    )
    if caller.principal is not None:
        message.principal.subject = caller.principal.subject
        message.principal.claims.update(caller.principal.claims)
    return message


def current_chain() -> tuple[ObjectKey, ...]:
    """The objects whose calls are running in this context, outermost first."""
    return _chain.get()


def serving(key: ObjectKey) -> contextlib.AbstractContextManager[None]:
    """Marks `key` as serving a call in this context for the duration of the block."""
    return Scoped(_chain, (*_chain.get(), key), None)


def remaining() -> float | None:
    """Seconds left before the deadline of the call being served; None when it has none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def deadline_after(seconds: float | None) -> contextlib.AbstractContextManager[None]:
    """Makes the code in the block run under a deadline `seconds` from now (None: none)."""
    return Scoped(_deadline, None if seconds is None else time.monotonic() + seconds, None)


def chain_metadata(chain: Sequence[ObjectKey]) -> tuple[tuple[str, bytes], ...]:
    """gRPC metadata carrying `chain` to the node that serves the next call."""
    if not chain:
        return ()
    return ((wire.CALL_CHAIN_KEY, json.dumps([list(key) for key in chain]).encode()),)


def chain_refs(chain: Sequence[ObjectKey]) -> list[node_pb2.ObjectRef]:
    """`chain` as a ``CallFrame`` carries it to the node that serves the next call."""
    return [node_pb2.ObjectRef(object_type=key[0], object_id=key[1]) for key in chain]


_NOTHING_TO_FOLLOW = contextlib.nullcontext()


def following(refs: Sequence[node_pb2.ObjectRef]) -> contextlib.AbstractContextManager[None]:
    """Adopts the call chain a ``CallFrame`` carried (:func:`chain_refs`) for the block;
    raises :class:`~goverse.errors.InvalidArgument` for one longer than any node sends."""
    if not refs:  # a gate's call: its chain starts here
        return _NOTHING_TO_FOLLOW
    if len(refs) > MAX_CHAIN_DEPTH:
        raise InvalidArgument(f"the call chain is longer than {MAX_CHAIN_DEPTH} objects")
    return Scoped(_chain, tuple((ref.object_type, ref.object_id) for ref in refs), None)


def chain_from_metadata(metadata: Sequence[Any] | None) -> tuple[ObjectKey, ...]:
    """The chain sent by :func:`chain_metadata`; empty when absent or malformed."""
    for item in metadata or ():
        key, value = item[0], item[1]
        if key != wire.CALL_CHAIN_KEY or not isinstance(value, bytes):
            continue
        try:
            decoded = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested past the stack
            return ()
        if not isinstance(decoded, list) or len(decoded) > MAX_CHAIN_DEPTH:
            return ()
        chain: list[ObjectKey] = []
        for entry in decoded:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not all(isinstance(part, str) for part in entry)
            ):
                return ()
            chain.append((entry[0], entry[1]))
        return tuple(chain)
    return ()


@contextlib.contextmanager
def inbound(context: Any) -> Iterator[None]:
    """Adopts the deadline and call chain of an incoming gRPC call (`context` is its
    ``grpc.aio.ServicerContext``) for the duration of the block."""
    chain_token = _chain.set(chain_from_metadata(context.invocation_metadata()))
    try:
        with deadline_after(context.time_remaining()):
            yield
    finally:
        _chain.reset(chain_token)


__all__ = [
    "MAX_CHAIN_DEPTH",
    "ObjectKey",
    "caller_message",
    "caller_of",
    "chain_from_metadata",
    "chain_metadata",
    "chain_refs",
    "current_chain",
    "deadline_after",
    "following",
    "inbound",
    "remaining",
    "serving",
]
