"""Entry point of ``goverse-node``: parse flags, configure logging, serve until signalled."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import structlog

from goverse.node._app import NodeApp
from goverse.node._config import parse_config
from goverse.node._object_types import ObjectLoadError
from goverse.runtime import ListenError, Telemetry, TelemetryConfigError, configure_logging, run

log = structlog.get_logger("goverse.node")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a node until SIGTERM or SIGINT; returns the process exit code.

    0 after a clean stop, 1 when the listen address or the metrics port cannot be bound, 2 for
    invalid flags (argparse exits with 2 itself), invalid OTEL_* variables or object modules
    that cannot be loaded.
    """
    config = parse_config(argv, os.environ)
    configure_logging(config.log_level, config.log_format, service="node", node=config.advertise)
    try:
        telemetry = Telemetry(
            "goverse-node",
            resource_attributes={"service.instance.id": config.advertise},
            metrics_port=config.metrics_port,
        )
    except TelemetryConfigError as error:
        log.error("invalid telemetry configuration", error=str(error))
        print(f"goverse-node: {error}", file=sys.stderr)
        return 2
    telemetry.install()
    try:
        app = NodeApp(config, telemetry=telemetry)
    except ObjectLoadError as error:
        log.error("cannot load object types", error=str(error))
        return 2
    try:
        return run(app)
    except ListenError as error:
        log.error("cannot start", error=str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
