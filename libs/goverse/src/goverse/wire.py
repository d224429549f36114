"""Wire contract: what gate, node and client agree on beside the generated code.

The messages and services are in ``goverse.v1`` (generated from ``protos/``); this module holds
the rest of the contract, each name once: service and method names, the metadata keys calls
and streams carry, the reasons a stream is closed for, and how payloads are packed into and
out of ``google.protobuf.Any``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from goverse.v1 import gate_pb2, node_pb2

M = TypeVar("M", bound=Message)

# -- services and methods ----------------------------------------------------------------------

GATE_SERVICE: str = gate_pb2.DESCRIPTOR.services_by_name["GateService"].full_name
"""``goverse.v1.GateService``: what clients call; also its health-check service name."""
NODE_SERVICE: str = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
"""``goverse.v1.NodeService``: what gates and nodes call; also its health-check service name."""


def method_path(service: str, method: str) -> str:
    """The full gRPC method name, ``/<service>/<method>``."""
    return f"/{service}/{method}"


GATE_REGISTER = method_path(GATE_SERVICE, "Register")
GATE_SESSION = method_path(GATE_SERVICE, "Session")
GATE_CALL_OBJECT = method_path(GATE_SERVICE, "CallObject")
GATE_CREATE_OBJECT = method_path(GATE_SERVICE, "CreateObject")
GATE_DELETE_OBJECT = method_path(GATE_SERVICE, "DeleteObject")
NODE_REGISTER_GATE = method_path(NODE_SERVICE, "RegisterGate")
NODE_CALL_OBJECT = method_path(NODE_SERVICE, "CallObject")
NODE_CALLS = method_path(NODE_SERVICE, "Calls")

CALL_OPS = {"call": "CallObject", "create": "CreateObject", "delete": "DeleteObject"}
"""The op of a call on a call stream (the oneof of SessionCall and CallFrame) -> the unary RPC
it stands for: a call on a stream is named, traced and measured as that RPC."""
GATE_CALL_METHODS = {op: method_path(GATE_SERVICE, rpc) for op, rpc in CALL_OPS.items()}
NODE_CALL_METHODS = {op: method_path(NODE_SERVICE, rpc) for op, rpc in CALL_OPS.items()}
MAX_TIMEOUT_MS = 2**32 - 1
"""The longest deadline a call carries: ``timeout_ms`` of a ``SessionCall`` or ``CallFrame`` is
a uint32 of milliseconds (49 days)."""

# -- metadata keys -----------------------------------------------------------------------------

AUTHORIZATION_KEY = "authorization"
"""Metadata of a registration carrying the client's token: ``Bearer <token>``."""
CLIENT_ID_KEY = "goverse-client-id"
"""Call metadata: the client id its Register stream was given."""
CREDENTIAL_KEY = "goverse-credential"
"""Call metadata: the secret of that registration; valid while its stream is open."""
GATE_ID_KEY = "goverse-gate-id"
"""Calls stream metadata: the id of the gate that opened it."""
NODE_ID_KEY = "goverse-node-id"
"""Calls stream metadata: the address of the node that opened it (object-to-object calls)."""
CLOSE_REASON_KEY = "goverse-close-reason"
"""Trailing metadata of a stream a server ended: a :class:`CloseReason` value."""
CALL_CHAIN_KEY = "goverse-call-chain-bin"
"""Node-to-node call metadata: the objects already serving this call chain (JSON, binary)."""
SHARD_KEY = "goverse-shard"
"""Trailing metadata of a call a node refused for its shard, before running anything: a
:class:`ShardRefusal` value. Routing retries such a call (on the owner it finds next)."""


class CloseReason(enum.StrEnum):
    """Why a long-lived stream (Register, RegisterGate) or its queue was closed.

    Sent in the ``goverse-close-reason`` trailing metadata, logged as ``reason``, and counted.
    """

    SHUTDOWN = "shutdown"
    """The server is stopping; the peer should go to another gate, or reconnect."""
    SLOW_CONSUMER = "slow_consumer"
    """The client did not read its pushes fast enough and its queue overflowed."""
    REPLACED = "replaced"
    """A newer stream of the same peer (the same gate id) took this one's place."""
    PEER_GONE = "peer_gone"
    """The peer cancelled the stream or its connection ended."""
    TOKEN_EXPIRED = "token_expired"
    """The token the client registered with has expired; it should register again with a
    fresh one."""


class ShardRefusal(enum.StrEnum):
    """Why a node refused a call for the object's shard (``goverse-shard`` trailing metadata).

    Either way the call did not run, so it is safe to send again; the status stays
    FAILED_PRECONDITION for callers that do not read the metadata.
    """

    NOT_OWNER = "not-owner"
    """The node does not own the shard: the caller's view of the owners is stale."""
    MOVING = "moving"
    """The node owns the shard but is handing it off; the next owner serves it soon."""


def metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    """The first text value of `key` in gRPC metadata, or None."""
    for item_key, value in metadata or ():
        if item_key == key and isinstance(value, str):
            return value
    return None


def close_metadata(reason: CloseReason | None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that tells the peer why a server ended its stream (none for None)."""
    return () if reason is None else ((CLOSE_REASON_KEY, reason.value),)


def close_reason_of(trailing_metadata: Iterable[tuple[str, Any]] | None) -> CloseReason | None:
    """The :class:`CloseReason` a server attached to the end of a stream, or None."""
    value = metadata_value(trailing_metadata, CLOSE_REASON_KEY)
    try:
        return None if value is None else CloseReason(value)
    except ValueError:  # a newer server's reason this client does not know
        return None


def shard_metadata(refusal: ShardRefusal) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that marks a call refused for its shard."""
    return ((SHARD_KEY, refusal.value),)


def shard_refusal_of(trailing_metadata: Iterable[tuple[str, Any]] | None) -> ShardRefusal | None:
    """The :class:`ShardRefusal` a node attached to a call it refused, or None (the call was
    not refused for its shard, or by a node that does not say so)."""
    value = metadata_value(trailing_metadata, SHARD_KEY)
    try:
        return None if value is None else ShardRefusal(value)
    except ValueError:  # a newer node's reason: not known to be safe to send again
        return None


# -- payloads ----------------------------------------------------------------------------------


class UnpackError(ValueError):
    """A packed payload is not of the expected type, or does not parse as it."""


TYPE_URL_PREFIX = "type.googleapis.com/"
"""What ``Any.Pack`` puts before a message's full name."""


def pack(message: Message) -> any_pb2.Any:
    """`message` as a ``google.protobuf.Any``, as ``Any.Pack`` makes it (every call and reply
    is packed: its own fields set here cost half of what ``Pack``'s Python code does)."""
    packed = any_pb2.Any()
    pack_into(packed, message)
    return packed


def pack_into(packed: any_pb2.Any, message: Message) -> None:
    """Packs `message` into `packed`, a field of a message being built (a new ``Any`` given to
    that message would be copied into it)."""
    packed.type_url = TYPE_URL_PREFIX + message.DESCRIPTOR.full_name
    packed.value = message.SerializeToString()


def is_text(value: str) -> bool:
    """Whether `value` can travel as a protobuf string: it encodes as UTF-8 (a lone surrogate,
    which JSON's ``"\\ud800"`` or an undecodable header byte gives, does not)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def unpack(packed: any_pb2.Any, message_type: type[M]) -> M:
    """The message of `message_type` that `packed` holds; raises :class:`UnpackError` when it
    holds another type (or nothing) or does not parse."""
    expected = message_type.DESCRIPTOR.full_name
    got = packed.TypeName()
    if got != expected:
        raise UnpackError(f"got {got or 'nothing'}, expected {expected}")
    message = message_type()
    try:
        message.ParseFromString(packed.value)
    except DecodeError:
        raise UnpackError(f"got an unparseable {expected}") from None
    return message


__all__ = [
    "AUTHORIZATION_KEY",
    "CALL_CHAIN_KEY",
    "CALL_OPS",
    "CLIENT_ID_KEY",
    "CLOSE_REASON_KEY",
    "CREDENTIAL_KEY",
    "GATE_CALL_METHODS",
    "GATE_CALL_OBJECT",
    "GATE_CREATE_OBJECT",
    "GATE_DELETE_OBJECT",
    "GATE_ID_KEY",
    "GATE_REGISTER",
    "GATE_SERVICE",
    "GATE_SESSION",
    "NODE_CALLS",
    "NODE_CALL_METHODS",
    "NODE_CALL_OBJECT",
    "NODE_ID_KEY",
    "NODE_REGISTER_GATE",
    "NODE_SERVICE",
    "SHARD_KEY",
    "TYPE_URL_PREFIX",
    "CloseReason",
    "ShardRefusal",
    "UnpackError",
    "close_metadata",
    "close_reason_of",
    "is_text",
    "metadata_value",
    "method_path",
    "pack",
    "pack_into",
    "shard_metadata",
    "shard_refusal_of",
    "unpack",
]
