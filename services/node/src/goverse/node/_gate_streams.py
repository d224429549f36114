"""Gate streams: one bounded mailbox per registered gate, fed by pushes, drained by its stream."""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message

from goverse import wire
from goverse.ids import gate_id_problem, gate_of_client
from goverse.server import (
    PLAINTEXT_PEER,
    BatchRule,
    DropReason,
    LogThrottle,
    Mailbox,
    Peer,
    Supervisor,
    current_trace_context,
    log_context,
    record_push,
)
from goverse.v1.node_pb2 import (
    BroadcastEnvelope,
    ClientMessageEnvelope,
    Envelope,
    EnvelopeBatch,
    Heartbeat,
    RegisterGateAck,
    RegisterGateRequest,
    RegisterGateResponse,
)

log = structlog.get_logger(__name__)

STREAM_TASK_PREFIX = "gate-stream:"
BATCH_MAX_ENVELOPES = 1024
"""Most envelopes one stream message carries (fewer when they would exceed the size limit)."""
DROP_LOG_INTERVAL = 10.0
"""Seconds between two "push dropped" log lines for the same reason and gate."""
REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two "gate registration refused" log lines for the same status code: a
peer decides how often it registers."""


class GateStreams:
    """The node's side of every ``RegisterGate`` stream.

    Each registered gate id owns one :class:`~goverse.server.Mailbox` of envelopes, bounded by
    count and bytes. :meth:`push` and :meth:`broadcast` put envelopes into those mailboxes and
    never block or raise; what cannot be queued is dropped, counted by :class:`DropReason`
    and logged. :meth:`serve` is the stream itself: the acknowledgement first, then each batch
    of queued envelopes (:class:`~goverse.server.BatchRule`) as one stream message, or a
    heartbeat when idle. A stream ends by itself, with status OK, once its mailbox is closed: by
    a newer registration of the same gate id (``replaced``) or by :meth:`close_all`
    (``shutdown``); the :class:`~goverse.wire.CloseReason` is its trailing metadata.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        node: str,
        *,
        queue_size: int,
        queue_bytes: int,
        heartbeat_interval: timedelta,
        max_message_bytes: int,
        max_gates: int,
    ) -> None:
        self._supervisor = supervisor
        self._max_gates = max_gates
        self._node = node
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._heartbeat_seconds = heartbeat_interval.total_seconds()
        self._batching = BatchRule(
            RegisterGateResponse,
            "envelopes.envelopes",
            max_message_bytes=max_message_bytes,
            max_items=BATCH_MAX_ENVELOPES,
        )
        self._mailboxes: dict[str, Mailbox[Envelope]] = {}
        self._owners: dict[str, _Owner] = {}
        """Who registered each registered gate id: its certificate identity and process."""
        # By DropReason; typed str because Status.dropped_pushes and the metrics key by str.
        self._dropped: collections.Counter[str] = collections.Counter()
        self._dropped_by_gate: collections.Counter[tuple[str, str]] = collections.Counter()
        self._drop_log: LogThrottle[tuple[str, str]] = LogThrottle(DROP_LOG_INTERVAL)
        self._refusal_log: LogThrottle[grpc.StatusCode] = LogThrottle(REFUSAL_LOG_INTERVAL)
        self.queued_total = 0
        """Pushes queued since start (client ids for pushes, gates for broadcasts)."""
        self._closed = False

    # -- state ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def gate_ids(self) -> list[str]:
        """The gates with an open stream, sorted."""
        return sorted(gate for gate, mailbox in self._mailboxes.items() if not mailbox.closed)

    def dropped(self) -> dict[str, int]:
        """Pushes dropped since start, by reason (client ids for pushes, gates for broadcasts)."""
        return dict(self._dropped)

    def dropped_by_gate(self) -> dict[tuple[str, str], int]:
        """Pushes dropped by (reason, gate id): since start for drops that name no registered
        gate (unregistered gates, malformed client ids, invalid messages; the gate id empty),
        since it registered for a gate registered now. A gate's own counts (and the log
        throttle of its drops) are forgotten when its stream ends and it is no longer
        registered: gate ids come and go (a gate pod's name is new at every rollout), so what
        is kept per gate is bounded by ``max_gates``."""
        return dict(self._dropped_by_gate)

    def queue_depths(self) -> dict[str, int]:
        """Envelopes queued now, by registered gate id."""
        return {gate_id: len(mailbox) for gate_id, mailbox in list(self._mailboxes.items())}

    def queued(self, gate_id: str) -> int:
        """Envelopes waiting in the gate's mailbox (0 when it is not registered)."""
        mailbox = self._mailboxes.get(gate_id)
        return 0 if mailbox is None else len(mailbox)

    # -- pushes -----------------------------------------------------------------------------

    def push(self, client_ids: Iterable[str], message: Message) -> int:
        """Queues `message` for each client, one envelope per gate; returns how many client
        ids were accepted. Never blocks, never raises."""
        try:
            ids = [client_ids] if isinstance(client_ids, str) else list(dict.fromkeys(client_ids))
            if not ids:
                return 0
            packed = self._pack(message, len(ids))
            if packed is None:
                return 0
            trace_context = current_trace_context()
            by_gate: dict[str, list[str]] = {}
            for client_id in ids:
                gate_id = gate_of_client(client_id)
                if gate_id is None:
                    self._drop(DropReason.MALFORMED_CLIENT_ID, 1, client_id=client_id[:100])
                    continue
                by_gate.setdefault(gate_id, []).append(client_id)
            accepted = 0
            for gate_id, members in by_gate.items():
                envelope = Envelope(
                    client_message=ClientMessageEnvelope(client_ids=members, message=packed),
                    trace_context=trace_context,
                )
                if self._offer(gate_id, envelope, len(members)):
                    accepted += len(members)
            record_push(len(ids), accepted)
            return accepted
        except Exception:
            log.exception("push failed")
            return 0

    def broadcast(self, message: Message) -> int:
        """Queues `message` for every client of every registered gate; returns how many gates
        accepted it. Never blocks, never raises."""
        try:
            packed = self._pack(message, len(self._mailboxes))
            if packed is None:
                return 0
            envelope = Envelope(
                broadcast=BroadcastEnvelope(message=packed), trace_context=current_trace_context()
            )
            accepted = sum(self._offer(gate_id, envelope, 1) for gate_id in list(self._mailboxes))
            record_push(len(self._mailboxes), accepted, broadcast=True)
            return accepted
        except Exception:
            log.exception("broadcast failed")
            return 0

    def _pack(self, message: Message, count: int) -> any_pb2.Any | None:
        if not isinstance(message, Message):
            self._drop(DropReason.INVALID_MESSAGE, count, got=type(message).__qualname__)
            return None
        return wire.pack(message)

    def _offer(self, gate_id: str, envelope: Envelope, count: int) -> bool:
        mailbox = self._mailboxes.get(gate_id)
        if mailbox is None or mailbox.closed:
            # Counted and logged under no gate id: an object may push to any well-formed id,
            # and a count (and a log line) per gate id never registered would have no bound.
            self._drop(DropReason.GATE_NOT_REGISTERED, count, unregistered_gate_id=gate_id)
            return False
        size = self._batching.size_of(envelope)
        if not self._batching.fits(size):
            self._drop(DropReason.MESSAGE_TOO_LARGE, count, gate_id=gate_id, size=size)
            return False
        if not mailbox.put(envelope, size):
            self._drop(DropReason.QUEUE_FULL, count, gate_id=gate_id, queued=len(mailbox))
            return False
        self.queued_total += count
        return True

    def _drop(self, reason: DropReason, count: int, **fields: Any) -> None:
        key = (reason, str(fields.get("gate_id", "")))
        self._dropped[reason] += count
        self._dropped_by_gate[key] += count
        # Every drop is counted; the log says so at most once per interval and reason and gate,
        # so a gate that stopped reading does not flood the log with a line per push.
        unlogged = self._drop_log.admit(key, count)
        if unlogged is None:
            return
        log.warning(
            "push dropped", reason=reason, recipients=count, unlogged_before=unlogged, **fields
        )

    # -- streams ----------------------------------------------------------------------------

    async def serve(
        self,
        request: RegisterGateRequest,
        context: grpc.aio.ServicerContext,
        peer: Peer = PLAINTEXT_PEER,
    ) -> AsyncGenerator[RegisterGateResponse, None]:
        """The ``RegisterGate`` stream of one gate; ends when its mailbox is closed.

        A gate id belongs to the certificate identity and the gate process (the request's
        `instance`) of its registered stream while the stream is open: a registration of
        that id from another identity is refused (PERMISSION_DENIED), one from the same
        identity but another process (two gates given one gate id, which would otherwise
        take the stream from each other in turn) too (ALREADY_EXISTS); the same process
        reconnecting replaces the stream. In plaintext every peer has the same (empty)
        identity, and the instance is no credential: it catches mistakes, not a hostile
        peer. A new gate id beyond ``max_gates`` registered gates is refused
        (RESOURCE_EXHAUSTED)."""
        gate_id = request.gate_id
        problem = gate_id_problem(gate_id)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self._closed or self._supervisor.closing:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"node {self._node} is stopping",
                trailing_metadata=wire.close_metadata(wire.CloseReason.SHUTDOWN),
            )
        owner = _Owner(peer.identity, request.instance)
        refusal = self._refusal(gate_id, owner)
        if refusal is not None:
            # Once per interval and code: the peer decides how often it tries again.
            unlogged = self._refusal_log.admit(refusal[0])
            if unlogged is not None:
                log.warning(
                    "gate registration refused",
                    gate_id=gate_id,
                    peer=peer.identity,
                    instance=owner.instance,
                    why=refusal[1],
                    unlogged_before=unlogged,
                )
            await context.abort(*refusal)
        with (
            self._supervisor.adopt(f"{STREAM_TASK_PREFIX}{gate_id}"),
            log_context(gate_id=gate_id),
        ):
            mailbox = self._register(gate_id, context.peer(), owner)
            ended = False
            try:
                yield RegisterGateResponse(
                    ack=RegisterGateAck(
                        node=self._node,
                        heartbeat_interval_ms=int(self._heartbeat_seconds * 1000),
                    )
                )
                while True:
                    batch = await self._batching.next_batch(mailbox, self._heartbeat_seconds)
                    if batch is None:
                        context.set_trailing_metadata(wire.close_metadata(_closed_by(mailbox)))
                        ended = True
                        return
                    if not batch:
                        yield RegisterGateResponse(
                            heartbeat=Heartbeat(sent_unix_ms=int(time.time() * 1000))
                        )
                        continue
                    yield RegisterGateResponse(envelopes=EnvelopeBatch(envelopes=batch))
            finally:
                # Not ended: cancelled (the gate went away, or the node's shutdown timeout
                # passed while a write was pending) or the generator was closed.
                self._unregister(gate_id, mailbox, cancelled=not ended)

    def _refusal(self, gate_id: str, claimant: _Owner) -> tuple[grpc.StatusCode, str] | None:
        """Why a registration of `gate_id` by `claimant` is refused (None: it is not)."""
        current = self._mailboxes.get(gate_id)
        if current is not None and not current.closed:
            owner = self._owners.get(gate_id, _Owner("", ""))
            if owner.identity != claimant.identity:
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"gate id {gate_id!r} is registered by another identity",
                )
            if owner.instance != claimant.instance:
                return (
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"gate id {gate_id!r} is registered by another gate process: gate ids "
                    "must be unique (--gate-id); a restarted gate gets it once the node "
                    "sees the old connection end",
                )
            return None
        if len(self.gate_ids()) >= self._max_gates:
            return (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node {self._node} has {self._max_gates} gates registered (--max-gates)",
            )
        return None

    def _register(self, gate_id: str, peer: str, owner: _Owner) -> Mailbox[Envelope]:
        mailbox: Mailbox[Envelope] = Mailbox(self._queue_size, self._queue_bytes)
        self._owners[gate_id] = owner
        old = self._mailboxes.get(gate_id)
        moved = 0
        if old is not None and not old.closed:
            # What the old stream has not sent yet goes down the new one.
            moved = old.move_to(mailbox)
            old.close(wire.CloseReason.REPLACED, discard=True)
        self._mailboxes[gate_id] = mailbox
        if old is not None:
            log.info(
                "gate re-registered, replacing its stream",
                peer=peer,
                identity=owner.identity,
                instance=owner.instance,
                moved=moved,
            )
        else:
            log.info("gate registered", peer=peer, identity=owner.identity, instance=owner.instance)
        return mailbox

    def _unregister(self, gate_id: str, mailbox: Mailbox[Envelope], *, cancelled: bool) -> None:
        # A mailbox still open when its stream ends: the gate went away.
        mailbox.close(wire.CloseReason.PEER_GONE, discard=True)
        if self._mailboxes.get(gate_id) is mailbox:
            del self._mailboxes[gate_id]
            self._owners.pop(gate_id, None)
            self._forget_drops(gate_id)
        log.info("gate stream ended", reason=_closed_by(mailbox), cancelled=cancelled)

    def _forget_drops(self, gate_id: str) -> None:
        """Drops what is kept about `gate_id`'s drops (its count by reason stays in the
        totals, :meth:`dropped`)."""
        for key in [key for key in self._dropped_by_gate if key[1] == gate_id]:
            del self._dropped_by_gate[key]
        self._drop_log.forget(lambda key: key[1] == gate_id)

    def close_all(self, reason: str = wire.CloseReason.SHUTDOWN) -> int:
        """Takes no new registrations and closes every mailbox for `reason` (a
        :class:`~goverse.wire.CloseReason` value): each stream sends what is still queued, then
        ends by itself with status OK. Returns how many streams were open."""
        closed_by = wire.CloseReason(reason)
        self._closed = True
        count = 0
        for mailbox in self._mailboxes.values():
            count += mailbox.close(closed_by)
        return count

    def refuse_new(self) -> int:
        """Takes no new registrations and leaves the open streams to their gates: each ends
        when its gate ends it (a gate does once its view has lost this node). Returns how
        many streams are open."""
        self._closed = True
        return len(self.gate_ids())

    def clear(self) -> None:
        """Forgets every mailbox (after the stream tasks ended or were cancelled)."""
        for mailbox in self._mailboxes.values():
            mailbox.close(wire.CloseReason.SHUTDOWN, discard=True)
        for gate_id in self._mailboxes:
            self._forget_drops(gate_id)
        self._mailboxes.clear()
        self._owners.clear()


@dataclass(frozen=True)
class _Owner:
    """Who registered a gate id: the SPIFFE id of its certificate ("" in plaintext) and the
    gate process (``RegisterGateRequest.instance``)."""

    identity: str
    instance: str


def _closed_by(mailbox: Mailbox[Envelope]) -> wire.CloseReason:
    """Why a closed mailbox was closed: it is only ever closed with a CloseReason."""
    return wire.CloseReason(mailbox.close_reason)


__all__ = [
    "BATCH_MAX_ENVELOPES",
    "STREAM_TASK_PREFIX",
    "GateStreams",
]
