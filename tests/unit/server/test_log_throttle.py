"""LogThrottle: one log line per interval and key, counting the ones it leaves out."""

from __future__ import annotations

from goverse.server import LogThrottle


class Now:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_event_is_logged_and_the_rest_of_the_interval_is_counted() -> None:
    """The first event of a key is logged at once (none left out before it); the events of
    the following interval are not, and the first one after it says how many were not."""
    clock = Now()
    throttle: LogThrottle[str] = LogThrottle(10.0, clock)
    assert throttle.admit("a") == 0
    assert [throttle.admit("a") for _ in range(999)] == [None] * 999
    clock.now += 9.9
    assert throttle.admit("a", 5) is None
    clock.now += 0.1
    assert throttle.admit("a") == 1004
    assert throttle.admit("a") is None


def test_each_key_has_its_own_interval() -> None:
    """Another key is not held back by the first one's line."""
    clock = Now()
    throttle: LogThrottle[str] = LogThrottle(10.0, clock)
    assert throttle.admit("a") == 0
    assert throttle.admit("b") == 0
    assert throttle.admit("a") is None


def test_forgotten_keys_keep_nothing() -> None:
    """forget() drops what is kept about the keys it names: their next event is logged at
    once, as a first one, and the others' are kept."""
    clock = Now()
    throttle: LogThrottle[tuple[str, str]] = LogThrottle(10.0, clock)
    assert throttle.admit(("full", "g1")) == 0
    assert throttle.admit(("full", "g1")) is None
    assert throttle.admit(("full", "g2")) == 0
    throttle.forget(lambda key: key[1] == "g1")
    assert throttle.keys() == [("full", "g2")]
    assert throttle.admit(("full", "g1")) == 0
    assert throttle.admit(("full", "g2")) is None
