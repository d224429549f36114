"""Lease against a real etcd: kept alive, lost when etcd is gone or refuses, kept over a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from goverse.server._etcd import EtcdClient
from goverse.server._lease import Lease
from tests.helpers.etcd import EtcdServer
from tests.helpers.tasks import bounded, cancel_and_wait
from tests.helpers.waiting import eventually

TTL = timedelta(seconds=3)  # keep-alives every second; the client's timeout is 1 s
SLACK = 0.5
"""How late after its validity the loss may be reported: a loop turn on a loaded machine."""


class Watched:
    """A lease under test, its keep-alive loop and when it was lost."""

    def __init__(self, client: EtcdClient) -> None:
        self.lost_at: list[float] = []
        self.lease = Lease(client, TTL, on_lost=lambda: self.lost_at.append(time.monotonic()))
        self.run: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.lease.grant()
        self.run = asyncio.get_running_loop().create_task(self.lease.run(), name="lease")

    async def stopped(self, timeout: float) -> None:
        assert self.run is not None
        await bounded(asyncio.shield(self.run), timeout)


@pytest.fixture
async def watched(client: EtcdClient) -> AsyncIterator[Watched]:
    watched = Watched(client)
    try:
        yield watched
    finally:
        if watched.run is not None:
            await cancel_and_wait(watched.run)


async def test_keepalives_keep_the_lease_and_its_keys_past_the_ttl(
    watched: Watched, client: EtcdClient
) -> None:
    """The loop renews the lease every third of the TTL: validity moves on, and a key on the
    lease is still there after more than a TTL."""
    await watched.start()
    await client.put("/t/a", b"1", watched.lease.id)
    granted_until = watched.lease.valid_until
    await eventually(lambda: watched.lease.keepalives >= 4, timeout=10, what="4 keep-alives")
    assert watched.lease.valid_until > granted_until + 2
    assert watched.lease.valid()
    assert await client.get("/t/a") is not None
    assert watched.lost_at == []


async def test_a_killed_etcd_loses_the_lease_when_its_validity_runs_out(
    watched: Watched, etcd: EtcdServer
) -> None:
    """With etcd killed, on_lost is called once validity runs out — not before, and at most a
    loop turn after — which is at most a TTL after the kill."""
    await watched.start()
    await eventually(lambda: watched.lease.keepalives >= 1, timeout=10, what="a keep-alive")
    killed_at = time.monotonic()
    etcd.kill()
    await watched.stopped(timeout=TTL.total_seconds() + 5)
    [lost_at] = watched.lost_at
    valid_until = watched.lease.valid_until
    assert valid_until <= killed_at + TTL.total_seconds()
    assert valid_until <= lost_at <= valid_until + SLACK
    assert watched.lease.keepalive_failures >= 1
    assert not watched.lease.valid()


async def test_a_frozen_etcd_loses_the_lease_when_its_validity_runs_out(
    watched: Watched, etcd: EtcdServer
) -> None:
    """With etcd paused, keep-alives get no answer at all; the lease is lost at the end of
    its validity all the same, not when the unanswered request times out."""
    await watched.start()
    await eventually(lambda: watched.lease.keepalives >= 1, timeout=10, what="a keep-alive")
    etcd.pause()
    try:
        await watched.stopped(timeout=TTL.total_seconds() + 5)
    finally:
        etcd.resume()
    [lost_at] = watched.lost_at
    assert watched.lease.valid_until <= lost_at <= watched.lease.valid_until + SLACK


async def test_a_lease_revoked_elsewhere_is_lost_at_its_next_keepalive(
    watched: Watched, client: EtcdClient
) -> None:
    """When etcd no longer knows the lease (it expired, or was revoked by someone else),
    the next keep-alive is refused and on_lost is called at once, long before validity
    would have run out."""
    await watched.start()
    await client.revoke(watched.lease.id)
    await watched.stopped(timeout=TTL.total_seconds())
    [lost_at] = watched.lost_at
    assert lost_at < watched.lease.valid_until
    assert "refused" in (watched.lease.lost_reason or "")


async def test_an_etcd_restarted_within_the_ttl_keeps_the_lease(
    watched: Watched, client: EtcdClient, etcd: EtcdServer
) -> None:
    """etcd killed and started again within the TTL: keep-alives resume on the same client,
    the lease and its key survive, and on_lost is not called."""
    await watched.start()
    await client.put("/t/a", b"1", watched.lease.id)
    await eventually(lambda: watched.lease.keepalives >= 1, timeout=10, what="a keep-alive")
    etcd.kill()
    await etcd.start()
    renewed = watched.lease.keepalives
    await eventually(lambda: watched.lease.keepalives >= renewed + 3, timeout=10)
    assert watched.lost_at == []
    assert watched.lease.valid()
    assert await client.get("/t/a") is not None


async def test_revoke_deletes_the_keys_of_the_lease(watched: Watched, client: EtcdClient) -> None:
    """revoke ends the lease in etcd (its keys vanish) and the loop returns without
    on_lost."""
    await watched.start()
    await client.put("/t/a", b"1", watched.lease.id)
    await watched.lease.revoke()
    assert await client.get("/t/a") is None
    await watched.stopped(timeout=TTL.total_seconds())
    assert watched.lost_at == []


async def test_a_process_paused_past_its_ttl_loses_the_lease_before_sending_anything(
    watched: Watched, client: EtcdClient
) -> None:
    """This whole process stops for longer than the TTL (its event loop blocked, as under
    SIGSTOP or a long GC pause): etcd expires the lease and its key meanwhile, and when the
    process runs again the lease is lost at its first step, without a keep-alive."""
    await watched.start()
    await client.put("/t/a", b"1", watched.lease.id)
    await eventually(lambda: watched.lease.keepalives >= 1, timeout=10, what="a keep-alive")
    renewed, failed = watched.lease.keepalives, watched.lease.keepalive_failures
    time.sleep(TTL.total_seconds() + 1)  # noqa: ASYNC251 - the pause is the fault under test
    await watched.stopped(timeout=5)
    assert len(watched.lost_at) == 1
    # Nothing was sent after the pause (a reply to one sent just before may still count).
    assert watched.lease.keepalives <= renewed + 1
    assert watched.lease.keepalive_failures == failed
    assert "validity ran out" in (watched.lease.lost_reason or "")
    await eventually(lambda: _absent(client, "/t/a"), timeout=5, what="etcd expiring the key")


async def _absent(client: EtcdClient, key: str) -> bool:
    return await client.get(key) is None
