"""Gate configuration: the settings of one gate process, each declared once with its flag."""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from goverse.gate._client_proxy import SlowClientPolicy
from goverse.ids import MAX_GATE_ID_LENGTH, gate_id_problem
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
    TlsFiles,
    check_pair,
    choice,
    not_negative,
    parse_list,
    positive,
    setting,
)


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


NONE = "none"
JWT = "jwt"
DEFAULT_JWT_CLAIMS = ("scope", "roles")
"""Claims forwarded by default: OAuth 2's ``scope`` and the common ``roles``, what an object
needs to decide what a client may do."""


def parse_authenticator(text: str) -> str:
    """``none``, ``jwt`` or ``module:attribute`` (loaded when the gate starts)."""
    module, sep, attr = text.partition(":")
    if text in (NONE, JWT) or (sep and module.strip() and attr.strip()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not none, jwt or module:attribute")


def parse_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the value is empty")
    return text


def parse_names(text: str) -> tuple[str, ...]:
    return parse_list(text, str)


def parse_rate(text: str) -> float:
    """A positive number per second: ``200``, ``0.5``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number per second") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number per second")
    return value


TEXT = Kind(parse_text, "TEXT")
NAME_LIST = Kind(parse_names, "NAME,...", ",".join)
RATE = Kind(parse_rate, "PER_SECOND")


DEFAULT_NODE = "127.0.0.1:7000"
"""The node a gate routes to when it is given neither --nodes nor --etcd-endpoints."""


@dataclass(frozen=True, kw_only=True)
class GateConfig(
    ServiceSettings,
    program="goverse-gate",
    description="goverse gate: holds client connections, verifies their calls and routes them "
    "to the node that owns each object, and relays pushes from nodes to clients.",
):
    """Everything a gate decides at start; tests build one directly."""

    gate_id: str = setting(
        factory=default_gate_id,
        help="unique identity of this gate and prefix of its client ids (letters, digits, "
        f"'.', '_', '-'; at most {MAX_GATE_ID_LENGTH})",
        kind=Kind(parse_gate_id, "GATE_ID"),
        default_text="the host name",
    )
    nodes: tuple[str, ...] | None = setting(
        None,
        help="comma-separated addresses of every node; calls are placed over this list "
        "(static membership; not used with --etcd-endpoints)",
        kind=ADDRESS_LIST,
        default_text=f"{DEFAULT_NODE} without --etcd-endpoints",
    )
    reconnect_initial: timedelta = setting(
        timedelta(milliseconds=100),
        help="first reconnect delay ceiling of a node link; doubles per failed attempt, "
        "full jitter",
        kind=DURATION,
        check=positive,
    )
    reconnect_max: timedelta = setting(
        timedelta(seconds=5),
        help="largest reconnect delay ceiling of a node link",
        kind=DURATION,
        check=positive,
    )
    stable_after: timedelta = setting(
        timedelta(seconds=10),
        help="a node link connection lasting this long resets its reconnect backoff",
        kind=DURATION,
        check=not_negative,
    )
    describe_refresh: timedelta = setting(
        timedelta(seconds=30),
        help="ask the nodes to Describe their object types again this often (also whenever "
        "the set of nodes changes): a rollout may change a node's code",
        kind=DURATION,
        check=positive,
    )
    node_heartbeat_timeout: timedelta = setting(
        timedelta(seconds=15),
        help="tear down and reconnect a node link that received nothing for this long",
        kind=DURATION,
        check=positive,
    )
    client_queue_messages: int = setting(
        1000,
        help="pushes queued per client; one more is an overflow (see --slow-client-policy)",
        kind=COUNT,
    )
    client_queue_bytes: int = setting(
        4 * 1024 * 1024,
        help="bytes of pushes queued per client; more is an overflow",
        kind=BYTE_SIZE,
    )
    slow_client_policy: SlowClientPolicy = setting(
        SlowClientPolicy.DISCONNECT,
        help="on a client queue overflow: disconnect (end the stream with RESOURCE_EXHAUSTED "
        '"slow consumer" and free the queue) or drop-oldest (drop the oldest queued pushes)',
        kind=choice(SlowClientPolicy),
    )
    max_clients: int = setting(
        10_000,
        help="clients registered at once; Register beyond it fails with RESOURCE_EXHAUSTED",
        kind=COUNT,
    )
    max_session_calls: int = setting(
        1000,
        help="calls in flight on one client's Session stream (running, or answered but not yet "
        "sent); a call beyond it answers RESOURCE_EXHAUSTED at once",
        kind=COUNT,
    )

    client_tls_cert: Path | None = setting(
        None,
        help="PEM certificate the client-facing listener presents (reloaded when the file "
        "changes); clients present none. Needs --client-tls-key and --tls-cert",
        kind=PATH,
        default_text="--tls-cert",
    )
    client_tls_key: Path | None = setting(
        None,
        help="PEM private key of --client-tls-cert",
        kind=PATH,
        default_text="--tls-key",
    )
    authenticator: str = setting(
        "none",
        help="who clients are, decided once per registration from their 'authorization: "
        "Bearer <token>' metadata: none (every client anonymous), jwt (a JWT verified with "
        "--jwt-secret-file, --jwt-public-key or --jwt-jwks-file), or module:attribute of "
        "your own authenticator (see docs/security.md)",
        kind=Kind(parse_authenticator, "none|jwt|MODULE:ATTR"),
    )
    jwt_secret_file: Path | None = setting(
        None,
        help="file holding the HS256 secret that signs client tokens (--authenticator jwt)",
        kind=PATH,
    )
    jwt_public_key: Path | None = setting(
        None,
        help="PEM file of the RSA (RS256) or EC P-256 (ES256) public key that verifies client "
        "tokens (--authenticator jwt)",
        kind=PATH,
    )
    jwt_jwks_file: Path | None = setting(
        None,
        help="JWKS file of the keys that verify client tokens, chosen by the token's kid "
        "(--authenticator jwt)",
        kind=PATH,
    )
    jwt_audience: str | None = setting(
        None,
        help="audience a client token must name in aud; unset: a token with aud is refused",
        kind=TEXT,
    )
    jwt_issuer: str | None = setting(
        None, help="issuer a client token must name in iss; unset: not checked", kind=TEXT
    )
    jwt_claims: tuple[str, ...] = setting(
        DEFAULT_JWT_CLAIMS,
        help="comma-separated claims of the token forwarded with its subject (sub) to the "
        "objects a client calls, when present",
        kind=NAME_LIST,
    )
    max_registrations_per_peer: int = setting(
        2000,
        help="clients registered at once from one peer address; Register beyond it fails "
        "with RESOURCE_EXHAUSTED (clients behind one NAT share an address)",
        kind=COUNT,
    )
    max_registrations_per_connection: int = setting(
        1000,
        help="clients registered at once over one connection (one HTTP/2 connection carries "
        "any number of streams, and the SDK clients of one process share a connection "
        "unless their channels use a local subchannel pool); Register beyond it fails with "
        "RESOURCE_EXHAUSTED",
        kind=COUNT,
    )
    registration_rate: float = setting(
        200.0,
        help="registrations per second allowed from one peer address (a token bucket holding "
        "--max-registrations-per-peer); past it Register fails with RESOURCE_EXHAUSTED",
        kind=RATE,
    )

    http_listen: str | None = setting(
        None,
        help="serve the HTTP/JSON interface (calls as protobuf JSON, pushes as server-sent "
        "events, docs/http.md) on this HOST:PORT (port 0: any free port, reported in the "
        "'listening' line and the ready file as 'http')",
        kind=ADDRESS,
        default_text="off",
    )
    http_cors_origins: tuple[str, ...] | None = setting(
        None,
        help="comma-separated origins (https://app.example.com, or *) whose browser pages may "
        "call the HTTP interface; other origins get no CORS headers",
        kind=NAME_LIST,
        default_text="none",
    )
    http_max_body_bytes: int | None = setting(
        None,
        help="largest HTTP request body; a larger one is answered 413 RESOURCE_EXHAUSTED",
        kind=BYTE_SIZE,
        default_text="--max-message-bytes",
    )

    def _check_combinations(self) -> None:
        super()._check_combinations()
        check_pair(
            "--client-tls-cert", self.client_tls_cert, "--client-tls-key", self.client_tls_key
        )
        if self.client_tls_cert is not None and self.tls_cert is None:
            raise ValueError(
                "--client-tls-cert needs --tls-cert, --tls-key and --tls-ca: the gate's links "
                "to nodes would be plaintext"
            )
        keys = [
            flag
            for flag, value in (
                ("--jwt-secret-file", self.jwt_secret_file),
                ("--jwt-public-key", self.jwt_public_key),
                ("--jwt-jwks-file", self.jwt_jwks_file),
            )
            if value is not None
        ]
        if self.authenticator == JWT and len(keys) != 1:
            raise ValueError(
                "--authenticator jwt needs exactly one of --jwt-secret-file, --jwt-public-key, "
                f"--jwt-jwks-file (given: {', '.join(keys) or 'none'})"
            )
        if self.authenticator != JWT and keys:
            raise ValueError(f"{keys[0]} is used only with --authenticator jwt")
        if self.http_listen is not None and self.http_listen.startswith("unix:"):
            raise ValueError("--http-listen takes HOST:PORT, not a unix socket")
        if self.etcd_endpoints is not None and self.nodes is not None:
            raise ValueError(
                "--nodes and --etcd-endpoints exclude each other: with etcd, nodes register "
                "themselves"
            )
        if self.reconnect_max < self.reconnect_initial:
            raise ValueError(
                f"--reconnect-max ({self.reconnect_max.total_seconds()}s) is below "
                f"--reconnect-initial ({self.reconnect_initial.total_seconds()}s)"
            )

    @property
    def client_tls(self) -> TlsFiles | None:
        """What the client-facing listener presents (None: --tls-cert and --tls-key)."""
        if self.client_tls_cert is None or self.client_tls_key is None:
            return None
        return TlsFiles(cert=self.client_tls_cert, key=self.client_tls_key)

    @property
    def http_body_bytes(self) -> int:
        """The bound of an HTTP request body (--http-max-body-bytes, else --max-message-bytes)."""
        if self.http_max_body_bytes is None:
            return self.max_message_bytes
        return self.http_max_body_bytes

    @property
    def static_nodes(self) -> tuple[str, ...]:
        """The node list of static membership (--nodes, else the one default node)."""
        return self.nodes or (DEFAULT_NODE,)


def build_parser(environ: Mapping[str, str] | None = None) -> SettingsParser[GateConfig]:
    """The ``goverse-gate`` flag parser; `environ` supplies the ``GOVERSE_*`` fallbacks."""
    return GateConfig.parser(environ)


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> GateConfig:
    """Parses flags (falling back to ``GOVERSE_*`` variables in `environ`) into a GateConfig.

    Invalid values and inconsistent combinations exit with status 2 and a one-line message
    naming the flag.
    """
    return build_parser(environ).parse(argv)
