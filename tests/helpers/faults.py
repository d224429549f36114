"""Fault injection on service processes: freeze, kill and restart them; read their memory."""

from __future__ import annotations

import contextlib
import datetime
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers.freezing import freeze
from tests.helpers.processes import ServiceProcess


@contextlib.contextmanager
def sigstop(proc: ServiceProcess) -> Iterator[float]:
    """Freezes `proc` (SIGSTOP) for the block, like a hung VM or a half-open peer: its
    sockets stay open but nothing answers (the block starts once every thread of it has
    stopped). Always resumes it (SIGCONT), also when the block fails. Yields the wall-clock
    time of the stop."""
    assert proc.process is not None
    freeze(proc.process.pid)
    try:
        yield time.time()
    finally:
        if proc.alive():
            proc.signal(signal.SIGCONT)


def sigkill(proc: ServiceProcess, timeout: float = 10.0) -> float:
    """Kills `proc` with SIGKILL (no shutdown at all) and reaps it; returns the wall-clock
    time of the kill."""
    killed = time.time()
    proc.signal(signal.SIGKILL)
    assert proc.process is not None
    proc.process.wait(timeout)
    return killed


def restart(proc: ServiceProcess, *, kill: bool = False, timeout: float = 15.0) -> float:
    """Stops `proc` (SIGTERM, or SIGKILL with `kill`) and starts it again on the same address
    (its unix socket, or the TCP port it bound) with the same flags; returns once it serves,
    with the wall-clock time it stopped."""
    if kill:
        stopped = sigkill(proc)
    else:
        stopped = time.time()
        code = proc.terminate(timeout)
        assert code == 0, f"{proc.name} exited with {code}"
    proc.start()
    return stopped


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` now (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def json_lines(proc: ServiceProcess) -> list[dict[str, Any]]:
    """The JSON log lines of `proc`. Lines gRPC core writes to stderr by itself (such as
    "Got goaway ... ping_timeout" when keepalive gives up on a peer) are skipped."""
    return [json.loads(raw) for raw in proc.output().splitlines() if raw.startswith("{")]


def log_events(proc: ServiceProcess, event: str, **fields: Any) -> list[dict[str, Any]]:
    """The JSON log lines of `proc` whose event is `event` and that carry `fields`."""
    return [
        line
        for line in json_lines(proc)
        if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
    ]


def logged_at(line: dict[str, Any]) -> float:
    """The wall-clock time a JSON log line was written (its ISO ``timestamp``)."""
    stamp = str(line["timestamp"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()
