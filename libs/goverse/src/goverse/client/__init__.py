"""The goverse client SDK (asyncio): register with a gate, call objects, receive pushes."""

from __future__ import annotations

from goverse.client._client import (
    Client,
    ClientClosedError,
    ClientState,
)
from goverse.client._tls import ClientTLS
from goverse.errors import CallError

__all__ = [
    "CallError",
    "Client",
    "ClientClosedError",
    "ClientState",
    "ClientTLS",
]
