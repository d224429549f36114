"""Starts goverse-gate or goverse-node with a chosen event loop, without touching the services.

``python -m bench.launch --loop asyncio|uvloop gate|node [service flags...]``

The services run on uvloop whenever it can be imported (``goverse.server.run``). With
``--loop asyncio`` this wrapper makes ``import uvloop`` fail, so the plain asyncio loop runs
even where uvloop is installed; with ``--loop uvloop`` it checks that uvloop imports (the
harness puts a side directory holding it on PYTHONPATH). Then it calls the service's ``main``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

LOOPS = ("asyncio", "uvloop")


def select_loop(loop: str) -> None:
    """Makes the service's ``run()`` use `loop`."""
    if loop == "asyncio":
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # import uvloop -> ImportError
    else:
        import uvloop  # noqa: F401  # fails loudly when it is not installed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.launch", description=__doc__)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("service", choices=("gate", "node"))
    args, rest = parser.parse_known_args(argv)
    select_loop(args.loop)
    if args.service == "gate":
        from goverse.gate.__main__ import main as service_main
    else:
        from goverse.node.__main__ import main as service_main
    return service_main(rest)


if __name__ == "__main__":
    sys.exit(main())
