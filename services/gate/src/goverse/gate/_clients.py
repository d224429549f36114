"""ClientRegistry: the gate's registered clients, their credentials, and delivery of node pushes."""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Iterator, Sequence

import structlog

from goverse import wire
from goverse.errors import ResourceExhausted, Unauthenticated, Unavailable
from goverse.gate._client_proxy import ClientProxy, SlowClientPolicy, StreamEnd
from goverse.gate._peer_limits import PeerLimits
from goverse.gate._push_messages import PushMessages
from goverse.ids import new_client_id
from goverse.server import DropReason, LogThrottle, deliver_all_traced, log_context
from goverse.v1 import node_pb2

log = structlog.get_logger(__name__)

# Compared against when the client id is unknown, so both refusals cost the same.
_NO_CREDENTIAL = secrets.token_urlsafe(32).encode()
REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two "call refused" log lines for the same reason: a caller decides how
often it sends a forged client id or credential."""


class ClientRegistry:
    """Issues client ids and credentials, checks them on calls, and routes pushes to proxies.

    A Register stream holds its client's registration with :meth:`connect`: registered when
    the stream starts, removed when it ends, whichever side ends it; its credential is valid
    only in between. :meth:`drain` closes every proxy with a draining notice and refuses
    further registrations.
    """

    def __init__(
        self,
        gate_id: str,
        *,
        max_clients: int,
        queue_messages: int,
        queue_bytes: int,
        max_message_bytes: int,
        overflow: SlowClientPolicy | str = SlowClientPolicy.DISCONNECT,
        peers: PeerLimits | None = None,
    ) -> None:
        self._gate_id = gate_id
        self.peers = peers if peers is not None else PeerLimits(max_clients, float("inf"))
        """The per-peer bounds of registrations (by default only --max-clients)."""
        self._max_clients = max_clients
        self._queue_messages = queue_messages
        self._queue_bytes = queue_bytes
        self._max_message_bytes = max_message_bytes
        self._overflow = overflow
        self._clients: dict[str, ClientProxy] = {}
        self._messages = PushMessages()
        self._draining = False
        self._refusal_log: LogThrottle[str] = LogThrottle(REFUSAL_LOG_INTERVAL)
        self.delivered = 0
        """Pushes queued to a client since start."""
        self.dropped: collections.Counter[str] = collections.Counter()
        """Pushes dropped since start, by :class:`~goverse.server.DropReason`."""
        self.slow_consumer_disconnects = 0
        """Clients disconnected since start because their queue overflowed."""

    def __len__(self) -> int:
        return len(self._clients)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._clients

    @property
    def draining(self) -> bool:
        return self._draining

    def client_ids(self) -> list[str]:
        return sorted(self._clients)

    def get(self, client_id: str) -> ClientProxy | None:
        return self._clients.get(client_id)

    def register(self, principal: node_pb2.Principal | None = None) -> ClientProxy:
        """Creates and registers a proxy with a fresh client id and credential.

        Raises :class:`Unavailable` once draining and :class:`ResourceExhausted` when
        `max_clients` are registered already.
        """
        if self._draining:
            raise Unavailable(f"gate {self._gate_id} is shutting down; connect to another gate")
        if len(self._clients) >= self._max_clients:
            raise ResourceExhausted(
                f"gate {self._gate_id} has its maximum of {self._max_clients} clients; "
                "connect to another gate"
            )
        client_id = new_client_id(self._gate_id)
        while client_id in self._clients:  # 64 random bits: practically never
            client_id = new_client_id(self._gate_id)
        proxy = ClientProxy(
            client_id,
            secrets.token_urlsafe(32),
            max_messages=self._queue_messages,
            max_bytes=self._queue_bytes,
            max_batch_bytes=self._max_message_bytes,
            overflow=self._overflow,
            on_drop=self._count_drop,
            on_slow_consumer=self._count_slow_consumer,
            messages=self._messages,
        )
        proxy.caller = node_pb2.Caller(client_id=client_id, principal=principal)
        self._clients[client_id] = proxy
        return proxy

    @contextlib.contextmanager
    def connect(
        self,
        peer: str = "",
        principal: node_pb2.Principal | None = None,
        connection: str = "",
    ) -> Iterator[ClientProxy]:
        """Registers a client of `peer` (its address) over `connection` (its full gRPC peer
        name), authenticated as `principal`, for as long as its Register stream runs; yields
        its proxy.

        Raises :class:`StreamEnd` when the registration is refused: UNAVAILABLE (``shutdown``)
        once draining, RESOURCE_EXHAUSTED at `max_clients` or at the bound of live
        registrations of its peer or of its connection. On exit, whichever way the stream
        ended (cancellation and GeneratorExit pass through), closes the proxy (``peer_gone``
        unless it was closed already), unregisters it and logs why the stream ended.
        """
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.peers.hold(peer, connection))
                proxy = self.register(principal)
            except Unavailable as refused:  # draining
                raise StreamEnd(refused.code, refused.message, wire.CloseReason.SHUTDOWN) from None
            except ResourceExhausted as refused:
                raise StreamEnd(refused.code, refused.message) from None
            with self._registered(proxy):
                yield proxy

    @contextlib.contextmanager
    def _registered(self, proxy: ClientProxy) -> Iterator[None]:
        with log_context(client_id=proxy.client_id):
            # Per-client lines are DEBUG: at thousands of clients they cost real CPU (13 % of
            # a 1,000-stream shutdown in the first profile). Unusual ends stay at INFO.
            log.debug("client registered", clients=len(self._clients))
            try:
                yield
            finally:
                proxy.close("the client went away")
                self.remove(proxy)
                log.log(
                    logging.INFO
                    if proxy.slow_consumer or proxy.token_expired or proxy.dropped
                    else logging.DEBUG,
                    "client stream ended",
                    reason=proxy.closed_by,
                    pushed=proxy.pushed,
                    dropped=proxy.dropped,
                )

    def _count_drop(self, reason: DropReason, count: int) -> None:
        self.dropped[reason] += count

    def _count_slow_consumer(self, proxy: ClientProxy) -> None:
        self.slow_consumer_disconnects += 1

    def authenticate(self, client_id: str | None, credential: str | None) -> ClientProxy:
        """The registered proxy that `client_id` names, when `credential` is its credential.

        Raises :class:`Unauthenticated` otherwise, also once the proxy was closed (except for
        draining: its stream is still open). The message never tells an unknown client id
        from a wrong credential, so a caller learns nothing about other clients.
        """
        if not client_id or not credential:
            missing = [
                name
                for name, value in (
                    (wire.CLIENT_ID_KEY, client_id),
                    (wire.CREDENTIAL_KEY, credential),
                )
                if not value
            ]
            raise Unauthenticated(
                f"missing {' and '.join(missing)} metadata: open a Register stream first and "
                "send the client id and credential it returned with every call"
            )
        proxy = self._clients.get(client_id)
        expected = proxy.credential.encode() if proxy is not None else _NO_CREDENTIAL
        # "replace": a header's undecodable bytes (lone surrogates) compare as a mismatch.
        matches = hmac.compare_digest(expected, credential.encode(errors="replace"))
        # A proxy closed for draining still has its stream open (flushing, then Draining):
        # its client may call until the stream has ended. Any other close ends the credential.
        if proxy is None or not matches or (proxy.closed and not proxy.draining):
            reason = (
                "unknown client"
                if proxy is None
                else "wrong credential"
                if not matches
                else "registration ended"
            )
            # Once per interval and reason (each refusal is counted with its call's code):
            # the caller decides how often it sends a forged id or credential.
            unlogged = self._refusal_log.admit(reason)
            if unlogged is not None:
                log.info(
                    "call refused",
                    reason=reason,
                    claimed_client_id=client_id[:200],
                    unlogged_before=unlogged,
                )
            raise Unauthenticated(
                "unknown client id or wrong credential: the credential is valid only while "
                "its Register stream is open on this gate"
            )
        return proxy

    def remove(self, proxy: ClientProxy) -> bool:
        """Unregisters `proxy` if it is still the registered one; True when it was."""
        if self._clients.get(proxy.client_id) is proxy:
            del self._clients[proxy.client_id]
            return True
        return False

    def deliver(self, envelope: node_pb2.Envelope) -> int:
        """Pushes one envelope from a node to its local clients; returns how many accepted it."""
        target = envelope.WhichOneof("target")
        if target == "client_message":
            return self._push_to(envelope.client_message.client_ids, envelope.client_message)
        if target == "broadcast":
            return self._push_all(envelope.broadcast)
        log.debug("envelope without a target ignored")
        return 0

    def deliver_batch(self, envelopes: Sequence[node_pb2.Envelope]) -> int:
        """Delivers one stream message's envelopes, in one delivery span when traced."""
        return deliver_all_traced(self.deliver, envelopes)

    def _push_to(self, client_ids: Iterable[str], envelope: node_pb2.ClientMessageEnvelope) -> int:
        accepted = 0
        for client_id in client_ids:
            proxy = self._clients.get(client_id)
            if proxy is None:
                self.dropped[DropReason.UNKNOWN_CLIENT] += 1
                # Debug only: a client that just left makes one such line per push to it.
                log.debug(
                    "push dropped", reason=DropReason.UNKNOWN_CLIENT, client_id=client_id[:100]
                )
                continue
            if proxy.push(envelope.message):
                accepted += 1
        self.delivered += accepted
        return accepted

    def _push_all(self, envelope: node_pb2.BroadcastEnvelope) -> int:
        accepted = 0
        message = envelope.message
        proxies = list(self._clients.values())
        # Sized once: every client's queue sizes a message the same way.
        size = proxies[0].size_of(message) if proxies else None
        for proxy in proxies:
            if proxy.push(message, size):
                accepted += 1
        self.delivered += accepted
        return accepted

    def drain(self, reason: str) -> int:
        """Refuses new registrations and closes every proxy with a draining notice.

        Each stream writer flushes what its proxy holds, sends ``Draining(reason)`` and ends
        the stream. Returns how many proxies were closed by this call. Safe to call again.
        """
        self._draining = True
        closed = sum(proxy.close(reason, drain=True) for proxy in list(self._clients.values()))
        if closed:
            log.info("draining clients", clients=closed, reason=reason)
        return closed
