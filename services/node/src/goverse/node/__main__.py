"""Entry point of ``goverse-node``: parse flags, configure logging, serve until signalled."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from goverse.node._app import NodeApp
from goverse.node._config import parse_config
from goverse.server import configure_logging, serve_main


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a node until SIGTERM or SIGINT; returns the process exit code.

    0 after a clean stop, 1 when the listen address or the metrics port cannot be bound, 2 for
    invalid flags (argparse exits with 2 itself), invalid OTEL_* variables or object modules
    that cannot be loaded (:class:`~goverse.node.ObjectLoadError`, a StartupError).
    """
    config = parse_config(argv, os.environ)
    # The node's name before it binds: exact unless --listen has port 0 and --advertise is
    # unset; then the app sets the bound name once it has bound (set_log_identity).
    name, _ = config.identity(config.listen)
    configure_logging(config.log_level, config.log_format, service="node", node=name)
    return serve_main(
        "goverse-node",
        name,
        config.metrics_port,
        config.metrics_host,
        lambda telemetry: NodeApp(config, telemetry=telemetry),
    )


if __name__ == "__main__":
    sys.exit(main())
