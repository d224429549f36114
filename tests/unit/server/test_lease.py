"""Lease on a fake clock: validity from send times, keep-alive retries, loss, revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from goverse.server._etcd import EtcdUnavailable
from goverse.server._lease import Lease
from tests.helpers.clock import FakeClock
from tests.helpers.tasks import bounded, cancel_and_wait

LEASE_ID = 0x7E57
START = 1000.0
TTL = timedelta(seconds=9)  # keep-alives every 3 s


class ScriptedRpc:
    """A LeaseRpc whose keep-alives the test answers one by one, or that fails them all."""

    def __init__(self) -> None:
        self.granted: list[int] = []
        self.revoked: list[int] = []
        self.fail: Exception | None = None
        self.revoke_error: Exception | None = None
        self.sent_at: list[float] = []
        self.clock: FakeClock | None = None
        self._calls: asyncio.Queue[asyncio.Future[int]] = asyncio.Queue()

    async def grant(self, ttl: int) -> int:
        self.granted.append(ttl)
        return LEASE_ID

    async def keepalive_once(self, lease: int) -> int:
        assert lease == LEASE_ID
        if self.clock is not None:
            self.sent_at.append(self.clock.now())
        if self.fail is not None:
            raise self.fail
        reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._calls.put_nowait(reply)
        return await reply

    async def next_keepalive(self) -> asyncio.Future[int]:
        """The next keep-alive sent, for the test to answer (bounded wait)."""
        return await bounded(self._calls.get(), 5.0)

    async def revoke(self, lease: int) -> None:
        self.revoked.append(lease)
        if self.revoke_error is not None:
            raise self.revoke_error


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock(START)
        self.rpc = ScriptedRpc()
        self.rpc.clock = self.clock
        self.lost: list[float] = []
        self.lease = Lease(
            self.rpc, TTL, on_lost=lambda: self.lost.append(self.clock.now()), clock=self.clock
        )
        self.run: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.lease.grant()
        self.run = asyncio.get_running_loop().create_task(self.lease.run(), name="lease")

    async def settle(self) -> None:
        """Waits until the lease loop sleeps again, or has returned."""
        assert self.run is not None
        sleeping = asyncio.ensure_future(self.clock.sleeping())
        try:
            await asyncio.wait({self.run, sleeping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(sleeping)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        if harness.run is not None:
            await cancel_and_wait(harness.run)


async def test_a_grant_makes_the_lease_valid_for_its_ttl_from_the_request(
    harness: Harness,
) -> None:
    """grant asks etcd for the TTL in whole seconds and makes the lease valid until the
    moment it was sent plus the TTL; its incarnation is its id in hexadecimal."""
    assert await harness.lease.grant() == LEASE_ID
    assert harness.rpc.granted == [9]
    assert harness.lease.valid_until == START + 9
    assert harness.lease.incarnation == "7e57"


async def test_each_acknowledged_keepalive_extends_validity_from_its_send_time(
    harness: Harness,
) -> None:
    """The loop renews every third of the TTL; an answer that arrives later still counts
    from the moment the keep-alive was sent, never from the answer."""
    await harness.start()
    await harness.clock.sleeping(until=START + 3)
    harness.clock.advance_to(START + 3)
    call = await harness.rpc.next_keepalive()
    harness.clock.advance(0.5)  # the answer takes half a second
    call.set_result(9)
    await harness.clock.sleeping(until=START + 6)
    assert harness.lease.valid_until == START + 3 + 9
    assert harness.lease.keepalives == 1
    harness.clock.advance_to(START + 6)
    (await harness.rpc.next_keepalive()).set_result(9)
    await harness.clock.sleeping(until=START + 9)
    assert harness.lease.valid_until == START + 6 + 9
    assert harness.lost == []


async def test_valid_is_false_from_the_margin_before_the_end_of_validity(
    harness: Harness,
) -> None:
    """valid(margin) holds until valid_until - margin, valid() until valid_until."""
    await harness.lease.grant()
    margin = timedelta(seconds=2)
    harness.clock.advance_to(START + 6.9)
    assert harness.lease.valid(margin)
    harness.clock.advance_to(START + 7)
    assert not harness.lease.valid(margin)
    assert harness.lease.valid()
    harness.clock.advance_to(START + 9)
    assert not harness.lease.valid()


async def test_keepalives_that_fail_are_retried_until_validity_runs_out_then_the_lease_is_lost(
    harness: Harness,
) -> None:
    """With etcd unreachable, keep-alives are retried (with backoff) while the lease is
    valid; on_lost is called once, exactly when validity runs out, and the loop returns."""
    harness.rpc.fail = EtcdUnavailable("etcd is down")
    await harness.start()
    assert harness.run is not None
    for _ in range(100):
        await harness.settle()
        if harness.run.done():
            break
        harness.clock.advance(0.25)
    await bounded(harness.run, 5.0)
    assert harness.lost == [START + 9]
    assert harness.lease.keepalive_failures >= 2
    assert all(sent < START + 9 for sent in harness.rpc.sent_at)
    assert not harness.lease.valid()
    assert "validity ran out" in (harness.lease.lost_reason or "")


async def test_a_keepalive_unanswered_at_the_end_of_validity_is_cancelled_and_the_lease_lost(
    harness: Harness,
) -> None:
    """A keep-alive still waiting for etcd when validity runs out does not delay the loss:
    on_lost is called at valid_until and the request is cancelled."""
    await harness.start()
    await harness.clock.sleeping(until=START + 3)
    harness.clock.advance_to(START + 3)
    call = await harness.rpc.next_keepalive()
    harness.clock.advance_to(START + 8.75)
    assert harness.lost == []
    assert harness.lease.valid()
    harness.clock.advance_to(START + 9)
    assert harness.run is not None
    await bounded(harness.run, 5.0)
    assert harness.lost == [START + 9]
    assert call.cancelled()


async def test_a_refused_keepalive_loses_the_lease_at_once(harness: Harness) -> None:
    """etcd answering TTL 0 (the lease expired or was revoked elsewhere) loses the lease at
    once, well before its validity would have run out."""
    await harness.start()
    await harness.clock.sleeping(until=START + 3)
    harness.clock.advance_to(START + 3)
    (await harness.rpc.next_keepalive()).set_result(0)
    assert harness.run is not None
    await bounded(harness.run, 5.0)
    assert harness.lost == [START + 3]
    assert not harness.lease.valid()
    assert "refused" in (harness.lease.lost_reason or "")


async def test_a_process_paused_past_its_validity_loses_the_lease_without_a_keepalive(
    harness: Harness,
) -> None:
    """When the loop wakes up after validity ended (the process was paused), it loses the
    lease before sending anything."""
    await harness.start()
    await harness.clock.sleeping(until=START + 3)
    harness.clock.advance_to(START + 12)
    assert harness.run is not None
    await bounded(harness.run, 5.0)
    assert harness.lost == [START + 12]
    assert harness.rpc.sent_at == []


async def test_revoke_ends_the_lease_without_calling_on_lost(harness: Harness) -> None:
    """revoke asks etcd once, makes the lease invalid at once, and the loop returns at its
    next step without a keep-alive and without on_lost; a second revoke does nothing. It
    says whether etcd revoked it (a caller knows whether the keys on it are gone)."""
    await harness.start()
    await harness.clock.sleeping(until=START + 3)
    assert await harness.lease.revoke()
    assert not await harness.lease.revoke()
    assert harness.rpc.revoked == [LEASE_ID]
    assert not harness.lease.valid()
    harness.clock.advance_to(START + 3)
    assert harness.run is not None
    await bounded(harness.run, 5.0)
    assert harness.lost == []
    assert harness.rpc.sent_at == []


async def test_a_failed_revoke_is_logged_not_raised(harness: Harness) -> None:
    """revoke is best effort: when etcd cannot be reached it returns (the lease expires by
    itself), saying it did not revoke it, and the lease is invalid here all the same."""
    await harness.lease.grant()
    harness.rpc.revoke_error = EtcdUnavailable("etcd is down")
    assert not await harness.lease.revoke()
    assert not harness.lease.valid()


async def test_a_lease_runs_only_once_granted_and_is_granted_once(harness: Harness) -> None:
    """run before grant, and a second grant, are programming errors."""
    with pytest.raises(RuntimeError, match="not been granted"):
        await harness.lease.run()
    await harness.lease.grant()
    with pytest.raises(RuntimeError, match="already"):
        await harness.lease.grant()


def test_a_lease_ttl_is_at_least_a_second() -> None:
    """etcd counts TTLs in whole seconds: a TTL under one second is refused."""
    rpc: Any = ScriptedRpc()
    with pytest.raises(ValueError, match="second"):
        Lease(rpc, timedelta(milliseconds=500), on_lost=lambda: None)
