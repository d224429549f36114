"""Channel sweep: pooled channels of nodes that left the cluster are closed, not kept forever."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from goverse.server._membership import ClusterView
from goverse.transport import ChannelPool

log = structlog.get_logger(__name__)

DEPARTED_GRACE = 60.0
"""Seconds a node must have been out of the view before its channel is closed: longer than
any call's default deadline (--call-timeout, 30 s), so the calls still on it finish, and a
node back at the same address within it (a restart) keeps its channel."""


async def sweep_departed_channels(
    view: ClusterView,
    pool: ChannelPool,
    on_closed: Callable[[str], None] = lambda address: None,
    grace: float = DEPARTED_GRACE,
) -> None:
    """Closes the channel `pool` holds to an address that no node of `view` has had for
    `grace` seconds, and tells `on_closed` (which drops what it kept for that address);
    runs until cancelled, waking on each change of the view and when a grace ends.

    With etcd membership every pod that ever ran would otherwise keep a channel (and the
    connection attempts of its reconnect backoff) in every gate and node for good. A static
    view never changes, so nothing is ever closed there.
    """
    loop = asyncio.get_running_loop()
    departed: dict[str, float] = {}
    """Address -> when it was first seen without a node."""
    version = view.version
    while True:
        live = {info.address for info in view.nodes().values()}
        now = loop.time()
        pooled = set(pool.addresses())
        for address in list(departed):
            if address in live or address not in pooled:
                del departed[address]
        for address in pooled - live:
            since = departed.setdefault(address, now)
            if now - since >= grace:
                del departed[address]
                await pool.discard(address)
                on_closed(address)
                log.info("channel to a departed node closed", node=address)
        wait = min(departed.values()) + grace - now if departed else None
        try:
            async with asyncio.timeout(wait):
                version = await view.changed(version)
        except TimeoutError:
            pass  # a grace has ended: look again


__all__ = ["DEPARTED_GRACE", "sweep_departed_channels"]
