"""Fixtures of the browser tests: one Chromium per test module (skipped, with the reason, when
there is none), a fresh context per test, and the web directory on a static server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from tests.helpers.browser import REQUIRE_ENV, browser_missing, launch_options, static_server

# Without playwright, browser_missing() says so and the fixtures skip before using these.
with contextlib.suppress(ImportError):
    from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

ACTION_TIMEOUT_MS = 10_000
"""The longest any Playwright action or expectation waits (page loads, clicks, texts)."""


# Module scope, not session: while Playwright's sync driver is open, its event loop counts as
# running in this thread, and every pytest-asyncio test run after a browser test (in `make
# test`, the whole suite after tests/browser) failed with "Runner.run() cannot be called from
# a running event loop". Closed after each module, it leaves no loop behind.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's driver for one test module; skips the browser tests with what is missing
    (fails instead when $GOVERSE_REQUIRE_BROWSER is set, as ``make test-browser`` does)."""
    missing = browser_missing()
    if missing is not None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"the browser tests must run here ({REQUIRE_ENV}) but {missing}")
        pytest.skip(f"browser tests skipped: {missing}")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless, launched once for a test module and closed after it."""
    launched = playwright_driver.chromium.launch(**launch_options(), timeout=30_000)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile for one test (its pages share nothing with other tests'),
    with every Playwright wait bounded by :data:`ACTION_TIMEOUT_MS`."""
    created = browser.new_context()
    created.set_default_timeout(ACTION_TIMEOUT_MS)
    created.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    try:
        yield created
    finally:
        created.close()


@pytest.fixture(scope="session")
def web_url() -> Iterator[str]:
    """The gate's web directory (goverse.js, chat.html) on a static server: the base URL."""
    with static_server() as url:
        yield url
