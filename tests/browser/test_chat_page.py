"""The demo chat page in a real browser, without a gate: it reads its room, user and gates
from the query string and, with no gate answering, keeps moving between them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, expect

from tests.helpers.addresses import dead_address

pytestmark = pytest.mark.slow

WAIT_MS = 10_000


@pytest.fixture
def two_dead_gates() -> Iterator[list[str]]:
    """Two gate URLs whose ports refuse connections for the whole test."""
    with dead_address() as first, dead_address() as second:
        yield [f"http://{first}", f"http://{second}"]


def test_the_page_shows_its_room_and_user(
    context: BrowserContext, web_url: str, two_dead_gates: list[str]
) -> None:
    """Room and user come from the query string; until a gate registers the session the
    status says "connecting"."""
    page = context.new_page()
    page.goto(f"{web_url}/chat.html?gates={','.join(two_dead_gates)}&room=lobby&user=ann")
    expect(page.locator("#room")).to_have_text("lobby", timeout=WAIT_MS)
    expect(page.locator("#user")).to_have_text("ann", timeout=WAIT_MS)
    expect(page.locator("#status")).to_have_attribute("data-state", "connecting", timeout=WAIT_MS)


def test_without_a_gate_the_page_tries_each_gate_in_turn(
    context: BrowserContext, web_url: str, two_dead_gates: list[str]
) -> None:
    """When the event stream to one gate fails, the page says so and dials the other (and
    back): the gate it shows goes from the first to the second and to the first again."""
    page = context.new_page()
    page.goto(f"{web_url}/chat.html?gates={','.join(two_dead_gates)}&room=lobby&user=ann")
    gate = page.locator("#gate")
    for expected in (two_dead_gates[0], two_dead_gates[1], two_dead_gates[0]):
        expect(gate).to_contain_text(f"{expected} lost", timeout=WAIT_MS)
    expect(page.locator("#client-id")).to_have_text("-", timeout=WAIT_MS)
