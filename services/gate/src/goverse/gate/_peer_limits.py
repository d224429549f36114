"""Per-peer bounds on registrations: live registrations per connection and per peer address,
and the registration rate per peer address.

Without them one peer could hold every ``--max-clients`` slot of a gate, or make it verify
tokens in a tight loop. A peer is its IP address (the port differs per connection), so
clients behind one NAT share their bounds: the defaults leave them room. A connection is the
full gRPC peer name (address and port): one HTTP/2 connection can carry any number of
registration streams, and a client needs one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from goverse.errors import ResourceExhausted

SWEEP_AT = 10_000
"""Peers in the table when a new one makes idle ones be dropped: bounds the table's memory."""


def peer_address(peer: str) -> str:
    """The address part of a gRPC peer name: ``ipv4:10.0.0.7:51234`` -> ``ipv4:10.0.0.7``,
    ``ipv6:[::1]:51234`` -> ``ipv6:[::1]``; a Unix socket peer stays as it is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit():
            return host
    return peer


@dataclass
class _Peer:
    live: int
    tokens: float
    updated: float


class PeerLimits:
    """At most `max_live` registrations at once per peer and `max_per_connection` per
    connection, and a token bucket per peer that refills at `rate` per second up to
    `max_live` tokens (a peer may open its share at once, then churn at `rate`). A peer's
    entry is dropped once it has no live registration and a full bucket, a connection's once
    it has none, so the tables hold only recently active peers."""

    def __init__(
        self,
        max_live: int,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_per_connection: int | None = None,
    ) -> None:
        self._max_live = max_live
        self._rate = rate
        self._clock = clock
        self._max_per_connection = max_live if max_per_connection is None else max_per_connection
        self._peers: dict[str, _Peer] = {}
        self._connections: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def live(self, peer: str) -> int:
        entry = self._peers.get(peer)
        return 0 if entry is None else entry.live

    def take(self, peer: str) -> None:
        """Spends one registration token of `peer`; raises :class:`ResourceExhausted` when its
        bucket is empty."""
        entry = self._refilled(peer)
        if entry.tokens < 1:
            raise ResourceExhausted(
                f"too many registrations from {peer} (--registration-rate {self._rate:g}/s); "
                "retry later"
            )
        entry.tokens -= 1

    @contextlib.contextmanager
    def hold(self, peer: str, connection: str = "") -> Iterator[None]:
        """Counts one live registration of `peer` over `connection` (none: not counted per
        connection) for the block; raises :class:`ResourceExhausted` when `peer` has
        `max_live` already, or `connection` `max_per_connection`."""
        on_connection = self._connections.get(connection, 0) if connection else 0
        if connection and on_connection >= self._max_per_connection:
            raise ResourceExhausted(
                f"connection {connection} has its maximum of {self._max_per_connection} "
                "registrations (--max-registrations-per-connection)"
            )
        entry = self._refilled(peer)
        if entry.live >= self._max_live:
            raise ResourceExhausted(
                f"{peer} has its maximum of {self._max_live} registrations on this gate "
                "(--max-registrations-per-peer)"
            )
        entry.live += 1
        if connection:
            self._connections[connection] = on_connection + 1
        try:
            yield
        finally:
            entry.live -= 1
            self._forget_idle(peer, entry)
            if connection:
                self._release(connection)

    def _release(self, connection: str) -> None:
        left = self._connections[connection] - 1
        if left:
            self._connections[connection] = left
        else:
            del self._connections[connection]

    def _refilled(self, peer: str) -> _Peer:
        now = self._clock()
        entry = self._peers.get(peer)
        if entry is None:
            if len(self._peers) >= SWEEP_AT:
                self.sweep()  # peers that only spent tokens (refused ones) are dropped here
            entry = self._peers[peer] = _Peer(0, float(self._max_live), now)
        else:
            # min(), not a product alone: an unbounded rate (inf) times 0 s would be NaN.
            refill = (now - entry.updated) * self._rate if now > entry.updated else 0.0
            entry.tokens = min(float(self._max_live), entry.tokens + refill)
            entry.updated = now
        return entry

    def _forget_idle(self, peer: str, entry: _Peer) -> None:
        elapsed = self._clock() - entry.updated
        refill = elapsed * self._rate if elapsed > 0 else 0.0
        if entry.live == 0 and (entry.tokens + refill >= self._max_live):
            self._peers.pop(peer, None)

    def sweep(self) -> int:
        """Drops every peer with nothing live and a full bucket; returns how many."""
        idle = [peer for peer, entry in self._peers.items() if entry.live == 0]
        before = len(self._peers)
        for peer in idle:
            self._forget_idle(peer, self._peers[peer])
        return before - len(self._peers)


__all__ = ["PeerLimits", "peer_address"]
