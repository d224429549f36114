"""Fixtures of the gate unit tests: a fake node on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.unit.gate.fake_node import FakeNode


@pytest.fixture
async def fake_node() -> AsyncIterator[FakeNode]:
    """A started FakeNode; stopped after the test."""
    node = await FakeNode().start()
    try:
        yield node
    finally:
        await node.stop(0)
