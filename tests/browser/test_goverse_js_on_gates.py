"""goverse.js against real gates: describe, create and delete, one-shot calls and their
errors, a session that receives pushes, and sessions that gates requiring tokens refuse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.helpers.browser import HTTP_GATE_FLAGS, gate_http_url
from tests.helpers.cluster import Cluster, start_cluster
from tests.helpers.processes import process_group
from tests.helpers.tokens import TokenIssuer

pytestmark = pytest.mark.slow

CALL_TIMEOUT_MS = 5_000
"""The deadline of every call the tests make (the client aborts its request after it): no
evaluation waits longer than a few of them."""


@pytest.fixture(scope="module")
def http_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes and one gate serving HTTP, shared by the tests of this module (none breaks
    it)."""
    with process_group(tmp_path_factory.mktemp("http-cluster")) as group:
        yield start_cluster(group, gates=1, gate_extra=HTTP_GATE_FLAGS)


@pytest.fixture
def gate(http_cluster: Cluster) -> str:
    return gate_http_url(http_cluster.gates[0])


@pytest.fixture
def page(context: BrowserContext, gate: str) -> Page:
    """A page on the gate's origin with the gate's goverse.js imported as ``window.gv`` and a
    one-shot client of the gate as ``window.client``."""
    opened = context.new_page()
    opened.goto(f"{gate}/web/goverse.js")
    opened.evaluate(
        """async ([gate, timeoutMs]) => {
            window.gv = await import('/web/goverse.js');
            window.client = new window.gv.Goverse({ gates: [gate], timeoutMs });
        }""",
        [gate, CALL_TIMEOUT_MS],
    )
    return opened


def failure(page: Page, call: str) -> dict[str, Any] | None:
    """What the promise `call` (JavaScript using ``client``) rejected with, None when it
    resolved."""
    result: dict[str, Any] | None = page.evaluate(
        f"""async () => {{
            try {{ await {call}; return null; }}
            catch (e) {{ return {{ name: e.name, code: e.code, httpStatus: e.httpStatus }}; }}
        }}"""
    )
    return result


def test_describe_lists_the_chat_room_and_its_methods(page: Page) -> None:
    """describe() answers the object types the nodes host, each method with its request and
    response message names."""
    described = page.evaluate("() => window.client.describe()")
    rooms = [kind for kind in described["types"] if kind["name"] == "ChatRoom"]
    assert len(rooms) == 1
    methods = {method["name"]: method for method in rooms[0]["methods"]}
    assert methods["Send"]["requestType"] == "goverse.examples.v1.SendRequest"
    assert methods["Send"]["responseType"] == "goverse.examples.v1.SendResponse"


def test_create_and_delete_say_whether_they_did(page: Page) -> None:
    """create() is true for a new object and false for an existing one; delete() is true
    once and then false."""
    results = page.evaluate(
        """async () => {
            const c = window.client;
            const id = "js-created";
            return [await c.create("Counter", id), await c.create("Counter", id),
                    await c.delete("Counter", id), await c.delete("Counter", id)];
        }"""
    )
    assert results == [True, False, True, False]


def test_a_one_shot_call_answers_the_response_as_json(page: Page) -> None:
    """call() sends the request as JSON and resolves with the response's protobuf JSON (an
    int64 comes as a string)."""
    values = page.evaluate(
        """async () => {
            const c = window.client;
            await c.call("Counter", "js-one-shot", "Increment", { by: 2 });
            return (await c.call("Counter", "js-one-shot", "Increment", { by: 3 })).value;
        }"""
    )
    assert values == "5"


@pytest.mark.parametrize(
    ("call", "code", "status"),
    [
        ('window.client.call("Counter", "x", "Explode", {})', "UNIMPLEMENTED", 501),
        ('window.client.call("NoSuchType", "x", "Get", {})', "NOT_FOUND", 404),
        (
            'window.client.call("Counter", "x", "Increment", { by: "many" })',
            "INVALID_ARGUMENT",
            400,
        ),
        ('window.client.call("Counter", "x", "Increment", { bogus: 1 })', "INVALID_ARGUMENT", 400),
    ],
    ids=["unknown-method", "unknown-type", "wrong-type", "unknown-field"],
)
def test_a_refused_call_rejects_with_the_gates_code(
    page: Page, call: str, code: str, status: int
) -> None:
    """The gate's JSON error becomes a GoverseError with its code and HTTP status."""
    assert failure(page, call) == {"name": "GoverseError", "code": code, "httpStatus": status}


def test_a_session_receives_what_its_room_pushes(page: Page) -> None:
    """After connect(), calls run as the session's client: it joins a room, sends, and the
    room's push comes back through onMessage with its type name."""
    pushed = page.evaluate(
        """async () => {
            const c = new window.gv.Goverse({ gates: window.client.gates, timeoutMs: 5000 });
            const got = new Promise((resolve, reject) => {
                c.onMessage = (type, message) => resolve({ type, message });
                setTimeout(() => reject(new Error("no push in 5 s")), 5000);
            });
            const clientId = await c.connect();
            const room = "js-session";
            await c.call("ChatRoom", room, "Join", { user: "ann" });
            const sent = await c.call("ChatRoom", room, "Send", { user: "ann", text: "hi" });
            const push = await got;
            const state = c.state;
            c.close();
            return { clientId, state, sent, push, closed: c.state };
        }"""
    )
    assert pushed["clientId"].startswith("gate-0/")
    assert pushed["state"] == "registered"
    assert pushed["closed"] == "closed"
    assert pushed["push"] == {
        "type": "goverse.examples.v1.ChatMessage",
        "message": {
            "room": "js-session",
            "user": "ann",
            "text": "hi",
            "seq": pushed["sent"]["seq"],
        },
    }


def test_a_closed_client_refuses_calls(page: Page) -> None:
    """After close(), a call rejects at once with FAILED_PRECONDITION (no request is made)."""
    page.evaluate("() => window.client.close()")
    assert failure(page, 'window.client.call("Counter", "x", "Get", {})') == {
        "name": "GoverseError",
        "code": "FAILED_PRECONDITION",
        "httpStatus": 0,
    }


@pytest.fixture(scope="module")
def token_issuer() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture(scope="module")
def jwt_gates(
    tmp_path_factory: pytest.TempPathFactory, token_issuer: TokenIssuer
) -> Iterator[list[str]]:
    """One node and two gates serving HTTP that require tokens `token_issuer` signs; the
    gates' base URLs."""
    with process_group(tmp_path_factory.mktemp("jwt-cluster")) as group:
        cluster = start_cluster(
            group, gates=2, gate_extra=HTTP_GATE_FLAGS, nodes=1, tokens=token_issuer
        )
        yield [gate_http_url(gate) for gate in cluster.gates]


def test_a_session_every_gate_refuses_rejects_connect_as_unauthenticated(
    context: BrowserContext, jwt_gates: list[str], token_issuer: TokenIssuer
) -> None:
    """Both gates refuse the session's token (401 on /v1/events): connect() rejects with the
    gates' UNAUTHENTICATED and HTTP status 401 once each has refused, long before its
    timeoutMs, and onDisconnect says why; the session keeps trying. It rejected UNAVAILABLE
    only when timeoutMs had passed, the gates' answer unseen (EventSource hides the status).
    With a token they accept, the same client registers."""
    page = context.new_page()
    page.goto(f"{jwt_gates[0]}/web/goverse.js")
    result: dict[str, Any] = page.evaluate(
        """async ([gates, good]) => {
            const gv = await import('/web/goverse.js');
            let token = "not-a-jwt";
            const c = new gv.Goverse({
                gates, token: () => token, timeoutMs: 8000,
                backoff: { initialMs: 1, maxMs: 50, stableMs: 60000 },
            });
            const losses = [];
            c.onDisconnect = ({ gate, reason }) => losses.push({ gate, reason });
            const started = Date.now();
            const refused = await c.connect().then(() => null, (e) => ({
                name: e.name, code: e.code, httpStatus: e.httpStatus }));
            const elapsed = Date.now() - started;
            const state = c.state;
            token = good;
            const clientId = await c.connect().catch((e) => e.message);
            c.close();
            return { refused, elapsed, state, losses: losses.slice(0, 2), clientId };
        }""",
        [jwt_gates, token_issuer.token()],
    )
    assert result["refused"] == {
        "name": "GoverseError",
        "code": "UNAUTHENTICATED",
        "httpStatus": 401,
    }
    assert result["elapsed"] < 8000
    assert result["state"] == "connecting"
    assert [loss["gate"] for loss in result["losses"]] == jwt_gates
    for loss in result["losses"]:
        assert loss["reason"].startswith("registration refused: UNAUTHENTICATED: "), loss
    assert result["clientId"].startswith("gate-"), result["clientId"]
