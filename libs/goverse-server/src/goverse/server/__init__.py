"""What the gate and node servers share: lifecycle, supervisor, flags, logging, telemetry, tracing,
metrics, mailbox, batching, drop reasons and the gRPC server with health. Server-only: the client
SDK never imports it."""

from __future__ import annotations

from goverse.server._batching import BatchRule
from goverse.server._drops import DropReason
from goverse.server._flags import (
    FlagParser,
    parse_address,
    parse_address_list,
    parse_byte_size,
    parse_duration,
    parse_port,
    port_of,
    positive_int,
)
from goverse.server._grpc import GrpcHost, ListenError
from goverse.server._lifecycle import (
    Service,
    StartupError,
    run,
    run_until_signalled,
    serve_main,
)
from goverse.server._logging import configure_logging, log_fields
from goverse.server._mailbox import Mailbox
from goverse.server._metrics import (
    CallMetricsInterceptor,
    LabelLimiter,
    call_duration_histogram,
)
from goverse.server._supervisor import Supervisor, SupervisorClosed
from goverse.server._telemetry import Telemetry, TelemetryConfigError
from goverse.server._tracing import (
    current_trace_context,
    deliver_all_traced,
    deliver_traced,
    object_call_span,
    record_push,
    server_interceptors,
)

__all__ = [
    "BatchRule",
    "CallMetricsInterceptor",
    "DropReason",
    "FlagParser",
    "GrpcHost",
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
]
