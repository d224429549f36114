"""EventStream: one browser session's server-sent events — registration, pushes as JSON, the end.

Why server-sent events rather than a WebSocket: pushes flow one way (calls are plain HTTP
requests beside the stream), a browser's ``EventSource`` reconnects by itself, and a stream
of ``text/event-stream`` is an ordinary HTTP response that proxies and load balancers pass
without an upgrade. The events (``docs/http.md``):

- ``registered``: ``{"clientId", "credential", "gateId"}``, first;
- ``message``: ``{"type": "<full message name>", "message": {<protobuf JSON>}}`` per push;
- a ``: heartbeat`` comment line every :data:`HEARTBEAT_S` of silence, so proxies and the
  browser see the stream alive;
- ``draining``: ``{}`` when the gate shuts down, after what was queued; then the stream ends;
- ``expired``: ``{"code": "UNAUTHENTICATED", "message"}`` when the token the session
  registered with expired; then the stream ends (register again with a fresh token).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import structlog
from aiohttp import web
from google.protobuf import any_pb2

from goverse import wire
from goverse.gate._catalog import Catalog
from goverse.gate._client_proxy import ClientProxy, StreamEnd

log = structlog.get_logger(__name__)

HEARTBEAT_S = 15.0
"""Seconds of silence after which a stream sends a heartbeat comment."""
HEARTBEAT = b": heartbeat\n\n"
EVENT_STREAM = "text/event-stream"
PUSH_EVENTS_KEPT = 64
"""Pushed messages whose event :class:`PushEvents` keeps: more than a broadcast's batch."""
PUSH_EVENT_KEPT_BYTES = 64 * 1024
"""The largest pushed message, and the largest event, :class:`PushEvents` keeps: what it
holds stays under 64 times 128 KiB, whatever the size of pushes."""


def event(name: str, data: Any) -> bytes:
    """One server-sent event named `name` whose data is `data` as JSON on one line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class PushEvents:
    """The ``message`` events of the latest pushed messages, each made once.

    A broadcast puts the same message in every member's queue, so a room of many browser
    sessions converts it to JSON once, not once per session. Events are found by the message's
    type and bytes (never by the message object: a pushed message keeps the whole stream
    message it came in alive); the last `keep` are kept, of messages and events of at most
    :data:`PUSH_EVENT_KEPT_BYTES`. A catalog refresh meanwhile changes only events made after
    it.
    """

    def __init__(self, catalog: Catalog, *, keep: int = PUSH_EVENTS_KEPT) -> None:
        self._catalog = catalog
        self._keep = keep
        self._made: dict[tuple[str, bytes], bytes] = {}

    async def of(self, packed: any_pb2.Any) -> bytes:
        """The ``message`` event of `packed` (``base64`` instead of ``message`` when no node
        describes its type: the browser still learns of it)."""
        if packed.ByteSize() > PUSH_EVENT_KEPT_BYTES:
            return await self._make(packed)
        key = (packed.type_url, packed.value)
        data = self._made.get(key)
        if data is None:
            data = await self._make(packed)
            if len(data) <= PUSH_EVENT_KEPT_BYTES:
                self._made[key] = data
                if len(self._made) > self._keep:
                    del self._made[next(iter(self._made))]  # the oldest
        return data

    async def _make(self, packed: any_pb2.Any) -> bytes:
        return event("message", await self._catalog.push_dict(packed))


class Abandoned(Exception):
    """The stream's proxy was closed (slow consumer, client gone) while a write was stalled:
    the connection was aborted and nothing more can be sent."""


class EventStream:
    """Writes the events of one registered client (`proxy`) to `response` (prepared by the
    caller), each push as the event `events` makes of it.

    Memory stays bounded when the browser stops reading: the writer only takes pushes from the
    proxy's bounded queue once the previous write went through, so pushes wait there and an
    overflow is handled by the slow-client policy, as for a gRPC client. A write stalled on
    the transport is abandoned (the connection aborted, its buffer freed) as soon as the proxy
    is closed other than for draining.
    """

    def __init__(
        self,
        proxy: ClientProxy,
        events: PushEvents,
        response: web.StreamResponse,
        transport: asyncio.Transport | None,
        *,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._proxy = proxy
        self._events = events
        self._response = response
        self._transport = transport
        self._heartbeat_s = heartbeat_s

    async def run(self, gate_id: str) -> None:
        """Sends ``registered``, then the pushes until the proxy is closed, then ``draining``
        after a draining close; returns when the stream is over."""
        proxy = self._proxy
        registered = {"clientId": proxy.client_id, "credential": proxy.credential}
        try:
            await self._send(event("registered", {**registered, "gateId": gate_id}))
            while True:
                batch = proxy.take_batch()
                if batch:
                    await self._send(b"".join([await self._events.of(packed) for packed in batch]))
                    continue
                if batch is None:
                    await self._end()
                    return
                try:
                    async with asyncio.timeout(self._heartbeat_s):
                        await proxy.wait()
                except TimeoutError:
                    await self._send(HEARTBEAT)
        except Abandoned:
            log.debug("event stream abandoned", reason=proxy.closed_by)

    async def _end(self) -> None:
        """The last event: ``draining`` after a draining close; ``expired`` (``code``
        UNAUTHENTICATED and ``message``) when the session's token expired, then the stream
        ends; none when the client went away; a slow consumer's connection is aborted (its
        browser reconnects)."""
        try:
            last = self._proxy.last_event()
        except StreamEnd as end:
            if end.reason is wire.CloseReason.TOKEN_EXPIRED:
                await self._send_last(
                    event("expired", {"code": end.code.name, "message": end.details})
                )
                return
            self._abort()
            return
        if last is not None:
            await self._send(event("draining", {}))

    async def _send(self, data: bytes) -> None:
        """Writes `data`; raises :class:`Abandoned` when the proxy is closed (not for
        draining) before the transport took it."""
        proxy = self._proxy
        if proxy.closed and not proxy.draining:
            self._abort()
        writing = asyncio.ensure_future(self._response.write(data))
        closing = asyncio.ensure_future(proxy.wait_closed())
        try:
            await asyncio.wait((writing, closing), return_when=asyncio.FIRST_COMPLETED)
            if not writing.done() and not proxy.draining:
                self._abort()
            await writing
        finally:
            closing.cancel()
            writing.cancel()  # a no-op once done; ends a write left stalled by a cancellation

    async def _send_last(self, data: bytes) -> None:
        """Writes `data` after the proxy was closed (its queue discarded): a reader that does
        not take it within one heartbeat interval has its connection aborted."""
        try:
            async with asyncio.timeout(self._heartbeat_s):
                await self._response.write(data)
        except TimeoutError:
            self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # frees what the transport buffered for the stalled reader
        raise Abandoned()


__all__ = ["EVENT_STREAM", "HEARTBEAT", "HEARTBEAT_S", "Abandoned", "EventStream", "event"]
