"""Gate selection: a random healthy gate first, failed gates avoided for a while."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence


class GateChooser:
    """Picks the gate to connect to next.

    Starts with a random gate so clients spread over the list; a gate that failed (or is
    draining) is avoided for `quarantine` seconds; when every gate is avoided the marks are
    forgotten and the choice is random again (the caller's backoff spaces those rounds out).
    """

    def __init__(
        self,
        gates: Sequence[str],
        quarantine: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(gates, str):  # a str is a Sequence[str] too: one gate per character
            raise TypeError(f"gates is a list of addresses, not one string: [{gates!r}]")
        if not gates:
            raise ValueError("at least one gate address is needed")
        self._gates = list(dict.fromkeys(gates))
        self._quarantine = quarantine
        self._rng = rng or random.Random()
        self._clock = clock
        self._avoid_until: dict[str, float] = {}

    @property
    def gates(self) -> list[str]:
        return list(self._gates)

    def mark_failed(self, gate: str) -> None:
        self._avoid_until[gate] = self._clock() + self._quarantine

    def choose(self) -> str:
        now = self._clock()
        usable = [g for g in self._gates if self._avoid_until.get(g, 0.0) <= now]
        if not usable:
            self._avoid_until.clear()
            usable = self._gates
        return self._rng.choice(usable)
