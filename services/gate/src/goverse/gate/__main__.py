"""Entry point of the ``goverse-gate`` command: flags, logging, then run until signalled."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from goverse.gate._app import GateApp
from goverse.gate._config import parse_config
from goverse.server import configure_logging, serve_main


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a gate until SIGTERM or SIGINT; returns the exit code (0, or 1 when it cannot
    listen or serve metrics). Invalid flags and OTEL_* variables exit with status 2 before
    anything starts."""
    config = parse_config(argv, os.environ)
    configure_logging(config.log_level, config.log_format, service="gate", gate_id=config.gate_id)
    return serve_main(
        "goverse-gate",
        config.gate_id,
        config.metrics_port,
        config.metrics_host,
        lambda telemetry: GateApp(config, telemetry),
    )


if __name__ == "__main__":
    sys.exit(main())
