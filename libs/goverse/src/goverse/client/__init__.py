"""The goverse client SDK (asyncio): register with a gate, call objects, receive pushes."""

from __future__ import annotations

from goverse.client._client import (
    CLIENT_ID_HEADER,
    CREDENTIAL_HEADER,
    Client,
    ClientClosedError,
    ClientState,
)
from goverse.errors import CallError

__all__ = [
    "CLIENT_ID_HEADER",
    "CREDENTIAL_HEADER",
    "CallError",
    "Client",
    "ClientClosedError",
    "ClientState",
]
