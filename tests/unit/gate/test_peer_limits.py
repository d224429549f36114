"""Per-peer bounds: live registrations and a token bucket per peer address."""

from __future__ import annotations

import pytest

from goverse.errors import ResourceExhausted
from goverse.gate._peer_limits import PeerLimits, peer_address
from tests.helpers.clock import FakeClock


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:51234", "ipv4:10.0.0.7"),
        ("ipv6:[::1]:51234", "ipv6:[::1]"),
        ("unix:/tmp/gate.sock", "unix:/tmp/gate.sock"),
        ("", ""),
    ],
)
def test_a_peer_is_its_address_without_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_a_peer_holds_at_most_its_live_registrations_and_others_are_unaffected() -> None:
    limits = PeerLimits(2, 1000.0)
    with limits.hold("a"), limits.hold("a"):
        with (
            pytest.raises(ResourceExhausted, match="--max-registrations-per-peer"),
            limits.hold("a"),
        ):
            pass
        with limits.hold("b"):
            assert limits.live("b") == 1
        assert limits.live("a") == 2
    with limits.hold("a"):
        assert limits.live("a") == 1


def test_the_bucket_holds_the_live_bound_and_refills_at_the_rate() -> None:
    clock = FakeClock()
    limits = PeerLimits(3, 2.0, clock=clock.now)
    for _ in range(3):
        limits.take("a")
    with pytest.raises(ResourceExhausted, match="--registration-rate"):
        limits.take("a")
    clock.advance(0.5)  # one token back at 2/s
    limits.take("a")
    with pytest.raises(ResourceExhausted):
        limits.take("a")


def test_idle_peers_are_forgotten() -> None:
    """A peer with nothing live and a full bucket leaves the table: it stays bounded."""
    clock = FakeClock()
    limits = PeerLimits(2, 1.0, clock=clock.now)
    with limits.hold("a"):
        assert len(limits) == 1
    assert len(limits) == 0
    limits.take("b")
    assert len(limits) == 1
    clock.advance(1.0)
    assert limits.sweep() == 1
    assert len(limits) == 0


def test_a_connection_holds_at_most_its_registrations_and_frees_them() -> None:
    """Past --max-registrations-per-connection a connection's next registration is refused
    (before anything is counted for its peer); another connection of the same peer is not;
    a connection's count is forgotten with its last registration."""
    limits = PeerLimits(10, 1000.0, max_per_connection=2)
    with limits.hold("a", "a:1"), limits.hold("a", "a:1"):
        with (
            pytest.raises(ResourceExhausted, match="--max-registrations-per-connection"),
            limits.hold("a", "a:1"),
        ):
            pass
        assert limits.live("a") == 2
        with limits.hold("a", "a:2"):
            assert limits.live("a") == 3
    with limits.hold("a", "a:1"), limits.hold("a", "a:1"):
        assert limits.live("a") == 2
