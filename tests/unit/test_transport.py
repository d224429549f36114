"""Backoff: exponential ceiling, full jitter, maximum, reset; channel and server options."""

from __future__ import annotations

import random
from datetime import timedelta

import grpc
import pytest

from goverse.transport import Backoff, Keepalive, channel_options, server_options


def test_delays_stay_under_a_doubling_ceiling_capped_at_maximum() -> None:
    backoff = Backoff(timedelta(milliseconds=100), timedelta(seconds=1), random.Random(7))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling


def test_full_jitter_spreads_delays() -> None:
    """Many peers starting together do not retry in step."""
    delays = [
        Backoff(timedelta(seconds=1), timedelta(seconds=1), random.Random(seed)).next_delay()
        for seed in range(200)
    ]
    assert min(delays) < 0.2
    assert max(delays) > 0.8


def test_reset_starts_over() -> None:
    backoff = Backoff(timedelta(milliseconds=100), timedelta(seconds=10), random.Random(1))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 0.1


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(timedelta(0), timedelta(seconds=1))
    with pytest.raises(ValueError, match="maximum"):
        Backoff(timedelta(seconds=2), timedelta(seconds=1))


async def test_keepalive_longer_than_grpc_takes_is_given_as_its_longest() -> None:
    """A keepalive of 30 days (more milliseconds than a C int holds) makes options a channel
    and a server accept, not an OverflowError when they are made."""
    month = timedelta(days=30)
    keepalive = Keepalive(time=month, timeout=month, min_time=month)
    channel = grpc.aio.insecure_channel("127.0.0.1:1", options=channel_options(keepalive=keepalive))
    await channel.close()
    server = grpc.aio.server(options=server_options(keepalive=keepalive))
    await server.stop(None)
