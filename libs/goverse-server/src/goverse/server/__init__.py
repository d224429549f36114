"""What the gate and node servers share: the service skeleton, supervisor, settings, logging,
telemetry, tracing, metrics, mailbox, batching, drop reasons, the gRPC server with health, and
membership (the static view; etcd's client, lease, key layout and view).
telemetry, tracing, metrics, mailbox, batching, drop reasons, the gRPC server with health,
membership and routing.
Server-only: the client SDK never imports it."""

from __future__ import annotations

from goverse.server._batching import BatchRule
from goverse.server._calls import CallsInFlight
from goverse.server._cluster_keys import (
    ClusterKeys,
    ForeignData,
    GateInfo,
    encode_gate,
    encode_node,
    encode_shard,
)
from goverse.server._drops import DropReason
from goverse.server._etcd import (
    EtcdClient,
    EtcdClosed,
    EtcdCompacted,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdUnavailable,
    EventType,
    KeyValue,
    WatchBatch,
    WatchEvent,
)
from goverse.server._etcd_membership import EtcdMembership
from goverse.server._etcd_view import EtcdView, ViewStats
from goverse.server._grpc import GrpcHost, ListenError
from goverse.server._lease import Lease
from goverse.server._lifecycle import (
    Service,
    StartupError,
    run,
    run_until_signalled,
    serve_main,
)
from goverse.server._logging import configure_logging, log_fields, set_log_identity
from goverse.server._mailbox import Mailbox
from goverse.server._membership import (
    ClusterView,
    NodeInfo,
    ShardOwner,
    StaticView,
    Versioned,
)
from goverse.server._membership_metrics import membership_metrics
from goverse.server._metrics import (
    CallMetricsInterceptor,
    LabelLimiter,
    call_duration_histogram,
)
from goverse.server._ready import Ready, wait_ready, write_ready
from goverse.server._routing import NotSent, Routing
from goverse.server._service import (
    BoundAddress,
    ServiceApp,
    ServiceConfig,
    ShutdownBudget,
)
from goverse.server._service_settings import ServiceSettings
from goverse.server._settings import (
    Declared,
    Setting,
    SettingsParser,
    at_least,
    declared,
    markdown_table,
    not_negative,
    positive,
    setting,
)
from goverse.server._supervisor import Supervisor, SupervisorClosed
from goverse.server._telemetry import Telemetry, TelemetryConfigError
from goverse.server._tls import (
    PLAINTEXT_PEER,
    Peer,
    PeerCheck,
    Role,
    ServiceTls,
    TlsFiles,
    TlsIdentity,
    check_pair,
    spiffe_id,
)
from goverse.server._tracing import (
    current_trace_context,
    deliver_all_traced,
    deliver_traced,
    object_call_span,
    record_push,
    served_call_span,
    server_interceptors,
)
from goverse.server._values import (
    ADDRESS,
    ADDRESS_LIST,
    BYTE_SIZE,
    COUNT,
    DURATION,
    PATH,
    PORT,
    Kind,
    choice,
    format_byte_size,
    format_duration,
    is_unix_address,
    parse_address,
    parse_address_list,
    parse_byte_size,
    parse_duration,
    parse_list,
    parse_port,
    port_of,
    positive_int,
)
from goverse.server._waits import first_of

__all__ = [
    "ADDRESS",
    "ADDRESS_LIST",
    "BYTE_SIZE",
    "COUNT",
    "DURATION",
    "PATH",
    "PLAINTEXT_PEER",
    "PORT",
    "BatchRule",
    "BoundAddress",
    "CallMetricsInterceptor",
    "CallsInFlight",
    "ClusterKeys",
    "ClusterView",
    "Declared",
    "DropReason",
    "EtcdClient",
    "EtcdClosed",
    "EtcdCompacted",
    "EtcdError",
    "EtcdLeaseNotFound",
    "EtcdMembership",
    "EtcdUnavailable",
    "EtcdView",
    "EventType",
    "ForeignData",
    "GateInfo",
    "GrpcHost",
    "KeyValue",
    "Kind",
    "LabelLimiter",
    "Lease",
    "ListenError",
    "Mailbox",
    "NodeInfo",
    "NotSent",
    "Peer",
    "PeerCheck",
    "Ready",
    "Role",
    "Routing",
    "Service",
    "ServiceApp",
    "ServiceConfig",
    "ServiceSettings",
    "ServiceTls",
    "Setting",
    "SettingsParser",
    "ShardOwner",
    "ShutdownBudget",
    "StartupError",
    "StaticView",
    "Supervisor",
    "SupervisorClosed",
    "Telemetry",
    "TelemetryConfigError",
    "TlsFiles",
    "TlsIdentity",
    "Versioned",
    "ViewStats",
    "WatchBatch",
    "WatchEvent",
    "at_least",
    "call_duration_histogram",
    "check_pair",
    "choice",
    "configure_logging",
    "current_trace_context",
    "declared",
    "deliver_all_traced",
    "deliver_traced",
    "encode_gate",
    "encode_node",
    "encode_shard",
    "first_of",
    "format_byte_size",
    "format_duration",
    "is_unix_address",
    "log_fields",
    "markdown_table",
    "membership_metrics",
    "not_negative",
    "object_call_span",
    "parse_address",
    "parse_address_list",
    "parse_byte_size",
    "parse_duration",
    "parse_list",
    "parse_port",
    "port_of",
    "positive",
    "positive_int",
    "record_push",
    "run",
    "run_until_signalled",
    "serve_main",
    "served_call_span",
    "server_interceptors",
    "set_log_identity",
    "setting",
    "spiffe_id",
    "wait_ready",
    "write_ready",
]
