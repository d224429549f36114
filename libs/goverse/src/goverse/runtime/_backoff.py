"""Backoff: exponential reconnect delays with full jitter, reset after a stable connection."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta


@dataclass
class Backoff:
    """Delays for successive reconnect attempts.

    The n-th delay is uniform in ``[0, min(maximum, initial * 2**n)]`` ("full jitter"), so many
    peers that lost the same server do not retry in step.
    """

    initial: timedelta
    maximum: timedelta
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def __post_init__(self) -> None:
        if self.initial <= timedelta(0):
            raise ValueError("the initial backoff must be positive")
        if self.maximum < self.initial:
            raise ValueError("the maximum backoff must not be below the initial backoff")

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt."""
        ceiling = self.initial.total_seconds() * (2 ** min(self._attempt, 32))
        ceiling = min(ceiling, self.maximum.total_seconds())
        self._attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self._attempt = 0
