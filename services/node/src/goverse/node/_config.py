"""Node configuration: the flags of ``goverse-node``, their environment variables and checks."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from goverse.server import (
    FlagParser,
    parse_address,
    parse_address_list,
    parse_byte_size,
    parse_duration,
    port_of,
    positive_int,
)
from goverse.transport import DEFAULT_MAX_MESSAGE_BYTES, Keepalive

DEFAULT_OBJECTS = ("goverse.examples.counter", "goverse.examples.chat")
DEFAULT_GATE_QUEUE_SIZE = 10_000
DEFAULT_GATE_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_METRICS_PORT = 9464
MIN_MESSAGE_BYTES = 64 * 1024
MIN_HEARTBEAT = timedelta(milliseconds=100)

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is told at start; decided once, never changed while it runs."""

    listen: str = "0.0.0.0:7000"
    """Address the gRPC server binds (``host:port``; port 0 picks a free port)."""

    advertise: str = "127.0.0.1:7000"
    """Address gates and other nodes use to reach this node; also its name in `nodes`."""

    nodes: tuple[str, ...] = ("127.0.0.1:7000",)
    """Every node of the cluster, this one included; placement maps objects onto them."""

    objects: tuple[str, ...] = DEFAULT_OBJECTS
    """Python modules whose :class:`goverse.objects.Object` subclasses this node hosts."""

    shutdown_timeout: timedelta = field(default=timedelta(seconds=5))
    """Budget for a complete stop, from the signal to the closed server."""

    gate_queue_size: int = DEFAULT_GATE_QUEUE_SIZE
    """Envelopes queued per gate stream; pushes beyond it are dropped and counted."""

    gate_queue_bytes: int = DEFAULT_GATE_QUEUE_BYTES
    """Bytes of envelopes queued per gate stream; pushes beyond it are dropped and counted."""

    heartbeat_interval: timedelta = field(default=timedelta(seconds=5))
    """A gate stream carries a heartbeat when it has carried nothing else for this long."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message sent or received, by the server and by node-to-node channels."""

    call_timeout: timedelta = field(default=timedelta(seconds=30))
    """Deadline of an object-to-object call when the call being served has none."""

    keepalive: Keepalive = field(default_factory=Keepalive)
    """Keepalive pings of the server's connections (gates) and of node-to-node channels."""

    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of the Prometheus endpoint (``/metrics`` on all interfaces); 0: none."""

    log_level: str = "info"
    """Minimum level logged."""

    log_format: str = "auto"
    """``json``, ``console`` or ``auto`` (console on a TTY)."""

    ready_file: Path | None = None
    """Where to write the bound addresses as JSON once serving (removed on stop)."""


def module_list(text: str) -> tuple[str, ...]:
    """Parses a comma-separated list of dotted module names; rejects empty lists and repeats."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("the list is empty")
    for item in items:
        if not _MODULE.match(item):
            raise argparse.ArgumentTypeError(f"{item!r} is not a module name")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} appears more than once")
    return tuple(items)


def _optional_address(text: str) -> str:
    return parse_address(text) if text else ""


def build_parser(environ: Mapping[str, str] | None = None) -> FlagParser:
    """The ``goverse-node`` flag parser; `environ` supplies the ``GOVERSE_*`` fallbacks."""
    parser = FlagParser(
        "goverse-node",
        "Hosts goverse objects: serves calls routed to it by placement and pushes the "
        "messages its objects send down the RegisterGate stream of each gate.",
        environ,
    )
    defaults = NodeConfig()
    parser.flag(
        "listen",
        help="address the gRPC server binds (port 0: any free port)",
        default=defaults.listen,
        parse=parse_address,
        metavar="HOST:PORT",
    )
    parser.flag(
        "advertise",
        help="address gates and other nodes reach this node at; it must be one of --nodes "
        "(when unset: 127.0.0.1:<port of --listen>)",
        default="",
        parse=_optional_address,
        metavar="HOST:PORT",
    )
    parser.flag(
        "nodes",
        help="comma-separated addresses of every node, this one included (placement input)",
        default=",".join(defaults.nodes),
        parse=parse_address_list,
        metavar="HOST:PORT,...",
    )
    parser.flag(
        "objects",
        help="comma-separated Python modules whose Object subclasses this node hosts",
        default=",".join(defaults.objects),
        parse=module_list,
        metavar="MODULE,...",
    )
    parser.flag(
        "shutdown-timeout",
        help="budget for a complete stop after SIGTERM/SIGINT (e.g. 5s, 500ms)",
        default="5s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "gate-queue-size",
        help="most envelopes queued per gate stream; further pushes are dropped and counted",
        default=str(defaults.gate_queue_size),
        parse=positive_int,
        metavar="N",
    )
    parser.flag(
        "gate-queue-bytes",
        help="most bytes of envelopes queued per gate stream; further pushes are dropped",
        default="64MiB",
        parse=parse_byte_size,
        metavar="SIZE",
    )
    parser.flag(
        "heartbeat-interval",
        help="a gate stream idle for this long carries a heartbeat",
        default="5s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "max-message-bytes",
        help="largest gRPC message sent or received (server and node-to-node channels)",
        default="4MiB",
        parse=parse_byte_size,
        metavar="SIZE",
    )
    parser.flag(
        "call-timeout",
        help="deadline of an object-to-object call when the call being served has none",
        default="30s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.keepalive_flags()
    parser.metrics_flag(DEFAULT_METRICS_PORT)
    parser.logging_flags()
    parser.flag(
        "ready-file",
        help="write the bound addresses as JSON to this file once serving; removed on stop",
        default="",
        parse=lambda text: Path(text) if text else None,
        metavar="PATH",
    )
    return parser


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Parses flags (falling back to ``GOVERSE_*`` in `environ`) into a checked config.

    Invalid values end the process with exit code 2 and a message naming the flag.
    """
    parser = build_parser(environ)
    args = parser.parse_flags(argv)
    advertise: str = args.advertise or f"127.0.0.1:{port_of(args.listen)}"
    nodes: tuple[str, ...] = args.nodes
    if advertise not in nodes:
        parser.error(
            f"argument --advertise: {advertise} is not in --nodes ({','.join(nodes)}); "
            "a node must be named in the node list it serves"
        )
    if port_of(advertise) == 0:
        parser.error("argument --advertise: the port must not be 0")
    for name in ("shutdown_timeout", "call_timeout"):
        if getattr(args, name) <= timedelta(0):
            parser.error(f"argument --{name.replace('_', '-')}: must be more than 0")
    if args.heartbeat_interval < MIN_HEARTBEAT:
        parser.error(
            f"argument --heartbeat-interval: must be at least "
            f"{int(MIN_HEARTBEAT.total_seconds() * 1000)}ms"
        )
    if args.max_message_bytes < MIN_MESSAGE_BYTES:
        parser.error(f"argument --max-message-bytes: must be at least {MIN_MESSAGE_BYTES}")
    if args.gate_queue_bytes < 1:
        parser.error("argument --gate-queue-bytes: must be at least 1")
    try:
        keepalive = Keepalive(
            time=args.keepalive_time,
            timeout=args.keepalive_timeout,
            min_time=args.keepalive_min_time,
        )
    except ValueError as error:
        parser.error(f"argument {error}")
    return NodeConfig(
        listen=args.listen,
        advertise=advertise,
        nodes=nodes,
        objects=args.objects,
        shutdown_timeout=args.shutdown_timeout,
        gate_queue_size=args.gate_queue_size,
        gate_queue_bytes=args.gate_queue_bytes,
        heartbeat_interval=args.heartbeat_interval,
        max_message_bytes=args.max_message_bytes,
        call_timeout=args.call_timeout,
        keepalive=keepalive,
        metrics_port=args.metrics_port,
        log_level=args.log_level,
        log_format=args.log_format,
        ready_file=args.ready_file,
    )
