"""LogThrottle: at most one log line per interval and key, for events a peer can repeat."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class LogThrottle(Generic[K]):
    """Decides which events of a kind a peer can repeat at will (a push dropped for a gate
    that stopped reading, a call with a forged credential, a registration beyond a bound) get
    a log line: the first of each key, then at most one per `interval` seconds, each saying how
    many were left out since the line before (``unlogged_before``). The events themselves are
    counted elsewhere (a metric, a status); only their lines are thinned.

    Keys are the caller's to bound (a reason, a reason and a registered gate): what is kept is
    one time and one count per key, until :meth:`forget` drops them.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._logged_at: dict[K, float] = {}
        self._unlogged: dict[K, int] = {}

    def admit(self, key: K, count: int = 1) -> int | None:
        """Whether `count` events of `key` get a line now: None when they do not (they are
        counted as left out), else how many were left out since the key's last line (0 for
        its first)."""
        now = self._clock()
        logged_at = self._logged_at.get(key)
        if logged_at is not None and now - logged_at < self._interval:
            self._unlogged[key] = self._unlogged.get(key, 0) + count
            return None
        self._logged_at[key] = now
        return self._unlogged.pop(key, 0)

    def forget(self, which: Callable[[K], bool]) -> None:
        """Drops what is kept about every key `which` is true of (its next event gets a line
        at once, as a first one)."""
        for kept in (self._logged_at, self._unlogged):
            for key in [key for key in kept if which(key)]:
                del kept[key]

    def keys(self) -> list[K]:
        """The keys kept, in the order of their first line."""
        return list(self._logged_at)


__all__ = ["LogThrottle"]
