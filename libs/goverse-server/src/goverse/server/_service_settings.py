"""The settings every goverse service has, declared once: the gate and node configs extend it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

from goverse.server._access import rules_file_problem
from goverse.server._limits import HOP_HEADROOM_BYTES
from goverse.server._logging import LOG_FORMATS, LOG_LEVELS
from goverse.server._settings import (
    SettingsParser,
    apply_service_defaults,
    at_least,
    check_settings,
    declared,
    positive,
    setting,
)
from goverse.server._telemetry import METRICS_HOST
from goverse.server._tls import TlsFiles, check_tls_flags
from goverse.server._values import (
    ADDRESS,
    BYTE_SIZE,
    COUNT,
    DURATION,
    ETCD_ENDPOINTS,
    ETCD_PREFIX,
    HOST,
    PATH,
    PORT,
    choice,
    format_byte_size,
    format_duration,
)
from goverse.transport import DEFAULT_KEEPALIVE, DEFAULT_MAX_MESSAGE_BYTES, Keepalive

NODE = "goverse-node"
GATE = "goverse-gate"

MIN_LEASE_TTL = timedelta(seconds=2)
"""Shortest etcd lease TTL allowed: keep-alives go every third of it."""
MIN_MESSAGE_BYTES = 64 * 1024
"""Smallest message-size limit that still leaves room for ids, payload headers and a push."""
MAX_MESSAGE_BYTES = 2**31 - 1 - HOP_HEADROOM_BYTES
"""Largest message-size limit: gRPC takes a C int, and links between services take
:data:`HOP_HEADROOM_BYTES` more."""


def _message_bytes(value: int) -> str | None:
    if value > MAX_MESSAGE_BYTES:
        return f"must be at most {MAX_MESSAGE_BYTES} (gRPC's largest, less the headroom of a hop)"
    return at_least(MIN_MESSAGE_BYTES, format_byte_size)(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """The settings of every service; a service's config subclasses it with its program name,
    a description and its own settings, and tests build one directly::

        @dataclass(frozen=True, kw_only=True)
        class GateConfig(ServiceSettings, program="goverse-gate", description="..."):
            max_clients: int = setting(10_000, help="...", kind=COUNT)

    Every value is checked when the config is made, from flags or in code (a
    :class:`ValueError` naming the flag); :meth:`_check_combinations` adds the checks of
    settings that depend on each other.
    """

    program: ClassVar[str]
    description: ClassVar[str]

    listen: str = setting(
        per_service={NODE: "0.0.0.0:7000", GATE: "0.0.0.0:7100"},
        help="address the gRPC server binds: host:port (port 0: any free port) or "
        "unix:/absolute/path",
        kind=ADDRESS,
    )
    shutdown_timeout: timedelta = setting(
        timedelta(seconds=5),
        help="budget for a complete stop after SIGTERM or SIGINT, from the signal to the "
        "closed server",
        kind=DURATION,
        check=positive,
    )
    call_timeout: timedelta = setting(
        timedelta(seconds=30),
        help="deadline of a call this service makes (a gate forwarding a client's call, a node "
        "calling an object on another node) when the call it serves has none",
        kind=DURATION,
        check=positive,
    )
    max_message_bytes: int = setting(
        DEFAULT_MAX_MESSAGE_BYTES,
        help="largest gRPC message a client may send or receive; between gate and nodes 64 KiB "
        "more, so that what a client sent within it can be forwarded",
        kind=BYTE_SIZE,
        check=_message_bytes,
    )
    max_stream_calls: int = setting(
        10_000,
        help="most calls in flight on one call stream to a node (a gate or a calling node "
        "counts per node, the node per gate or calling node); a call past it answers "
        "RESOURCE_EXHAUSTED at once",
        kind=COUNT,
    )
    keepalive_time: timedelta = setting(
        DEFAULT_KEEPALIVE.time,
        help="interval of keepalive pings on this process's connections; a peer that stopped "
        "answering is noticed within keepalive-time + keepalive-timeout",
        kind=DURATION,
        check=positive,
    )
    keepalive_timeout: timedelta = setting(
        DEFAULT_KEEPALIVE.timeout,
        help="close a connection whose keepalive ping stays unanswered this long",
        kind=DURATION,
        check=positive,
    )
    keepalive_min_time: timedelta = setting(
        DEFAULT_KEEPALIVE.min_time,
        help="shortest interval between a client's keepalive pings this server accepts; a "
        "client pinging faster gets GOAWAY too_many_pings",
        kind=DURATION,
        check=positive,
    )
    metrics_port: int | None = setting(
        per_service={NODE: 9464, GATE: 9465},
        help="port of the Prometheus endpoint (/metrics on --metrics-host); 0: any free port; "
        "off: no endpoint",
        kind=PORT,
    )
    metrics_host: str = setting(
        METRICS_HOST,
        help="address the Prometheus endpoint listens on: every interface by default, as "
        "Prometheus scrapes the pod IP; 127.0.0.1 keeps it to this machine",
        kind=HOST,
    )
    health_port: int | None = setting(
        None,
        help="plaintext port serving only grpc.health.v1 (for Kubernetes' gRPC probes, which "
        "present no client certificate and speak no TLS); 0: any free port; off: none",
        kind=PORT,
        default_text="off",
    )
    tls_cert: Path | None = setting(
        None,
        help="PEM certificate of this process: its server certificate, and its client "
        "certificate towards other goverse services (reloaded when the file changes); needs "
        "--tls-key and --tls-ca; unset: plaintext",
        kind=PATH,
        default_text="none: plaintext",
    )
    tls_key: Path | None = setting(
        None, help="PEM private key of --tls-cert (reloaded when the file changes)", kind=PATH
    )
    tls_ca: Path | None = setting(
        None,
        help="PEM cluster CA the certificates of other goverse services must chain to; on a "
        "node, a client certificate is then mandatory",
        kind=PATH,
    )
    tls_reload_interval: timedelta = setting(
        timedelta(seconds=10),
        help="how often the TLS files are checked for a change (Secret rotation)",
        kind=DURATION,
        check=positive,
    )
    log_level: str = setting("info", help="minimum level logged", kind=choice(LOG_LEVELS))
    log_format: str = setting(
        "auto",
        help="json lines, console, or auto (console on a TTY, json otherwise)",
        kind=choice(LOG_FORMATS),
    )
    ready_file: Path | None = setting(
        None,
        help="write the bound addresses as JSON to PATH once serving; removed on stop",
        kind=PATH,
    )
    access_rules: Path | None = setting(
        None,
        help="TOML file of ordered access rules per object type, id and method for calls, "
        "creates and deletes (reject, internal, external, allow; see docs/security.md); "
        "unset: everything is allowed",
        kind=PATH,
        check=rules_file_problem,
    )
    etcd_endpoints: tuple[str, ...] | None = setting(
        None,
        help="comma-separated etcd client endpoints (host:port or http://host:port): "
        "membership and shard ownership come from etcd, and --nodes is not used; unset: the "
        "static node list",
        kind=ETCD_ENDPOINTS,
        default_text="none: static membership",
    )
    etcd_prefix: str = setting(
        "/goverse",
        help="prefix of every key this cluster keeps in etcd; clusters sharing an etcd need "
        "distinct prefixes",
        kind=ETCD_PREFIX,
    )
    lease_ttl: timedelta = setting(
        timedelta(seconds=10),
        help="TTL of the etcd lease a process registers on; a crashed node's shards are "
        "reclaimed within about this long",
        kind=DURATION,
        check=at_least(MIN_LEASE_TTL, format_duration),
    )
    etcd_timeout: timedelta = setting(
        timedelta(seconds=3),
        help="deadline of one etcd request; must be under half of --lease-ttl",
        kind=DURATION,
        check=positive,
    )

    def __init_subclass__(
        cls, *, program: str | None = None, description: str = "", **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if program is not None:
            cls.program = program
            cls.description = description
            apply_service_defaults(cls, program)

    def __post_init__(self) -> None:
        check_settings(self)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """Checks of settings that depend on each other; raises ValueError naming the flags.
        A service that adds its own calls this one first."""
        check_tls_flags(self.tls_cert, self.tls_key, self.tls_ca)
        if self.etcd_timeout * 2 >= self.lease_ttl:
            raise ValueError(
                f"--etcd-timeout ({format_duration(self.etcd_timeout)}) must be under half of "
                f"--lease-ttl ({format_duration(self.lease_ttl)}): a lease must survive a "
                "keep-alive that times out"
            )

    @property
    def membership(self) -> str:
        """``etcd`` with --etcd-endpoints, else ``static``."""
        return "static" if self.etcd_endpoints is None else "etcd"

    @property
    def tls(self) -> TlsFiles | None:
        """This process's TLS files (None: plaintext)."""
        if self.tls_cert is None or self.tls_key is None or self.tls_ca is None:
            return None
        return TlsFiles(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)

    @property
    def keepalive(self) -> Keepalive:
        """Keepalive pings of the server's connections and of this service's channels."""
        return Keepalive(
            time=self.keepalive_time,
            timeout=self.keepalive_timeout,
            min_time=self.keepalive_min_time,
        )

    @classmethod
    def parser(cls, environ: Mapping[str, str] | None = None) -> SettingsParser[Self]:
        """The flag parser of this service; `environ` supplies the ``GOVERSE_*`` fallbacks."""
        return SettingsParser(
            cls,
            prog=cls.program,
            description=cls.description,
            environ=environ,
            shared=[item.name for item in declared(ServiceSettings)],
        )
