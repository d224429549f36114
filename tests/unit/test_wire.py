"""Wire contract: a close reason travels as trailing metadata and comes back as itself."""

from __future__ import annotations

import pytest

from goverse import wire
from goverse.wire import CloseReason


@pytest.mark.parametrize("reason", list(CloseReason))
def test_a_close_reason_round_trips_through_trailing_metadata(reason: CloseReason) -> None:
    metadata = wire.close_metadata(reason)
    assert metadata == ((wire.CLOSE_REASON_KEY, reason.value),)
    assert wire.close_reason_of(metadata) is reason


def test_no_close_reason_is_no_metadata() -> None:
    assert wire.close_metadata(None) == ()
    assert wire.close_reason_of(()) is None
