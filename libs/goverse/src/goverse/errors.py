"""Server-side errors: domain failures and the gRPC status code each one maps to.

    GoverseError                      (UNKNOWN unless a subclass says otherwise)
    ├── InvalidArgument               INVALID_ARGUMENT  malformed ids, wrong or garbage payloads
    ├── NotFound                      NOT_FOUND         unknown object type
    ├── Unimplemented                 UNIMPLEMENTED     unknown method of a known type
    ├── OutOfRange                    OUT_OF_RANGE      a value past what it may hold (Counter)
    ├── FailedPrecondition            FAILED_PRECONDITION  e.g. an object calling itself
    │   └── ShardNotServed            FAILED_PRECONDITION  + goverse-shard: not the owner, moving
    ├── Unauthenticated               UNAUTHENTICATED   missing or wrong client credential
    ├── PermissionDenied              PERMISSION_DENIED  refused by the access rules
    ├── Unavailable                   UNAVAILABLE       node unreachable, service shutting down
    ├── ResourceExhausted             RESOURCE_EXHAUSTED  limits
    ├── Internal                      INTERNAL          an object method raised
    └── CallError                     any               a call to another object failed

Every message a status carries passes :func:`bounded` (at :class:`GoverseError` and
:func:`code_status`): messages echo what callers sent (ids, type URLs, method names), and an
unbounded echo of a 1 MB type URL broke the peer's metadata limit.

Object code may raise any of these to answer its caller with that status. Servicers translate
them in one place, :func:`translate_errors`, which also sends an error's
:attr:`~GoverseError.trailing_metadata` (a :class:`ShardNotServed` carries the marker routing
retries on).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ClassVar, Concatenate, ParamSpec, TypeVar, cast

import grpc

from goverse import wire
from goverse.v1.calls_pb2 import CallStatus

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
Req = TypeVar("Req")


MAX_MESSAGE_CHARS = 1024
"""The longest status message sent: far below gRPC's 8 KiB default metadata limit, which the
message shares with the other trailers, and longer than any message that echoes nothing."""


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message` cut to at most `limit` characters, saying how long it was when cut."""
    if len(message) <= limit:
        return message
    note = f"... ({len(message)} characters, truncated)"
    return message[: max(limit - len(note), 0)] + note


class GoverseError(Exception):
    """A failure that answers the caller with a specific gRPC status code; its message is
    :func:`bounded`."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message

    @property
    def status_code(self) -> grpc.StatusCode:
        return self.code

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with the status (none unless a subclass says otherwise)."""
        return ()


class InvalidArgument(GoverseError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GoverseError):
    code = grpc.StatusCode.NOT_FOUND


class Unimplemented(GoverseError):
    code = grpc.StatusCode.UNIMPLEMENTED


class OutOfRange(GoverseError):
    code = grpc.StatusCode.OUT_OF_RANGE


class FailedPrecondition(GoverseError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ShardNotServed(FailedPrecondition):
    """A node refuses a call for `shard` before running anything: it does not own the shard
    (:attr:`~goverse.wire.ShardRefusal.NOT_OWNER`) or is handing it off
    (:attr:`~goverse.wire.ShardRefusal.MOVING`).

    The status stays FAILED_PRECONDITION with `message`; the ``goverse-shard`` trailing
    metadata tells routing (gates, and nodes calling objects on other nodes) that the call did
    not run and may be sent again, to the owner it finds next.
    """

    def __init__(self, shard: int, reason: wire.ShardRefusal, message: str) -> None:
        super().__init__(message)
        self.shard = shard
        self.reason = reason

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return wire.shard_metadata(self.reason)


class Unauthenticated(GoverseError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GoverseError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(GoverseError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(GoverseError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Internal(GoverseError):
    code = grpc.StatusCode.INTERNAL


class DataLoss(GoverseError):
    """An object's stored state cannot be read back (it no longer parses as its state type);
    the object is not activated and the stored state is left as it is."""

    code = grpc.StatusCode.DATA_LOSS


class CallError(GoverseError):
    """A call to another object failed with `status_code`; raised to object code.

    `refusal` is set when a node refused the call for its shard without running it (what the
    ``goverse-shard`` trailing metadata says of a unary call): routing may send it again.
    """

    def __init__(
        self,
        status_code: grpc.StatusCode,
        message: str,
        refusal: wire.ShardRefusal | None = None,
    ) -> None:
        super().__init__(message)
        self._status_code = status_code
        self.refusal = refusal

    @property
    def status_code(self) -> grpc.StatusCode:
        return self._status_code

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.refusal is None else wire.shard_metadata(self.refusal)

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> CallError:
        return cls(error.code(), error.details() or error.code().name)


def translate_errors(
    handler: Callable[Concatenate[S, Req, grpc.aio.ServicerContext, P], Awaitable[R]],
) -> Callable[Concatenate[S, Req, grpc.aio.ServicerContext, P], Awaitable[R]]:
    """Answers a unary handler's :class:`GoverseError` with its status code, message and
    trailing metadata."""

    @functools.wraps(handler)
    async def wrapper(
        self: S, request: Req, context: grpc.aio.ServicerContext, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        try:
            return await handler(self, request, context, *args, **kwargs)
        except GoverseError as error:
            await context.abort(
                error.status_code, error.message, trailing_metadata=error.trailing_metadata
            )
            raise AssertionError("context.abort returned") from error  # abort always raises

    return cast(Callable[Concatenate[S, Req, grpc.aio.ServicerContext, P], Awaitable[R]], wrapper)


class NotSent(Exception):
    """A call that never reached the process that would run it: a call stream not open yet,
    or ended before the call was written to it, or a gate that refused it unforwarded because
    it drains. Nothing ran, so whoever sent it may send it again (routing to the next owner,
    the SDK on its next registration). The message says why."""


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def call_status(error: GoverseError) -> CallStatus:
    """How `error` travels on a call stream: the status a unary call would have ended with."""
    status = code_status(error.status_code, error.message)
    status.shard_refusal = error_refusal(error) or ""
    return status


def code_status(code: grpc.StatusCode, message: str) -> CallStatus:
    """A call stream's status `code` with `message` (what a unary call's status and details
    would say; no shard refusal); `message` is :func:`bounded`."""
    return CallStatus(code=code.value[0], message=bounded(message))


def error_refusal(error: GoverseError) -> wire.ShardRefusal | None:
    """The shard refusal `error` carries, if any."""
    if isinstance(error, ShardNotServed):
        return error.reason
    return error.refusal if isinstance(error, CallError) else None


def status_error(status: CallStatus) -> CallError:
    """The error a call stream's `status` stands for (UNKNOWN for a code gRPC does not know;
    an unknown refusal is kept as a plain status, never retried)."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    if code is grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN
    try:
        refusal = wire.ShardRefusal(status.shard_refusal) if status.shard_refusal else None
    except ValueError:
        refusal = None
    return CallError(code, status.message or code.name, refusal)


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status code an exception answers with; INTERNAL for anything unexpected."""
    if isinstance(error, GoverseError):
        return error.status_code
    return grpc.StatusCode.INTERNAL


__all__ = [
    "MAX_MESSAGE_CHARS",
    "CallError",
    "FailedPrecondition",
    "GoverseError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "NotSent",
    "OutOfRange",
    "ResourceExhausted",
    "ShardNotServed",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "bounded",
    "call_status",
    "code_status",
    "error_refusal",
    "status_error",
    "status_of",
    "translate_errors",
]
