"""Authenticators for gates in tests: ``--authenticator tests.helpers.authenticators:ApiKeys``."""

from __future__ import annotations

from goverse.errors import Unauthenticated
from goverse.gate import Credentials
from goverse.objects import Principal

GOOD_KEY = "good-key"
"""The key :class:`ApiKeys` admits."""
BROKEN_KEY = "crash"
"""The key on which :class:`ApiKeys` breaks, as a user's authenticator whose backend is down."""


class ApiKeys:
    """A user's authenticator (docs/security.md, "Your own authenticator"): admits
    :data:`GOOD_KEY` as ``key-owner``, refuses any other key with its own message, and raises an
    unexpected error for :data:`BROKEN_KEY`."""

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        if credentials.token == BROKEN_KEY:
            raise RuntimeError("the key service is down")
        if credentials.token != GOOD_KEY:
            raise Unauthenticated("unknown API key")
        return Principal("key-owner")
