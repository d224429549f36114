"""NodeLink: the gate's RegisterGate stream to one node, kept open by reconnecting with backoff."""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import NoReturn

import grpc
import structlog

from goverse import wire
from goverse.gate._clients import ClientRegistry
from goverse.transport import Backoff
from goverse.v1 import node_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

# However the jitter falls, a link never retries sooner than this: no tight loop.
MIN_RETRY_DELAY = 0.01


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    """A RegisterGate call is open and its acknowledgement has not arrived yet."""
    CONNECTED = "connected"
    """The node acknowledged; envelopes flow to the registry."""
    BACKING_OFF = "backing_off"
    """The last connection ended; waiting before the next attempt."""
    STOPPED = "stopped"
    """:meth:`NodeLink.run` has returned (it was cancelled)."""


class _LinkLost(Exception):
    """A connection ended; `reason` says why, `connected_at` when it was acknowledged (if ever),
    `planned` whether the node ended it because it is stopping (a rollout, not a fault)."""

    def __init__(
        self,
        reason: str,
        connected_at: float | None = None,
        *,
        planned: bool = False,
        replaced: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connected_at = connected_at
        self.planned = planned
        self.replaced = replaced


class NodeLink:
    """Holds one ``NodeService.RegisterGate`` stream open and feeds its envelopes to the registry.

    :meth:`run` loops until cancelled: open the stream, require the acknowledgement first,
    forward every envelope batch; on any end or error (the node closed the stream, the call
    failed, nothing arrived for `heartbeat_timeout`), log why, wait a backoff delay (exponential
    ceiling, full jitter, reset after a connection that lasted `stable_after`) and reconnect.
    Every wait, including the wait for the next stream message, is cancellable; the call is
    always cancelled on the way out. `on_state` is called with the link on every change of
    :attr:`state`.
    """

    def __init__(
        self,
        address: str,
        gate_id: str,
        channel: Callable[[], grpc.aio.Channel],
        registry: ClientRegistry,
        *,
        backoff: Backoff,
        stable_after: timedelta,
        heartbeat_timeout: timedelta,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[NodeLink], None] | None = None,
        instance: str | None = None,
    ) -> None:
        self._address = address
        self._gate_id = gate_id
        # Sent with every registration: the node lets this process's reconnection replace its
        # stream, and refuses another process registering the same gate id.
        self.instance = secrets.token_hex(8) if instance is None else instance
        """The gate process's id towards nodes (:attr:`GateApp.instance`); a new random one
        when none is given."""
        # Asked anew for each connection: after a certificate rotation the pool hands out
        # channels that present the new client certificate.
        self._channel = channel
        self._registry = registry
        self._backoff = backoff
        self._stable_after = stable_after.total_seconds()
        self._heartbeat_timeout = heartbeat_timeout.total_seconds()
        self._clock = clock
        self._on_state = on_state
        self._log = log.bind(node=address)
        self._state = LinkState.CONNECTING
        self._changed = asyncio.Event()
        self.attempts = 0
        """RegisterGate calls opened since start."""
        self.connections = 0
        """Acknowledged connections since start."""
        self.batches = 0
        """Envelope batches received since start."""
        self.last_error = ""
        """Why the last connection ended (empty before the first ended)."""

    @property
    def address(self) -> str:
        return self._address

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def reconnects(self) -> int:
        """Attempts after the first one."""
        return max(self.attempts - 1, 0)

    def _set_state(self, state: LinkState) -> None:
        self._state = state
        self._changed.set()
        self._changed = asyncio.Event()
        if self._on_state is not None:
            self._on_state(self)

    async def wait_for(self, predicate: Callable[[NodeLink], bool]) -> None:
        """Returns once `predicate(self)` holds; re-checked on every state change."""
        while not predicate(self):
            await self._changed.wait()

    async def run(self) -> None:
        """Keeps the link up until cancelled. Never returns otherwise, never raises."""
        failures = 0
        planned = False  # the last connection ended because its node was stopping
        try:
            while True:
                self.attempts += 1
                self._set_state(LinkState.CONNECTING)
                started = self._clock()
                try:
                    await self._session()
                except _LinkLost as lost:
                    reason, connected_at = lost.reason, lost.connected_at
                    if connected_at is not None:
                        planned = lost.planned
                    if lost.replaced:
                        self._on_replaced()
                except Exception as error:  # a bug must not end the link for good
                    self._log.exception("node link session crashed")
                    reason, connected_at = f"crashed: {error!r}", None
                if connected_at is not None:
                    lasted = self._clock() - connected_at
                    if lasted >= self._stable_after:
                        self._backoff.reset()
                else:
                    lasted = self._clock() - started
                delay = max(self._backoff.next_delay(), MIN_RETRY_DELAY)
                self.last_error = reason
                failures = 0 if connected_at is not None else failures + 1
                # A lost connection and the first failure in a row are warnings; the retries
                # against a node that stays down are not, nor is anything while a node that
                # said it was stopping (a rollout) comes back.
                self._log.log(
                    logging.INFO if planned or failures > 1 else logging.WARNING,
                    "node link lost" if connected_at is not None else "node link failed",
                    reason=reason,
                    planned=planned,
                    failures_in_row=failures,
                    lasted_s=round(lasted, 3),
                    attempt=self.attempts,
                    retry_in_s=round(delay, 3),
                )
                self._set_state(LinkState.BACKING_OFF)
                await asyncio.sleep(delay)
        finally:
            self._set_state(LinkState.STOPPED)

    async def _session(self) -> NoReturn:
        """One RegisterGate call, from opening it to its end; always raises :class:`_LinkLost`."""
        stub = node_pb2_grpc.NodeServiceStub(self._channel())
        call = stub.RegisterGate(
            node_pb2.RegisterGateRequest(gate_id=self._gate_id, instance=self.instance),
            wait_for_ready=False,
        )
        connected_at: float | None = None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._heartbeat_timeout) as deadline:
                first = await call.read()
                if first is grpc.aio.EOF:
                    raise _LinkLost("the node ended the stream before acknowledging")
                if first.WhichOneof("event") != "ack":
                    raise _LinkLost(f"the node sent {first.WhichOneof('event')} before the ack")
                connected_at = self._on_ack(first.ack)
                while True:
                    deadline.reschedule(loop.time() + self._heartbeat_timeout)
                    message = await call.read()
                    if message is grpc.aio.EOF:
                        closed = wire.close_reason_of(await call.trailing_metadata())
                        if closed is wire.CloseReason.SHUTDOWN:
                            raise _LinkLost("the node is stopping", connected_at, planned=True)
                        if closed is wire.CloseReason.REPLACED:
                            raise _LinkLost(
                                "another registration of this gate id replaced the stream",
                                connected_at,
                                replaced=True,
                            )
                        raise _LinkLost(
                            f"the node ended the stream ({closed or 'no reason'})", connected_at
                        )
                    self._on_message(message)
        except TimeoutError:
            when = "after" if connected_at is not None else "before"
            raise _LinkLost(
                f"nothing received for {self._heartbeat_timeout:g}s ({when} the ack)",
                connected_at,
            ) from None
        except grpc.aio.AioRpcError as error:
            raise _LinkLost(f"{error.code().name}: {error.details()}", connected_at) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the link is being stopped
            # grpc cancelled the call itself (its channel was closed): not a stop request.
            raise _LinkLost("the call was cancelled by grpc", connected_at) from None
        finally:
            call.cancel()

    def _on_replaced(self) -> None:
        # This gate's own connection, which the node still held when the link reconnected
        # (the node lets only the same certificate identity and gate instance replace a
        # stream; a gate of an older version sends no instance, so two of those sharing a
        # gate id still replace each other). The link must be back at once, not after a
        # backoff grown by earlier failures.
        self._backoff.reset()
        self._log.warning(
            "node link replaced: another registration of this gate id took the stream; "
            "reconnecting with the backoff reset",
            gate_id=self._gate_id,
        )

    def _on_ack(self, ack: node_pb2.RegisterGateAck) -> float:
        self.connections += 1
        self._set_state(LinkState.CONNECTED)
        interval = ack.heartbeat_interval_ms / 1000
        if interval and interval * 2 > self._heartbeat_timeout:
            self._log.warning(
                "node heartbeat interval is close to the heartbeat timeout",
                heartbeat_interval_s=interval,
                heartbeat_timeout_s=self._heartbeat_timeout,
            )
        if ack.node != self._address:
            self._log.warning(
                "node answers to another address than the gate dials",
                advertised=ack.node,
            )
        self._log.info("node link connected", attempt=self.attempts, connections=self.connections)
        return self._clock()

    def _on_message(self, message: node_pb2.RegisterGateResponse) -> None:
        event = message.WhichOneof("event")
        if event == "envelopes":
            self.batches += 1
            self._registry.deliver_batch(message.envelopes.envelopes)
        elif event == "ack":
            self._log.warning("node sent a second acknowledgement; ignored")
        # heartbeats only move the deadline
