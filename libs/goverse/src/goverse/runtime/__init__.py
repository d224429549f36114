"""Runtime: what gate and node share for lifecycle, logging, flags and gRPC plumbing."""

from __future__ import annotations

from goverse.runtime._backoff import Backoff
from goverse.runtime._flags import (
    FlagParser,
    parse_address,
    parse_address_list,
    parse_byte_size,
    parse_duration,
    port_of,
    positive_int,
)
from goverse.runtime._grpc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ChannelPool,
    GrpcHost,
    ListenError,
    channel_options,
    server_options,
)
from goverse.runtime._lifecycle import Service, run, run_until_signalled
from goverse.runtime._logging import configure_logging, log_fields
from goverse.runtime._mailbox import Mailbox
from goverse.runtime._supervisor import Supervisor, SupervisorClosed

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Backoff",
    "ChannelPool",
    "FlagParser",
    "GrpcHost",
    "ListenError",
    "Mailbox",
    "Service",
    "Supervisor",
    "SupervisorClosed",
    "channel_options",
    "configure_logging",
    "log_fields",
    "parse_address",
    "parse_address_list",
    "parse_byte_size",
    "parse_duration",
    "port_of",
    "positive_int",
    "run",
    "run_until_signalled",
    "server_options",
]
