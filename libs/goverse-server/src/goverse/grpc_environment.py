"""grpc's environment for a goverse service process: what must be set before grpc loads.

A service package (``goverse.gate``, ``goverse.node``) imports this module first, so that
the process's grpc starts with it; grpc reads ``GRPC_EXPERIMENTS`` once, when it loads, and
ignores a change made after (measured: no effect set after ``import grpc``). A program that
embeds a service package gets the same for its whole process, if grpc was not loaded before.

What it sets, unless the environment already says otherwise (``GRPC_EXPERIMENTS=`` empty
gives grpc's own defaults back): grpc's older poller instead of its EventEngine. With
EventEngine every stream write is a ``sendmsg`` followed by an eventfd write that wakes
grpc's poller thread, two wake-ups of a thread on another core per write, which held calls
at concurrency 1 (measured, with what the older poller bought: docs/performance.md, "What
holds concurrency 1"). The suite passes on both. An experiment grpc no longer knows is
logged by grpc at start ("Unknown experiment"): ``tests/unit/server/test_grpc_environment.py``
checks that the pinned grpc knows these.
"""

from __future__ import annotations

import os

VARIABLE = "GRPC_EXPERIMENTS"
OLDER_POLLER = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
"""The experiments turned off: EventEngine for client channels, for listeners, and for
every other endpoint."""

os.environ.setdefault(VARIABLE, OLDER_POLLER)

__all__ = ["OLDER_POLLER", "VARIABLE"]
