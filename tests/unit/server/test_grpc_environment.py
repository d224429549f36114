"""grpc_environment: a service process's grpc starts on the older poller, unless the
environment already says otherwise; the pinned grpc knows every experiment it names."""

from __future__ import annotations

import os
import subprocess
import sys

from goverse.grpc_environment import OLDER_POLLER, VARIABLE

PROBE = """
import os
import goverse.node  # what a node's process imports first
import grpc
grpc.insecure_channel("127.0.0.1:1").close()  # grpc loads its experiments here
print(os.environ.get("GRPC_EXPERIMENTS"))
"""


def _probe(value: str | None) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter importing a service package, `value` its GRPC_EXPERIMENTS (None:
    unset)."""
    env = {key: text for key, text in os.environ.items() if key != VARIABLE}
    if value is not None:
        env[VARIABLE] = value
    env["GRPC_VERBOSITY"] = "ERROR"  # grpc logs an unknown experiment as an error
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_service_process_starts_grpc_on_the_older_poller() -> None:
    done = _probe(None)
    assert done.stdout.strip() == OLDER_POLLER
    assert "Unknown experiment" not in done.stderr, done.stderr


def test_a_setting_of_the_environment_wins() -> None:
    assert _probe("").stdout.strip() == ""
    assert _probe("-event_engine_client").stdout.strip() == "-event_engine_client"


def test_the_probe_would_see_an_experiment_grpc_does_not_know() -> None:
    """The check above can fail: grpc names an experiment it does not know on stderr."""
    assert "Unknown experiment" in _probe("-no_such_experiment").stderr
