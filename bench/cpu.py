"""CPU time of the processes of a measurement: who was busy, and how much per call.

A call through goverse crosses three processes; how much CPU each spends per call, and how
many cores are busy together, tell whether a run is limited by one process's work or by the
processes waiting on each other (docs/performance.md, "One convoy at a time").
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

HARNESS = "client"
"""The name of the bench process itself (it runs the calling clients)."""
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU seconds process `pid` (None: this process) has used, all threads."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as stat:  # fields after the command, which may hold spaces
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class CpuMeter:
    """Measures the CPU the harness and the processes `pids` (by name) use between
    :meth:`start` and :meth:`stop`."""

    pids: Mapping[str, int]
    used: dict[str, float] = field(default_factory=dict)
    """CPU seconds by process name (:data:`HARNESS` for the bench process), once stopped."""
    seconds: float = 0.0
    """How long the measurement lasted."""
    _started: dict[str, float] = field(default_factory=dict)
    _wall: float = 0.0

    def _now(self) -> dict[str, float]:
        now = {HARNESS: cpu_seconds(None)}
        now.update((name, cpu_seconds(pid)) for name, pid in self.pids.items())
        return now

    def start(self) -> None:
        self._started = self._now()
        self._wall = time.monotonic()

    def stop(self) -> None:
        ended = self._now()
        self.seconds = time.monotonic() - self._wall
        self.used = {name: ended[name] - self._started[name] for name in self._started}

    def per_call_ms(self, calls: int) -> dict[str, float]:
        """Milliseconds of CPU per call, by process."""
        return {name: 1000 * used / calls for name, used in self.used.items()} if calls else {}

    @property
    def cores_busy(self) -> float:
        """CPU seconds per second of every measured process together."""
        return sum(self.used.values()) / self.seconds if self.seconds else 0.0


__all__ = ["HARNESS", "CpuMeter", "cpu_seconds"]
