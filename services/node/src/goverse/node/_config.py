"""Node configuration: the settings of one node process, each declared once with its flag."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from goverse.server import (
    ADDRESS,
    ADDRESS_LIST,
    BYTE_SIZE,
    COUNT,
    DURATION,
    PATH,
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


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def parse_store(text: str) -> str:
    """Checks a ``--store`` value: ``sqlite:PATH`` or a ``postgresql://`` URL."""
    text = text.strip()
    if text.startswith("sqlite:"):
        if not text.removeprefix("sqlite:"):
            raise argparse.ArgumentTypeError("sqlite: needs a file path, e.g. sqlite:/data/x.db")
        return text
    if text.startswith(_POSTGRES_SCHEMES):
        return text
    raise argparse.ArgumentTypeError(
        f"{redact_store(text)!r} is not a store: use sqlite:PATH or postgresql://USER@HOST/DB"
    )


# Up to the '@', across any '/': a password written unescaped may hold one (a base64
# secret), and the URL is then unusable, but still shown in the error that says so.
_USER_PASSWORD = re.compile(r"(://[^:/@]*):([^@]*)@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)([^&]*)")


def redact_store(text: str) -> str:
    """`text` with any password of a ``postgresql://user:password@host`` URL, or of its
    ``password=`` query parameter, replaced."""
    text = _USER_PASSWORD.sub(r"\1:***@", text)
    return _QUERY_PASSWORD.sub(r"\1***", text)


def store_passwords(url: str) -> list[str]:
    """The passwords :func:`redact_store` hides in `url`, as written: its user part's, and
    its ``password=`` query parameter's."""
    return [
        match[2] for pattern in (_USER_PASSWORD, _QUERY_PASSWORD) for match in pattern.finditer(url)
    ]


STORE = Kind(parse_store, "URL", redact_store)


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
    max_gates: int = setting(
        256,
        help="gates registered at once (distinct gate ids); a RegisterGate for a new gate id "
        "beyond it fails with RESOURCE_EXHAUSTED. Each gate may pin up to --gate-queue-bytes",
        kind=COUNT,
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
    store: str | None = setting(
        None,
        help="where object state is kept: sqlite:PATH (one node only) or "
        "postgresql://USER@HOST:PORT/DB; unset: in memory, lost when the object deactivates",
        kind=STORE,
        default_text="none: state in memory",
    )
    store_password_file: Path | None = setting(
        None,
        help="file holding the PostgreSQL password (else the URL's, or PGPASSWORD / "
        "PGPASSFILE as libpq reads them); never logged",
        kind=PATH,
    )
    store_pool_size: int = setting(
        4,
        help="most connections to PostgreSQL this node opens",
        kind=COUNT,
    )
    save_interval: timedelta = setting(
        timedelta(seconds=5),
        help="how often objects of periodic durability save their changed state",
        kind=DURATION,
        check=positive,
    )
    idle_timeout: timedelta = setting(
        timedelta(minutes=15),
        help="an object no call reached for this long is saved and deactivated; 0: never "
        "(memory then grows with every id ever called)",
        kind=DURATION,
        check=not_negative,
    )
    max_objects: int = setting(
        1_000_000,
        help="most objects active at once; an activation beyond it is refused with "
        "RESOURCE_EXHAUSTED",
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
        if self.store is not None and self.store.startswith("sqlite:") and self.clustered:
            raise ValueError(
                "--store sqlite: serves one node only (a file is not shared between nodes): "
                "use postgresql:// with --etcd-endpoints or more than one node in --nodes"
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

    @property
    def clustered(self) -> bool:
        """More than one node may serve: etcd membership, or several nodes listed."""
        return self.etcd_endpoints is not None or len(self.nodes or ()) > 1

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
