"""The bare HTTP baseline: an aiohttp server whose ``POST /echo`` parses the JSON body and
answers it back, the least an HTTP/JSON server does per call (scenario 8's bare side).

``python -m bench.bare_http --listen 127.0.0.1:0 [--loop asyncio|uvloop] --ready-file PATH``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from bench.launch import LOOPS
from goverse.server import Ready, write_ready


async def echo(request: web.Request) -> web.Response:
    value = json.loads(await request.read())
    return web.Response(text=json.dumps(value), content_type="application/json")


async def serve(listen: str, ready_file: Path | None) -> int:
    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    bound_port = int(runner.addresses[0][1])
    bound = f"{host}:{bound_port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if ready_file is not None:
        write_ready(ready_file, Ready("bare-http", os.getpid(), bound, bound, bound_port, None))
    print(f"bare HTTP echo pid {os.getpid()} listening on {bound}", flush=True)
    await stop.wait()
    await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_http", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port; port 0 picks a free one")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--ready-file", type=Path, help="where to write the bound address")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        return int(uvloop.run(serve(args.listen, args.ready_file)))
    return asyncio.run(serve(args.listen, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
