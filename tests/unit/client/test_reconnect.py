"""SDK reconnection: backoff when every gate is down, dead gates skipped, reset when stable;
connect()'s error says why the last attempt failed."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from goverse.client import CallError, Client, ClientTLS
from goverse.client._client import FAILURE_SHOWN_CHARS
from tests.helpers.addresses import dead_address
from tests.helpers.certs import TestCA
from tests.helpers.fake_gate import FakeGate


@pytest.fixture
async def gates() -> AsyncIterator[list[FakeGate]]:
    started: list[FakeGate] = []
    yield started
    for gate in started:
        await gate.stop()


async def fake_gate(gates: list[FakeGate], **options: Any) -> FakeGate:
    gate = await FakeGate(**options).start()
    gates.append(gate)
    return gate


FAILURE_WAIT = timedelta(seconds=3)
"""connect()'s timeout where an attempt must fail first: a refused connection or handshake
fails within milliseconds, with room for a loaded machine."""


class Ceiling(random.Random):
    """Backoff jitter that always picks the longest delay, so backoff growth is observable."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_when_every_gate_refuses_the_client_backs_off_instead_of_looping(
    gates: list[FakeGate],
) -> None:
    """Two gates refusing every registration for 3 s: both are tried, a handful of times
    (backoff 100 ms doubling to 1 s, full jitter), never in a tight loop; then connect()
    gives up with UNAVAILABLE."""
    a, b = await fake_gate(gates, refuse=True), await fake_gate(gates, refuse=True)
    client = Client(
        [a.address, b.address],
        connect_timeout=timedelta(seconds=3),
        reconnect_initial=timedelta(milliseconds=100),
        reconnect_max=timedelta(seconds=1),
    )
    with pytest.raises(CallError) as failed:
        await client.connect()
    assert failed.value.status_code == grpc.StatusCode.UNAVAILABLE
    attempts = len(a.attempts) + len(b.attempts)
    print(f"{attempts} registration attempts in 3 s ({len(a.attempts)} + {len(b.attempts)})")
    assert a.attempts
    assert b.attempts
    assert 3 <= attempts <= 30
    # After a close, nothing tries again.
    await asyncio.sleep(0.3)
    assert len(a.attempts) + len(b.attempts) == attempts


@pytest.mark.parametrize("seed", range(4))
async def test_a_dead_gate_is_skipped_and_the_live_one_registers(
    gates: list[FakeGate], seed: int, unreachable: str
) -> None:
    """Whichever gate is chosen first, a client with one dead gate in its list registers with
    the live one promptly."""
    live = await fake_gate(gates)
    dead = unreachable
    client = Client(
        [dead, live.address],
        connect_timeout=timedelta(seconds=5),
        reconnect_initial=timedelta(milliseconds=100),
        rng=random.Random(seed),
    )
    started = time.monotonic()
    await client.connect()
    try:
        assert client.gate == live.address
        assert time.monotonic() - started < 3
    finally:
        await client.close()


async def test_backoff_resets_after_a_registration_that_lasted(gates: list[FakeGate]) -> None:
    """Registrations that each last longer than `stable_after` reset the backoff, so the
    client comes back after the initial delay every time instead of ever longer ones."""
    gate = await fake_gate(gates, lifetime=0.3)
    reconnects = 0

    def count(old: str, new: str) -> None:
        nonlocal reconnects
        reconnects += 1

    client = Client(
        [gate.address],
        reconnect_initial=timedelta(milliseconds=100),
        reconnect_max=timedelta(seconds=10),
        stable_after=timedelta(milliseconds=200),
        on_reconnect=count,
        rng=Ceiling(),
    )
    await client.connect()
    try:
        await asyncio.sleep(2.6)
    finally:
        await client.close()
    # With resets every cycle takes 0.3 + 0.1 s (6 in 2.6 s); without, the delays would
    # double (0.1, 0.2, 0.4, 0.8 s ...) and at most 4 would fit.
    assert len(gate.attempts) >= 5, gate.attempts
    assert reconnects == len(gate.attempts) - 1


async def test_connect_to_a_gate_nobody_listens_on_says_why_it_failed() -> None:
    """With no gate listening (connection refused), connect()'s UNAVAILABLE names the gate
    and the last failure's status and details: the CLI hides grpc's own log lines, so the
    error is the only place that says why. It said only "no gate … accepted a registration"."""
    with dead_address() as address:
        client = Client(
            [address],
            connect_timeout=FAILURE_WAIT,
            reconnect_initial=timedelta(milliseconds=50),
        )
        with pytest.raises(CallError) as failed:
            await client.connect()
    message = failed.value.message
    assert failed.value.status_code == grpc.StatusCode.UNAVAILABLE, message
    assert f"(last failure: {address}: UNAVAILABLE: " in message, message
    assert "refused" in message.lower(), message


async def test_connect_with_tls_to_a_plaintext_gate_says_why_it_failed(
    gates: list[FakeGate], tmp_path: Path
) -> None:
    """A TLS client against a plaintext gate fails its handshake: connect()'s UNAVAILABLE
    carries that failure (the gate, UNAVAILABLE and grpc's details), not only its timeout."""
    gate = await fake_gate(gates)
    ca = TestCA(tmp_path / "pki")
    client = Client(
        [gate.address],
        tls=ClientTLS(ca=ca.path),
        connect_timeout=FAILURE_WAIT,
        reconnect_initial=timedelta(milliseconds=50),
    )
    with pytest.raises(CallError) as failed:
        await client.connect()
    message = failed.value.message
    assert failed.value.status_code == grpc.StatusCode.UNAVAILABLE, message
    assert f"(last failure: {gate.address}: UNAVAILABLE: " in message, message
    assert "handshake" in message.lower(), message
    assert not gate.attempts  # the handshake failed before any registration arrived


async def test_the_failure_connect_reports_is_bounded(gates: list[FakeGate]) -> None:
    """A gate's error details of any length add at most FAILURE_SHOWN_CHARS characters (and
    an ellipsis) to connect()'s message: its details come from the network."""
    gate = await fake_gate(gates, refuse=True, refusal="x" * 5_000)
    client = Client(
        [gate.address],
        connect_timeout=FAILURE_WAIT,
        reconnect_initial=timedelta(milliseconds=50),
    )
    with pytest.raises(CallError) as failed:
        await client.connect()
    message = failed.value.message
    assert f"(last failure: {gate.address}: UNAVAILABLE: xxx" in message, message[:300]
    assert message.endswith("…)"), message[-100:]
    assert len(message) < FAILURE_SHOWN_CHARS + 300, len(message)
