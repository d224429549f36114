"""The scenarios. Each measures the bare grpc.aio baseline and the system in the same run.

1. ``calls`` (``_calls``): closed-loop calls of ``Echo.Echo`` through gate and node vs a bare
   unary echo.
2. ``push`` (``_push``): one object pushes N stamped messages to one client vs a bare server
   stream.
3. ``fanout`` (``_fanout``): one broadcast to many connected clients vs a bare server writing to
   many streams.
4. ``connections`` (``_connections``): gate RSS per idle registered client, and time to register
   them.
5. ``lifecycle`` (``_lifecycle``): SIGTERM-to-exit with many streams; node restart until pushes
   flow again.
6. ``tracing`` (``_tracing``): scenario 1's system side with tracing off and on.
7. ``state`` (``_state``): stateful objects on SQLite and PostgreSQL, each durability, vs the
   same calls in memory; reactivation from the store; node RSS across idle deactivation.
8. ``http`` (``_http``): JSON calls of ``Echo.Echo`` through the gate's HTTP interface vs a
   bare aiohttp JSON echo.
9. ``relay`` (``_relay``): an object calling another on its own node and across nodes vs the
   client calling it directly.
10. ``ab`` (``_ab``): the work tree's services against ``--compare-code``'s, both running,
    rounds of SDK and HTTP calls alternated between them (not in the default run).
11. ``ceiling`` (``_ceiling``): calls relayed over gRPC streams by processes doing no work per
    call vs the bare unary echo: the best issue 12's ratios can be on this machine.

``--scenarios`` takes the numbers or the names.

What they share (settings, the run's context, naming) is in ``_context``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from bench.cluster import Variant
from bench.machine import load_average
from bench.results_model import ScenarioResult
from bench.scenarios._ab import ab
from bench.scenarios._calls import calls
from bench.scenarios._ceiling import ceiling
from bench.scenarios._connections import connections
from bench.scenarios._context import Ctx, Settings
from bench.scenarios._fanout import fanout
from bench.scenarios._http import http
from bench.scenarios._lifecycle import lifecycle
from bench.scenarios._push import push
from bench.scenarios._relay import relay
from bench.scenarios._state import PARTS as STATE_PARTS
from bench.scenarios._state import STORES as STATE_STORES
from bench.scenarios._state import allocator_problems, state
from bench.scenarios._tracing import tracing

__all__ = [
    "AB_SCENARIOS",
    "CODE_SCENARIOS",
    "LOOP_SCENARIOS",
    "NAMES",
    "SCENARIOS",
    "STATE_PARTS",
    "STATE_STORES",
    "TLS_SCENARIOS",
    "Ctx",
    "Settings",
    "allocator_problems",
    "run_scenario",
]

SCENARIOS: dict[str, Callable[[Ctx, Variant], Awaitable[ScenarioResult]]] = {
    "1": calls,
    "2": push,
    "3": fanout,
    "4": connections,
    "5": lifecycle,
    "6": tracing,
    "7": state,
    "8": http,
    "9": relay,
    "10": ab,
    "11": ceiling,
}
NAMES = {
    "calls": "1",
    "push": "2",
    "fanout": "3",
    "connections": "4",
    "lifecycle": "5",
    "tracing": "6",
    "state": "7",
    "http": "8",
    "relay": "9",
    "ab": "10",
    "ceiling": "11",
}
"""Each scenario's number by name."""
LOOP_SCENARIOS = ("1", "2")
"""The scenarios repeated with the services on uvloop."""
CODE_SCENARIOS = ("1", "2", "3", "4", "5", "6", "7", "8", "9")
"""The scenarios repeated with the services of another checkout (``--compare-code``)."""
TLS_SCENARIOS = ("1", "2")
"""The scenarios that run with TLS on every hop of the system with ``--tls``."""
AB_SCENARIOS = ("10",)
"""The scenarios that compare the work tree with ``--compare-code`` within themselves: they
need it, and are not part of the default run."""


async def run_scenario(
    ctx: Ctx, number: str, variant: Variant, results: list[ScenarioResult]
) -> None:
    """Runs one scenario; a failure is recorded in its result and the run goes on."""
    started = time.monotonic()
    try:
        result = await SCENARIOS[number](ctx, variant)
    except Exception as error:
        result = ScenarioResult(f"{number}-{variant.label}", f"scenario {number} ({variant.label})")
        result.error = f"{type(error).__name__}: {error}"
    result.seconds = time.monotonic() - started
    result.load_average = load_average()
    results.append(result)
