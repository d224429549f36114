"""Undecodable requests: a body that does not parse as the method's request type is refused
with INVALID_ARGUMENT, before any handler (or interceptor after this one) runs.

grpc.aio calls a method handler's ``request_deserializer`` itself (``deserialize`` in its
``server.pyx.pxi``, before the handler for a unary request, in ``_ServicerContext.read`` for a
stream) and answers an exception there with UNKNOWN and an ERROR traceback. :class:`DecodeGuard`
wraps every handler's deserializer so that it never raises: it returns an :class:`Undecodable`
in place of the message, and the wrapped behaviour answers that with INVALID_ARGUMENT. Each
refusal is one DEBUG line (a peer sending garbage must not be able to flood the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from goverse.errors import bounded

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Undecodable:
    """What a guarded deserializer returns for bytes it cannot parse."""

    message: str


def _guarded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering an :class:`Undecodable` where it would raise."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", None) or "the request type"

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as error:  # protobuf's DecodeError, or anything a codec raises
            return Undecodable(bounded(f"the request does not decode as {type_name}: {error}"))

    return deserialize


async def _refuse(method: str, problem: Undecodable, context: grpc.aio.ServicerContext) -> None:
    log.debug("undecodable request refused", method=method, error=problem.message)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem.message)


def _unary_request(method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a unary-request behaviour (coroutine or async generator) to refuse garbage."""
    if inspect.isasyncgenfunction(behavior):

        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(method, request, context)
            # Closed with this wrapper, so the handler's own clean-up runs when grpc closes it.
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return streamed

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(method, request, context)
        return await behavior(request, context)

    return unary


async def _checked(
    method: str,
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    rpc_task: asyncio.Task[Any] | None,
) -> AsyncIterator[Any]:
    """`requests` until an undecodable one: then the RPC ends with INVALID_ARGUMENT.

    The handler may read in a task of its own (both call streams do), so raising here would
    not end the RPC: the status is sent at once, then `rpc_task`, the task the RPC's handler
    runs in, is cancelled, the way a client that goes away ends it, so that the handler ends
    and cancels what it started. The task that reads is not the RPC's: cancelling the task
    iterating this (the stream's reader) left the handler and every call it had started
    running, holding their objects, until their deadlines.
    """
    async for request in requests:
        if isinstance(request, Undecodable):
            with contextlib.suppress(grpc.aio.AbortError):  # raised once the status is sent
                await _refuse(method, request, context)
            if rpc_task is not None:
                rpc_task.cancel("undecodable request")
            return
        yield request


def _stream_request(method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a stream-request behaviour (coroutine or async generator) to refuse garbage."""
    if inspect.isasyncgenfunction(behavior):

        async def streamed(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            # Runs in the RPC's task; the handler may read the requests in another.
            checked = _checked(method, requests, context, asyncio.current_task())
            async with contextlib.aclosing(behavior(checked, context)) as responses:
                async for response in responses:
                    yield response

        return streamed

    async def unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        checked = _checked(method, requests, context, asyncio.current_task())
        return await behavior(checked, context)

    return unary


def _guard(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserializer = _guarded(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_request(method, handler.unary_unary), deserializer, serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _unary_request(method, handler.unary_stream), deserializer, serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _stream_request(method, handler.stream_unary), deserializer, serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        _stream_request(method, handler.stream_stream), deserializer, serializer
    )


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The first interceptor of a server: every method's requests are decoded by a guarded
    deserializer, and an undecodable one ends the call with INVALID_ARGUMENT (see the module)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _guard(str(handler_call_details.method), handler)
