"""Addresses for tests: unix sockets named before their services start, and dead addresses."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

SOCKET_PATH_LIMIT = 107
"""The longest unix socket path, in bytes (``sun_path`` holds 108 with the closing NUL)."""


class SocketDir:
    """A private directory (mode 0700) for unix sockets whose addresses are known before
    anything listens on them, so that each service can be given the whole node list up front.

    It lives in /tmp whatever TMPDIR or pytest's tmp_path say: a socket path must stay under
    :data:`SOCKET_PATH_LIMIT` bytes. :meth:`close` removes it with whatever is left in it.
    """

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="gv-", dir="/tmp"))

    def address(self, name: str) -> str:
        """``unix:<dir>/<name>.sock``; nothing listens there until a service binds it."""
        path = self.path / f"{name}.sock"
        if len(str(path).encode()) > SOCKET_PATH_LIMIT:
            raise ValueError(f"{path} is longer than {SOCKET_PATH_LIMIT} bytes")
        return f"unix:{path}"

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def socket_dir() -> Iterator[SocketDir]:
    """A :class:`SocketDir` for the block, removed afterwards."""
    sockets = SocketDir()
    try:
        yield sockets
    finally:
        sockets.close()


@contextlib.contextmanager
def dead_address() -> Iterator[str]:
    """Yields ``127.0.0.1:<port>`` where nothing listens for as long as the block runs.

    The port is held by a socket bound here that never listens: a connection to it is
    refused at once, like one to a stopped service, and no other process can bind the port
    meanwhile (the socket sets neither SO_REUSEADDR nor SO_REUSEPORT). Releasing a port and
    hoping it stays free is the race this replaces.
    """
    # Held, never released while in use, never listening: the port stays dead and ours.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"
