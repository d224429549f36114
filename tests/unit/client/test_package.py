"""The client package: what it exports."""

from __future__ import annotations

import goverse.client


def test_public_names() -> None:
    """The facade exports exactly the SDK's public interface, and every name resolves."""
    assert sorted(goverse.client.__all__) == [
        "CallError",
        "Client",
        "ClientClosedError",
        "ClientState",
        "ClientTLS",
    ]
    for name in goverse.client.__all__:
        assert getattr(goverse.client, name) is not None
