"""Gate configuration: the frozen settings of one gate process and the flags that set them."""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from goverse.ids import MAX_GATE_ID_LENGTH, gate_id_problem
from goverse.server import (
    FlagParser,
    parse_address,
    parse_address_list,
    parse_byte_size,
    parse_duration,
    positive_int,
)
from goverse.transport import DEFAULT_MAX_MESSAGE_BYTES, Keepalive

DEFAULT_METRICS_PORT = 9465

SLOW_CLIENT_DISCONNECT = "disconnect"
SLOW_CLIENT_DROP_OLDEST = "drop-oldest"
SLOW_CLIENT_POLICIES = (SLOW_CLIENT_DISCONNECT, SLOW_CLIENT_DROP_OLDEST)

# Smallest message-size limit that still leaves room for ids, payload headers and a push.
_MIN_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """Everything a gate decides at start; tests build one directly."""

    gate_id: str
    """Unique identity of this gate, and the prefix of the client ids it issues."""

    nodes: tuple[str, ...]
    """Addresses (``host:port``) of every node; placement runs over this list."""

    listen: str = "0.0.0.0:7100"
    """Address the gRPC server binds; port 0 picks a free port."""

    shutdown_timeout: timedelta = timedelta(seconds=5)
    """Budget for stopping: draining clients, cancelling tasks and stopping the server."""

    reconnect_initial: timedelta = timedelta(milliseconds=100)
    """Ceiling of the first reconnect delay of a node link (doubles per failed attempt)."""

    reconnect_max: timedelta = timedelta(seconds=5)
    """Largest ceiling of a node link's reconnect delay."""

    stable_after: timedelta = timedelta(seconds=10)
    """A node link connection that lasted this long resets the reconnect backoff."""

    node_heartbeat_timeout: timedelta = timedelta(seconds=15)
    """A node link that receives nothing for this long is torn down and reconnected."""

    client_queue_messages: int = 1000
    """Pushes queued per client; a push beyond either bound is an overflow."""

    client_queue_bytes: int = 4 * 1024 * 1024
    """Bytes of pushes queued per client; a push beyond either bound is an overflow."""

    slow_client_policy: str = SLOW_CLIENT_DISCONNECT
    """What an overflow does: ``disconnect`` ends the client's stream with RESOURCE_EXHAUSTED
    ("slow consumer") and frees its queue; ``drop-oldest`` drops the oldest queued pushes to
    make room."""

    max_clients: int = 10_000
    """Clients registered at once; a Register beyond it fails with RESOURCE_EXHAUSTED."""

    call_timeout: timedelta = timedelta(seconds=30)
    """Deadline of a forwarded call when the client sent none."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message sent or received, by the server and by node channels."""

    keepalive: Keepalive = field(default_factory=Keepalive)
    """Keepalive pings of the node channels and of the server's client connections."""

    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of the Prometheus endpoint (``/metrics`` on all interfaces); 0: none."""

    log_level: str = "info"
    """Minimum level logged."""

    log_format: str = "auto"
    """``json``, ``console``, or ``auto`` (console on a TTY, JSON lines otherwise)."""

    ready_file: Path | None = None
    """Where to write the bound addresses as JSON once serving (removed on stop)."""

    def __post_init__(self) -> None:
        problem = gate_id_problem(self.gate_id)
        if problem is not None:
            raise ValueError(problem)
        if not self.nodes:
            raise ValueError("the node list is empty")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("the node list names a node more than once")
        for name in (
            "shutdown_timeout",
            "reconnect_initial",
            "reconnect_max",
            "node_heartbeat_timeout",
            "call_timeout",
        ):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.stable_after < timedelta(0):
            raise ValueError("--stable-after must not be negative")
        if self.reconnect_max < self.reconnect_initial:
            raise ValueError(
                f"--reconnect-max ({self.reconnect_max.total_seconds()}s) is below "
                f"--reconnect-initial ({self.reconnect_initial.total_seconds()}s)"
            )
        for name in ("client_queue_messages", "client_queue_bytes", "max_clients"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.slow_client_policy not in SLOW_CLIENT_POLICIES:
            raise ValueError(
                f"--slow-client-policy must be one of {', '.join(SLOW_CLIENT_POLICIES)}"
            )
        if self.max_message_bytes < _MIN_MESSAGE_BYTES:
            raise ValueError(f"--max-message-bytes must be at least {_MIN_MESSAGE_BYTES}")


def parse_gate_id(text: str) -> str:
    problem = gate_id_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def default_gate_id(hostname: str | None = None) -> str:
    """A valid gate id derived from the host name (the pod name on Kubernetes)."""
    name = socket.gethostname() if hostname is None else hostname
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    name = name.lstrip("._-")[:MAX_GATE_ID_LENGTH].rstrip("._-")
    if gate_id_problem(name) is not None:
        return "gate"
    return name


def build_parser(environ: Mapping[str, str]) -> FlagParser:
    parser = FlagParser(
        prog="goverse-gate",
        description="goverse gate: holds client connections, verifies their calls and routes "
        "them to the node that owns each object, and relays pushes from nodes to clients.",
        environ=environ,
    )
    parser.flag(
        "listen", help="address the gRPC server binds", default="0.0.0.0:7100", parse=parse_address
    )
    parser.flag(
        "gate-id",
        help="unique identity of this gate and prefix of its client ids (letters, digits, "
        f"'.', '_', '-'; at most {MAX_GATE_ID_LENGTH}); defaults to the host name",
        default=default_gate_id(),
        parse=parse_gate_id,
    )
    parser.flag(
        "nodes",
        help="comma-separated host:port of every node; calls are placed over this list",
        default="127.0.0.1:7000",
        parse=parse_address_list,
    )
    parser.flag(
        "shutdown-timeout",
        help="budget for a clean stop after SIGTERM (e.g. 5s)",
        default="5s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "reconnect-initial",
        help="first reconnect delay ceiling of a node link; doubles per failed attempt, "
        "full jitter",
        default="100ms",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "reconnect-max",
        help="largest reconnect delay ceiling of a node link",
        default="5s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "stable-after",
        help="a node link connection lasting this long resets its reconnect backoff",
        default="10s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "node-heartbeat-timeout",
        help="tear down and reconnect a node link that received nothing for this long",
        default="15s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "client-queue-messages",
        help="pushes queued per client; one more is an overflow (see --slow-client-policy)",
        default="1000",
        parse=positive_int,
        metavar="N",
    )
    parser.flag(
        "client-queue-bytes",
        help="bytes of pushes queued per client (e.g. 4MiB); more is an overflow",
        default="4MiB",
        parse=parse_byte_size,
        metavar="SIZE",
    )
    parser.flag(
        "slow-client-policy",
        help="on a client queue overflow: disconnect (end the stream with RESOURCE_EXHAUSTED "
        "'slow consumer' and free the queue) or drop-oldest (drop the oldest queued pushes)",
        default=SLOW_CLIENT_DISCONNECT,
        choices=SLOW_CLIENT_POLICIES,
    )
    parser.flag(
        "max-clients",
        help="clients registered at once; Register beyond it fails with RESOURCE_EXHAUSTED",
        default="10000",
        parse=positive_int,
        metavar="N",
    )
    parser.flag(
        "call-timeout",
        help="deadline of a call forwarded to a node when the client set none",
        default="30s",
        parse=parse_duration,
        metavar="DURATION",
    )
    parser.flag(
        "max-message-bytes",
        help="largest gRPC message the server and the node channels send or receive",
        default="4MiB",
        parse=parse_byte_size,
        metavar="SIZE",
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


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> GateConfig:
    """Parses flags (falling back to GOVERSE_* variables in `environ`) into a GateConfig.

    Invalid values and inconsistent combinations exit with status 2 and a message naming them.
    """
    parser = build_parser(environ)
    args = parser.parse_flags(argv)
    try:
        return GateConfig(
            listen=args.listen,
            gate_id=args.gate_id,
            nodes=args.nodes,
            shutdown_timeout=args.shutdown_timeout,
            reconnect_initial=args.reconnect_initial,
            reconnect_max=args.reconnect_max,
            stable_after=args.stable_after,
            node_heartbeat_timeout=args.node_heartbeat_timeout,
            client_queue_messages=args.client_queue_messages,
            client_queue_bytes=args.client_queue_bytes,
            slow_client_policy=args.slow_client_policy,
            max_clients=args.max_clients,
            call_timeout=args.call_timeout,
            max_message_bytes=args.max_message_bytes,
            keepalive=Keepalive(
                time=args.keepalive_time,
                timeout=args.keepalive_timeout,
                min_time=args.keepalive_min_time,
            ),
            metrics_port=args.metrics_port,
            log_level=args.log_level,
            log_format=args.log_format,
            ready_file=args.ready_file,
        )
    except ValueError as error:
        parser.error(str(error))
