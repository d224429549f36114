"""A real browser for tests: Debian's Chromium, driven by Playwright, and a server of pages."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers.processes import ServiceProcess

CHROMIUM_NAMES = ("chromium", "chromium-browser")
"""What Debian (and Ubuntu) call the browser on PATH."""
CHROMIUM_FALLBACK = Path("/usr/bin/chromium")
CHROMIUM_ENV = "GOVERSE_CHROMIUM"
"""A Chromium executable to use instead of the one found on PATH."""
REQUIRE_ENV = "GOVERSE_REQUIRE_BROWSER"
"""Set (to 1) where a missing browser must fail the run instead of skipping it
(``make test-browser``, CI)."""
INSTALL_HINT = "scripts/browser/install.sh installs it (apt-get install -y chromium)"
WEB_DIR = Path(__file__).resolve().parents[2] / "services/gate/src/goverse/gate/web"
"""The JavaScript client and the demo page, as the gate serves them under /web/."""


def chromium_path() -> Path | None:
    """Where Chromium is: $GOVERSE_CHROMIUM, else on PATH, else /usr/bin/chromium; None when
    none exists. (Playwright cannot download its own browsers here.)"""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        return Path(override) if Path(override).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return CHROMIUM_FALLBACK if CHROMIUM_FALLBACK.is_file() else None


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (what is missing), or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (make venv installs it)"
    if chromium_path() is None:
        override = os.environ.get(CHROMIUM_ENV)
        if override:
            return f"no Chromium at ${CHROMIUM_ENV} ({override}): unset it or fix the path"
        return (
            f"no Chromium on PATH ({' or '.join(CHROMIUM_NAMES)}) nor at {CHROMIUM_FALLBACK}: "
            + INSTALL_HINT
        )
    return None


def launch_options() -> dict[str, Any]:
    """Arguments of ``playwright.chromium.launch`` for the browser :func:`chromium_path` found:
    headless (no display here) and without the sandbox, which needs user namespaces that
    containers and root do not give."""
    path = chromium_path()
    assert path is not None, browser_missing()
    return {"executable_path": str(path), "headless": True, "chromium_sandbox": False}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest shows a failed test's output: a line per file served is noise


@contextlib.contextmanager
def static_server(directory: Path = WEB_DIR) -> Iterator[str]:
    """Serves the files of `directory` over HTTP on a free loopback port for the block; yields
    its base URL (``http://127.0.0.1:PORT``). Only files: it answers no goverse endpoint."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="static-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


HTTP_GATE_FLAGS = ("--http-listen=127.0.0.1:0", "--http-cors-origins=*")
"""What a test gate needs for browsers: HTTP on any free loopback port, and calls from pages
of any origin (a page served by one gate calls the other after a failover; the ports, and so
the origins, are known only once the gates serve)."""


def gate_http_url(gate: ServiceProcess) -> str:
    """The base URL of a gate's HTTP interface (started with :data:`HTTP_GATE_FLAGS`), from
    the ``http`` entry of its ready file."""
    assert gate.ready is not None, f"{gate.name} has not served yet"
    address = gate.ready.identity.get("http")
    assert address, f"{gate.name} serves no HTTP (give it {HTTP_GATE_FLAGS[0]})"
    return f"http://{address}"
