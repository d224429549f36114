"""Ready file: the addresses a service writes once it serves, and how a launcher waits for them.

``--ready-file PATH`` makes a service write one JSON object to PATH once it serves (health
SERVING, metrics endpoint bound): ``service``, ``pid``, ``address`` (where a process on the
same machine dials it), ``listen`` (the listen address with the bound port), ``port`` (0 for a
unix socket), ``metrics_port`` (null when off) and the instance's identity (``gate_id`` or
``advertise``, ``nodes`` …). It is written atomically and removed when the service stops. A
launcher that started the service with ``--listen 127.0.0.1:0`` learns the port from it: no
port is picked by binding and releasing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goverse.server._lifecycle import StartupError

POLL_INTERVAL = 0.02
"""Seconds between two looks for the file while waiting."""


@dataclass(frozen=True)
class Ready:
    """What a serving service wrote to its ready file."""

    service: str
    pid: int
    address: str
    listen: str
    port: int
    metrics_port: int | None
    identity: Mapping[str, Any] = field(default_factory=dict)
    """The rest: ``gate_id``, ``advertise``, ``nodes``, ``object_types`` …"""

    @classmethod
    def parse(cls, text: str) -> Ready:
        fields = json.loads(text)
        known = {name: fields.pop(name) for name in ("service", "pid", "address", "listen")}
        return cls(
            **known,
            port=int(fields.pop("port")),
            metrics_port=fields.pop("metrics_port"),
            identity=fields,
        )

    def fields(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "pid": self.pid,
            "address": self.address,
            "listen": self.listen,
            "port": self.port,
            "metrics_port": self.metrics_port,
            **self.identity,
        }


def write_ready(path: Path, ready: Ready) -> None:
    """Writes `ready` to `path` so that a reader never sees a partial file; raises
    :class:`StartupError` (exit status 2) when it cannot (a directory, no such directory)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps(ready.fields()) + "\n")
        partial.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise StartupError(f"--ready-file: cannot write {path}: {error.strerror}") from None


def wait_ready(
    path: Path, timeout: float, *, pid: int | None = None, alive: Callable[[], bool] | None = None
) -> Ready:
    """Waits up to `timeout` seconds for the ready file at `path` and returns what it says.

    With `pid`, a file written by another process (left by one that was killed) is stale and
    waited past. `alive` tells whether the service's process still runs: once it has exited,
    RuntimeError is raised at once. TimeoutError when no file appeared in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            ready = Ready.parse(path.read_text())
        except FileNotFoundError:
            pass
        else:
            if pid is None or ready.pid == pid:
                return ready
        if alive is not None and not alive():
            raise RuntimeError(f"the service exited before it wrote {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g}s")
        time.sleep(POLL_INTERVAL)


__all__ = ["Ready", "wait_ready", "write_ready"]
