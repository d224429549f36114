"""grpc's environment for the ``goverse`` command line: what must be set before grpc loads.

:mod:`goverse.cli` imports this module before anything that loads grpc, which reads
``GRPC_VERBOSITY`` once, when it loads (measured: set after ``import grpc``, it changes
nothing). Left unset, grpc (1.85, logging through absl) writes its INFO lines to stderr: a
``Handshake failed with error SSL_ERROR_SSL`` line per attempt to reach a gate that does not
speak TLS, around the one line per error the command line promises (``docs/cli.md``). ERROR is
what grpc printed by default before absl; a value the environment gives wins.
"""

from __future__ import annotations

import os

VARIABLE = "GRPC_VERBOSITY"
LEVEL = "ERROR"

os.environ.setdefault(VARIABLE, LEVEL)

__all__ = ["LEVEL", "VARIABLE"]
