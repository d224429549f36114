"""tests.helpers.browser: which Chromium the browser tests use, why they skip, the file server."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.helpers.browser import CHROMIUM_ENV, browser_missing, chromium_path, static_server


def test_an_override_that_exists_is_the_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$GOVERSE_CHROMIUM names the executable, whatever PATH holds."""
    executable = tmp_path / "my-chromium"
    executable.write_text("#!/bin/sh\n")
    monkeypatch.setenv(CHROMIUM_ENV, str(executable))
    assert chromium_path() == executable


def test_a_missing_override_is_the_reason_to_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An override naming no file means no browser, and the reason names the variable and
    the path (the tests skip with it)."""
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(CHROMIUM_ENV, str(missing))
    assert chromium_path() is None
    reason = browser_missing()
    assert reason is not None
    assert CHROMIUM_ENV in reason
    assert str(missing) in reason


def test_without_chromium_anywhere_the_reason_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No override, nothing on PATH, no /usr/bin/chromium: the reason points to the install
    script."""
    monkeypatch.delenv(CHROMIUM_ENV, raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr("tests.helpers.browser.CHROMIUM_FALLBACK", Path("/nonexistent/chromium"))
    reason = browser_missing()
    assert reason is not None
    assert "scripts/browser/install.sh" in reason


def test_the_static_server_serves_the_directory(tmp_path: Path) -> None:
    """The server answers a file of its directory on a loopback port."""
    (tmp_path / "hello.txt").write_text("hi")
    with (
        static_server(tmp_path) as url,
        urllib.request.urlopen(f"{url}/hello.txt", timeout=5) as reply,
    ):
        assert reply.read() == b"hi"
