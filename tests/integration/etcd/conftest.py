"""Fixtures of the etcd tests: a client of the test's etcd."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from goverse.server._etcd import EtcdClient
from tests.helpers.etcd import EtcdServer

TIMEOUT = timedelta(seconds=1)
"""The etcd request timeout of the tests: short, so that a dead etcd is noticed quickly, and
still far above what a request takes on loopback."""


@pytest.fixture
async def client(etcd: EtcdServer) -> AsyncIterator[EtcdClient]:
    """An :class:`EtcdClient` of the test's etcd (timeout :data:`TIMEOUT`); closed after."""
    async with EtcdClient([etcd.endpoint], TIMEOUT) as client:
        yield client
