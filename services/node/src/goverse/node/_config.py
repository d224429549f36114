"""Node configuration: the settings of one node process, each declared once with its flag."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from goverse.server import (
    ADDRESS,
    ADDRESS_LIST,
    BYTE_SIZE,
    COUNT,
    DURATION,
    Kind,
    ServiceSettings,
    SettingsParser,
    at_least,
    format_duration,
    is_unix_address,
    not_negative,
    parse_list,
    port_of,
    positive,
    setting,
)

DEFAULT_OBJECTS = ("goverse.examples.counter", "goverse.examples.chat")
MIN_HEARTBEAT = timedelta(milliseconds=100)

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def _module(text: str) -> str:
    if not _MODULE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a module name")
    return text


def module_list(text: str) -> tuple[str, ...]:
    """Parses a comma-separated list of dotted module names; rejects empty lists and repeats."""
    return parse_list(text, _module)


def _advertisable(address: str) -> str | None:
    if not is_unix_address(address) and port_of(address) == 0:
        return "must not have port 0: gates and nodes dial it"
    return None


def loopback_name(bound_address: str) -> str:
    """The name of a node bound to `bound_address` that did not say how it is reached:
    ``127.0.0.1:<port>``, or the ``unix:`` address itself."""
    if is_unix_address(bound_address):
        return bound_address
    return f"127.0.0.1:{port_of(bound_address)}"


@dataclass(frozen=True, kw_only=True)
class NodeConfig(
    ServiceSettings,
    program="goverse-node",
    description="Hosts goverse objects: serves calls routed to it by placement and pushes the "
    "messages its objects send down the RegisterGate stream of each gate.",
):
    """Everything a node is told at start; decided once, never changed while it runs."""

    advertise: str | None = setting(
        None,
        help="address gates and other nodes reach this node at, and its name in --nodes "
        "(a unix: --listen address is its own default)",
        kind=ADDRESS,
        check=_advertisable,
        default_text="127.0.0.1:<bound port>",
    )
    nodes: tuple[str, ...] | None = setting(
        None,
        help="comma-separated addresses of every node, this one included (placement input)",
        kind=ADDRESS_LIST,
        default_text="this node alone",
    )
    objects: tuple[str, ...] = setting(
        DEFAULT_OBJECTS,
        help="comma-separated Python modules whose Object subclasses this node hosts",
        kind=Kind(module_list, "MODULE,...", ",".join),
    )
    gate_queue_size: int = setting(
        10_000,
        help="most envelopes queued per gate stream; further pushes are dropped and counted",
        kind=COUNT,
    )
    gate_queue_bytes: int = setting(
        64 * 1024 * 1024,
        help="most bytes of envelopes queued per gate stream; further pushes are dropped",
        kind=BYTE_SIZE,
    )
    heartbeat_interval: timedelta = setting(
        timedelta(seconds=5),
        help="a gate stream idle for this long carries a heartbeat",
        kind=DURATION,
        check=at_least(MIN_HEARTBEAT, format_duration),
    )
    fence_margin: timedelta = setting(
        timedelta(seconds=2),
        help="with etcd: stop serving this long before the lease could expire, as etcd "
        "counts it (the node fences itself and rejoins)",
        kind=DURATION,
        check=positive,
    )
    rebalance_delay: timedelta = setting(
        timedelta(seconds=5),
        help="with etcd: how long the node set must stay unchanged before owners release "
        "shards to a node that joined (orphans are claimed at once)",
        kind=DURATION,
        check=not_negative,
    )
    handoff_timeout: timedelta = setting(
        timedelta(seconds=5),
        help="with etcd: how long a released shard's calls in flight may take to finish "
        "before its objects are deactivated anyway",
        kind=DURATION,
        check=positive,
    )
    max_handoffs: int = setting(
        256,
        help="with etcd: most shards this node releases at once",
        kind=COUNT,
    )

    def _check_combinations(self) -> None:
        super()._check_combinations()
        if self.etcd_endpoints is not None and self.nodes is not None:
            raise ValueError(
                "--nodes and --etcd-endpoints exclude each other: with etcd, nodes register "
                "themselves"
            )
        if self.fence_margin * 2 >= self.lease_ttl:
            raise ValueError(
                f"--fence-margin ({format_duration(self.fence_margin)}) must be under half of "
                f"--lease-ttl ({format_duration(self.lease_ttl)})"
            )
        if self.nodes is None:
            return
        if (
            self.advertise is None
            and not is_unix_address(self.listen)
            and port_of(self.listen) == 0
        ):
            raise ValueError(
                "--nodes: the node's own address is unknown until it binds (--listen has "
                "port 0): give --advertise"
            )
        advertise, nodes = self.identity(self.listen)
        if advertise not in nodes:
            source = "" if self.advertise else " (from --listen)"
            raise ValueError(
                f"--advertise {advertise}{source} is not in --nodes ({','.join(nodes)}); "
                "a node must be named in the node list it serves"
            )

    def identity(self, bound_address: str) -> tuple[str, tuple[str, ...]]:
        """This node's name and the node list, once the server has bound `bound_address`
        (the --listen address with its port resolved, or the ``unix:`` address).

        Unset --advertise: ``127.0.0.1:<bound port>``; unset --nodes: this node alone. When
        both are given, or the name is known before binding, construction checked that the
        name is in the list; a name from a port 0 --listen comes only with an unset list.
        """
        advertise = self.advertise or loopback_name(bound_address)
        return advertise, self.nodes or (advertise,)


def build_parser(environ: Mapping[str, str] | None = None) -> SettingsParser[NodeConfig]:
    """The ``goverse-node`` flag parser; `environ` supplies the ``GOVERSE_*`` fallbacks."""
    return NodeConfig.parser(environ)


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Parses flags (falling back to ``GOVERSE_*`` in `environ`) into a checked config.

    Invalid values end the process with exit code 2 and a one-line message naming the flag.
    """
    return build_parser(environ).parse(argv)
