"""sweep_departed_channels: a departed node's channel is closed after the grace, not before,
and not at all when the node comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from goverse.server import sweep_departed_channels
from goverse.transport import ChannelPool, channel_options
from tests.helpers.fake_view import FakeView
from tests.helpers.tasks import cancel_and_wait
from tests.helpers.waiting import eventually

A, B, C = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"
GRACE = 0.3


@pytest.fixture
async def pool() -> AsyncIterator[ChannelPool]:
    channels = ChannelPool(channel_options())
    yield channels
    await channels.close()


async def test_a_departed_nodes_channel_is_closed_after_the_grace(pool: ChannelPool) -> None:
    """B leaves: its channel stays for the grace (calls on it may still finish), then it is
    closed and forgotten; A's, still in the view, is untouched."""
    view = FakeView(A, B)
    a, b = pool.get(A), pool.get(B)
    closed: list[str] = []
    sweep = asyncio.create_task(sweep_departed_channels(view, pool, closed.append, GRACE))
    try:
        view.set_nodes(A)
        left = asyncio.get_running_loop().time()
        await eventually(lambda: closed == [B], timeout=10)
        assert asyncio.get_running_loop().time() - left >= GRACE
        assert pool.addresses() == [A]
        assert pool.get(A) is a
        assert pool.get(B) is not b  # a new channel, should B come back
    finally:
        await cancel_and_wait(sweep)


async def test_a_node_back_within_the_grace_keeps_its_channel(pool: ChannelPool) -> None:
    """B leaves and comes back (a restart at the same address) before the grace ends: its
    channel is kept; C, which left for good, loses its own."""
    view = FakeView(A, B, C)
    b = pool.get(B)
    pool.get(C)
    closed: list[str] = []
    sweep = asyncio.create_task(sweep_departed_channels(view, pool, closed.append, GRACE))
    try:
        view.set_nodes(A)
        await asyncio.sleep(GRACE / 3)  # B is away for part of the grace, as in a restart
        view.set_nodes(A, B)
        await eventually(lambda: closed == [C], timeout=10)
        await asyncio.sleep(GRACE)  # past B's grace too, had it been counting still
        assert closed == [C]
        assert pool.get(B) is b
    finally:
        await cancel_and_wait(sweep)
