"""The harness's own servers (bare baseline, OTLP sink): bind, serve with health, report ready."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from goverse.server import Ready, write_ready


async def serve_until_signalled(
    server: grpc.aio.Server, name: str, listen: str, ready_file: Path | None
) -> bool:
    """Binds `listen` (port 0: a free port), serves with health SERVING, writes the ready file
    and waits for SIGTERM or SIGINT. False (with a message on stderr) when it cannot bind."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        print(f"{name}: cannot listen on {listen}", file=sys.stderr)
        return False
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = f"{listen.rpartition(':')[0]}:{port}"
    if ready_file is not None:
        write_ready(ready_file, Ready(name, os.getpid(), bound, bound, port, None))
    print(f"{name} pid {os.getpid()} listening on {bound}", flush=True)
    await stop.wait()
    return True
