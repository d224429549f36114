"""Entry point of the ``goverse-gate`` command: flags, logging, then run until signalled."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import structlog

from goverse.gate._app import GateApp
from goverse.gate._config import parse_config
from goverse.runtime import ListenError, Telemetry, TelemetryConfigError, configure_logging, run

log = structlog.get_logger("goverse.gate")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a gate until SIGTERM or SIGINT; returns the exit code (0, or 1 when it cannot
    listen or serve metrics). Invalid flags and OTEL_* variables exit with status 2 before
    anything starts."""
    config = parse_config(argv, os.environ)
    configure_logging(config.log_level, config.log_format, service="gate", gate_id=config.gate_id)
    try:
        telemetry = Telemetry(
            "goverse-gate",
            resource_attributes={"service.instance.id": config.gate_id},
            metrics_port=config.metrics_port,
        )
    except TelemetryConfigError as error:
        log.error("invalid telemetry configuration", error=str(error))
        print(f"goverse-gate: {error}", file=sys.stderr)
        return 2
    telemetry.install()
    try:
        return run(GateApp(config, telemetry))
    except ListenError as error:
        log.error("cannot start", error=str(error))
        print(f"goverse-gate: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
