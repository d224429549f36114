"""The demo chat page against a real cluster (issue 14): two pages on two gates chat, and when
one gate dies its page moves to the other and keeps chatting."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.helpers.browser import HTTP_GATE_FLAGS, gate_http_url
from tests.helpers.cluster import Cluster, start_cluster
from tests.helpers.faults import sigkill
from tests.helpers.processes import ProcessGroup, ServiceProcess

pytestmark = pytest.mark.slow

WAIT_MS = 10_000
"""The longest a page may take to register, join, send or show a message."""
FAILOVER_MS = 20_000
"""The longest a page may take to notice its gate died and register with the other one:
the event stream breaks at once on a kill; the backoff before the next dial is under a
second; registering and joining again take a few calls."""

PageOpener = Callable[[str, list[str], str, str], Page]


@pytest.fixture
def http_cluster(processes: ProcessGroup) -> Cluster:
    """Two nodes and two gates that serve HTTP (and the web pages) on loopback ports."""
    return start_cluster(processes, gates=2, gate_extra=HTTP_GATE_FLAGS)


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[PageOpener]:
    """Opens the chat page served by gate URL `served_by`, with `gates`, `room` and `user`, in
    a browser profile of its own (each page is a separate user); prints what its console
    said when the test fails (pytest shows a failed test's output)."""
    contexts = []

    def opener(served_by: str, gates: list[str], room: str, user: str) -> Page:
        context = browser.new_context()
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda line: print(f"[{user} console] {line.type}: {line.text}"))
        query = urlencode({"gates": ",".join(gates), "room": room, "user": user})
        page.goto(f"{served_by}/web/chat.html?{query}")
        return page

    yield opener
    for context in contexts:
        context.close()


def joined(page: Page, gate: str) -> None:
    """Waits until `page` registered with `gate` and joined its room."""
    expect(page.locator("#status")).to_have_attribute("data-state", "registered", timeout=WAIT_MS)
    expect(page.locator("#gate")).to_have_text(gate, timeout=WAIT_MS)


def say(page: Page, text: str) -> None:
    """Types `text` into `page`'s box and sends it; waits until the send went through (the
    page empties the box only then)."""
    page.locator("#text").fill(text)
    page.locator("#send").click()
    expect(page.locator("#text")).to_have_value("", timeout=WAIT_MS)


def shows(page: Page, user: str, text: str) -> None:
    """Waits until `page`'s log shows `user`'s message `text`."""
    expect(page.locator("#log li", has_text=f"{user}: {text}")).to_have_count(1, timeout=WAIT_MS)


def stop_gracefully(gate: ServiceProcess) -> None:
    """SIGTERM: the gate sends its event streams ``draining`` and ends them, then exits."""
    code = gate.terminate()
    assert code == 0, f"{gate.name} exited with {code}"


FAULTS: dict[str, tuple[Callable[[ServiceProcess], object], str]] = {
    # The event stream breaks: EventSource reports an error.
    "killed": (sigkill, "event stream lost"),
    # The page hears "draining" and leaves before the stream ends.
    "drained": (stop_gracefully, "gate draining"),
}
"""How gate 0 goes away, and why its page then says it lost the gate."""


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_two_pages_on_two_gates_chat_and_survive_losing_a_gate(
    http_cluster: Cluster, open_chat: PageOpener, fault: str
) -> None:
    """Ann's page (served by and connected to gate 0) and Bob's (gate 1) join one room and
    see each other's messages; gate 0 is SIGKILLed (or SIGTERMed: it drains); Ann's page
    registers with gate 1 under a new client id, joins again, and the two keep chatting both
    ways."""
    first, second = (gate_http_url(gate) for gate in http_cluster.gates)
    room = f"lobby-{uuid.uuid4().hex[:8]}"
    ann = open_chat(first, [first, second], room, "ann")
    bob = open_chat(second, [second, first], room, "bob")
    joined(ann, first)
    joined(bob, second)

    say(ann, "hello from gate 0")
    shows(bob, "ann", "hello from gate 0")
    shows(ann, "ann", "hello from gate 0")
    say(bob, "hello from gate 1")
    shows(ann, "bob", "hello from gate 1")

    old_id = ann.locator("#client-id").inner_text()
    stop, reason = FAULTS[fault]
    stopped = time.monotonic()
    stop(http_cluster.gates[0])
    expect(ann.locator("#gate")).to_have_text(second, timeout=FAILOVER_MS)
    expect(ann.locator("#last-loss")).to_have_text(reason, timeout=WAIT_MS)
    joined(ann, second)
    print(f"{fault}: ann's page joined again through gate 1 in {time.monotonic() - stopped:.2f}s")
    expect(ann.locator("#reconnects")).to_have_text("1", timeout=WAIT_MS)
    assert ann.locator("#client-id").inner_text() != old_id

    say(ann, "still here")
    shows(bob, "ann", "still here")
    say(bob, "welcome back")
    shows(ann, "bob", "welcome back")
    # Each message once, in order, on both pages: the Join after the failover answered the
    # history again and the page did not show it twice.
    expected = [
        "ann: hello from gate 0",
        "bob: hello from gate 1",
        "ann: still here",
        "bob: welcome back",
    ]
    for page in (ann, bob):
        expect(page.locator("#log li")).to_have_text(expected, timeout=WAIT_MS)
