"""Runtime: what gate and node share for lifecycle, logging, telemetry, flags and gRPC plumbing."""

from __future__ import annotations

from goverse.runtime._backoff import Backoff
from goverse.runtime._flags import (
    FlagParser,
    parse_address,
    parse_address_list,
    parse_byte_size,
    parse_duration,
    parse_port,
    port_of,
    positive_int,
)
from goverse.runtime._grpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ChannelPool,
    GrpcHost,
    Keepalive,
    ListenError,
    channel_options,
    server_options,
)
from goverse.runtime._lifecycle import (
    Service,
    StartupError,
    run,
    run_until_signalled,
    serve_main,
)
from goverse.runtime._logging import configure_logging, log_fields
from goverse.runtime._mailbox import Mailbox
from goverse.runtime._metrics import (
    CallMetricsInterceptor,
    LabelLimiter,
    call_duration_histogram,
)
from goverse.runtime._supervisor import Supervisor, SupervisorClosed
from goverse.runtime._telemetry import Telemetry, TelemetryConfigError
from goverse.runtime._tracing import (
    client_interceptors,
    current_trace_context,
    deliver_all_traced,
    deliver_traced,
    object_call_span,
    record_push,
    server_interceptors,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Backoff",
    "CallMetricsInterceptor",
    "ChannelPool",
    "FlagParser",
    "GrpcHost",
    "Keepalive",
    "LabelLimiter",
    "ListenError",
    "Mailbox",
    "Service",
    "StartupError",
    "Supervisor",
    "SupervisorClosed",
    "Telemetry",
    "TelemetryConfigError",
    "call_duration_histogram",
    "channel_options",
    "client_interceptors",
    "configure_logging",
    "current_trace_context",
    "deliver_all_traced",
    "deliver_traced",
    "log_fields",
    "object_call_span",
    "parse_address",
    "parse_address_list",
    "parse_byte_size",
    "parse_duration",
    "parse_port",
    "port_of",
    "positive_int",
    "record_push",
    "run",
    "run_until_signalled",
    "serve_main",
    "server_interceptors",
    "server_options",
]
