"""Freezing a process for a test: SIGSTOP, returning only once every one of its threads stopped."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STOP_WAIT = 5.0
"""Longest :func:`freeze` waits for the threads to stop."""
_STOPPED = frozenset({"T", "t", "Z", "X"})
"""Thread states (``/proc/<pid>/task/<tid>/stat``) in which a thread answers nothing."""


def freeze(pid: int, timeout: float = STOP_WAIT) -> None:
    """Sends SIGSTOP to process `pid` and waits, bounded, until each of its threads has
    stopped.

    The kernel stops a process's threads one by one, each as it next runs: right after
    ``kill()`` returned, etcd (a Go process with a dozen threads) still answered a read sent
    within 2 ms, in about one run in fifteen. A test that freezes a peer to see how others
    cope with its silence must not get an answer from it after the freeze.
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not _all_stopped(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {timeout}s of SIGSTOP")
        time.sleep(0.001)


def _all_stopped(pid: int) -> bool:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True  # gone: it answers nothing either
    for thread in threads:
        try:
            stat = Path(f"/proc/{pid}/task/{thread}/stat").read_text()
        except FileNotFoundError:
            continue  # a thread that just ended
        # The state follows the command name, which is in parentheses and may hold spaces.
        if stat.rpartition(")")[2].split()[0] not in _STOPPED:
            return False
    return True


__all__ = ["STOP_WAIT", "freeze"]
