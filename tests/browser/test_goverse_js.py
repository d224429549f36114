"""goverse.js in a real browser, without a gate: it loads as an ES module, its backoff and
error mapping behave, and a call to a gate that is not there fails as UNAVAILABLE; against a
fake EventSource and fetch, its failover keeps one stream, a malformed event fails over like a
broken stream, its deadlines go out whole and cover the token, a dial is bounded, bad options,
a token function that throws and a create's or delete's answer that is not a JSON object are
GoverseErrors (TypeErrors in the constructor), a refusal is read back, and a page's handler
that throws breaks nothing."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.slow


def module_page(context: BrowserContext, web_url: str) -> Page:
    """A page on the web directory's origin with goverse.js imported as ``window.gv``."""
    page = context.new_page()
    page.goto(f"{web_url}/")
    page.evaluate("async () => { window.gv = await import('/goverse.js'); }")
    return page


def test_the_module_exports_the_client_and_its_error(context: BrowserContext, web_url: str) -> None:
    """The module parses in Chromium and exports Goverse, GoverseError and its helpers."""
    page = module_page(context, web_url)
    exported = page.evaluate("() => Object.keys(window.gv).sort()")
    assert exported == [
        "DEFAULT_BACKOFF",
        "Goverse",
        "GoverseError",
        "backoffDelay",
        "errorFromResponse",
    ]


def test_backoff_is_full_jitter_under_a_doubling_ceiling(
    context: BrowserContext, web_url: str
) -> None:
    """The delay is random * min(max, initial * 2^attempt): 0 at the bottom, the doubling
    ceiling at the top, capped at max however many attempts failed."""
    page = module_page(context, web_url)
    delays = page.evaluate(
        """() => {
            const b = { initialMs: 100, maxMs: 1000 };
            const top = () => 0.999999;
            return [0, 1, 2, 3, 4, 50].map((n) => window.gv.backoffDelay(n, b, top))
                .concat([window.gv.backoffDelay(3, b, () => 0)]);
        }"""
    )
    assert delays == [99, 199, 399, 799, 999, 999, 0]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            404,
            '{"code": "NOT_FOUND", "message": "no such method"}',
            ["NOT_FOUND", "no such method"],
        ),
        (503, "<html>Bad gateway</html>", ["UNAVAILABLE", "<html>Bad gateway</html>"]),
        (500, "", ["INTERNAL", "HTTP 500"]),
        (418, "{}", ["UNKNOWN", "{}"]),
    ],
)
def test_an_error_response_becomes_a_goverse_error(
    context: BrowserContext, web_url: str, status: int, body: str, expected: list[str]
) -> None:
    """The gate's JSON error keeps its code and message; any other body gets the code of its
    HTTP status; the status is kept either way."""
    page = module_page(context, web_url)
    error: dict[str, Any] = page.evaluate(
        """([status, body]) => {
            const e = window.gv.errorFromResponse(status, body);
            return { name: e.name, code: e.code, detail: e.detail, httpStatus: e.httpStatus,
                     isError: e instanceof window.gv.GoverseError };
        }""",
        [status, body],
    )
    assert error == {
        "name": "GoverseError",
        "code": expected[0],
        "detail": expected[1],
        "httpStatus": status,
        "isError": True,
    }


def test_a_call_to_an_unreachable_gate_is_unavailable(
    context: BrowserContext, web_url: str, unreachable: str
) -> None:
    """A one-shot call to a gate whose port refuses connections rejects with UNAVAILABLE and
    HTTP status 0 (no response at all), naming the gate."""
    page = module_page(context, web_url)
    error: dict[str, Any] = page.evaluate(
        """async (gate) => {
            const client = new window.gv.Goverse({ gates: [gate], timeoutMs: 5000 });
            try {
                await client.call("ChatRoom", "lobby", "Join", { user: "ann" });
                return null;
            } catch (e) {
                return { code: e.code, httpStatus: e.httpStatus, detail: e.detail };
            }
        }""",
        f"http://{unreachable}",
    )
    assert error is not None
    assert (error["code"], error["httpStatus"]) == ("UNAVAILABLE", 0)
    assert unreachable in error["detail"]


def test_a_client_needs_a_gate(context: BrowserContext, web_url: str) -> None:
    """An empty gate list is refused at construction, not at the first call."""
    page = module_page(context, web_url)
    message = page.evaluate(
        "() => { try { new window.gv.Goverse({ gates: [] }); } catch (e) { return e.message; } }"
    )
    assert message == "Goverse needs at least one gate URL"


FAKE_TRANSPORT = """() => {
    // A fake EventSource and fetch: the test decides what the gate says, and when.
    window.sources = [];
    window.fetches = [];
    window.EventSource = class extends EventTarget {
        constructor(url) {
            super();
            this.url = url;
            this.closed = false;
            window.sources.push(this);
        }
        close() { this.closed = true; }
        emit(type, data = {}) { this.send(type, JSON.stringify(data)); }
        send(type, text) { this.dispatchEvent(new MessageEvent(type, { data: text })); }
    };
    window.fetch = (url, init) => new Promise((resolve, reject) => {
        const aborted = () => reject(new DOMException("aborted", "AbortError"));
        init.signal.addEventListener("abort", aborted);
        window.fetches.push({ url, headers: init.headers, signal: init.signal, resolve, reject });
    });
    // Polls `cond` every 5 ms for at most 2 s.
    window.until = async (cond) => {
        for (let i = 0; i < 400 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
        if (!cond()) throw new Error("timed out waiting");
    };
}"""

QUICK_CLIENT = """() => {
    // window.quickClient(): a client of the fake gate(s) that retries at once (1 ms backoff),
    // so that failover shows without waiting. With { slow: true }, its token takes 50 ms
    // to come (a dial waits for it) and window.tokens counts how often it was asked.
    window.tokens = 0;
    const slowToken = () => {
        window.tokens += 1;
        return new Promise((r) => setTimeout(() => r("t"), 50));
    };
    window.quickClient = ({ gates = ["http://gate.test"], slow = false } = {}) =>
        new window.gv.Goverse({
            gates, timeoutMs: 2000,
            backoff: { initialMs: 1, maxMs: 1, stableMs: 60000 },
            token: slow ? slowToken : null,
        });
}"""


def test_a_session_whose_token_expired_registers_again_with_a_fresh_token(
    context: BrowserContext, web_url: str
) -> None:
    """The gate ends a session whose token expired with an ``expired`` event: the session
    closes that stream, says why in onDisconnect, and dials again with a fresh token from its
    token function."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    result: dict[str, Any] = page.evaluate(
        """async () => {
            let issued = 0;
            const c = new window.gv.Goverse({
                gates: ["http://gate.test"], timeoutMs: 2000,
                backoff: { initialMs: 1, maxMs: 1, stableMs: 60000 },
                token: () => `t${++issued}`,
            });
            const losses = [];
            c.onDisconnect = ({ reason }) => losses.push(reason);
            const connected = c.connect();
            await window.until(() => window.sources.length === 1);
            window.sources[0].emit("registered", { clientId: "old", credential: "c1" });
            await connected;
            window.sources[0].emit(
                "expired",
                { code: "UNAUTHENTICATED", message: "the token has expired: register again" },
            );
            await window.until(() => window.sources.length === 2);
            window.sources[1].emit("registered", { clientId: "new", credential: "c2" });
            await window.until(() => c.state === "registered");
            const result = { losses, first: window.sources[0].url, second: window.sources[1].url,
                             closed: window.sources[0].closed, clientId: c.clientId };
            c.close();
            return result;
        }"""
    )
    assert result == {
        "losses": ["token expired: the token has expired: register again"],
        "first": "http://gate.test/v1/events?access_token=t1",
        "second": "http://gate.test/v1/events?access_token=t2",
        "closed": True,
        "clientId": "new",
    }


def test_a_stale_calls_failure_leaves_the_new_session_alone(
    context: BrowserContext, web_url: str
) -> None:
    """A call of a session that has since ended (its gate drained) fails to connect after the
    session registered again, on the same gate URL (one URL behind a load balancer): the
    failure is that old session's, so the new registration and its stream stay."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    page.evaluate(QUICK_CLIENT)
    result: dict[str, Any] = page.evaluate(
        """async () => {
            const c = window.quickClient();
            const connected = c.connect();
            await window.until(() => window.sources.length === 1);
            window.sources[0].emit("registered", { clientId: "old", credential: "c1" });
            await connected;
            const call = c.call("ChatRoom", "lobby", "Send", { text: "hi" }).catch((e) => e.code);
            await window.until(() => window.fetches.length === 1);
            window.sources[0].emit("draining");
            await window.until(() => window.sources.length === 2);
            window.sources[1].emit("registered", { clientId: "new", credential: "c2" });
            window.fetches[0].reject(new TypeError("Failed to fetch"));
            const code = await call;
            await new Promise((r) => setTimeout(r, 50)); // any retry would have dialed by now
            const result = { code, state: c.state, clientId: c.clientId,
                             sources: window.sources.length, closed: window.sources[1].closed };
            c.close();
            return result;
        }"""
    )
    assert result == {
        "code": "UNAVAILABLE",
        "state": "registered",
        "clientId": "new",
        "sources": 2,
        "closed": False,
    }


def test_a_stale_calls_failure_while_dialing_opens_no_second_stream(
    context: BrowserContext, web_url: str
) -> None:
    """While the session dials again (waiting for its token), a call of the lost session fails
    to connect: the session dials once, and every stream but the current one is closed (an
    open one would reconnect by itself forever, a registration nobody uses)."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    page.evaluate(QUICK_CLIENT)
    result: dict[str, Any] = page.evaluate(
        """async () => {
            const c = window.quickClient({ slow: true });
            const connected = c.connect();
            await window.until(() => window.sources.length === 1);
            window.sources[0].emit("registered", { clientId: "old", credential: "c1" });
            await connected;
            const call = c.call("ChatRoom", "lobby", "Send", { text: "hi" }).catch((e) => e.code);
            await window.until(() => window.fetches.length === 1);
            window.sources[0].emit("error");
            await window.until(() => window.tokens === 2); // the second dial waits for its token
            window.fetches[0].reject(new TypeError("Failed to fetch"));
            await call;
            await new Promise((r) => setTimeout(r, 200)); // both dials are done by now
            const open = window.sources.filter((s) => !s.closed).length;
            const result = { sources: window.sources.length, open };
            c.close();
            return result;
        }"""
    )
    assert result == {"sources": 2, "open": 1}


def test_a_one_shot_calls_failure_while_connecting_leaves_one_stream_open(
    context: BrowserContext, web_url: str
) -> None:
    """A one-shot call made before connect() fails to connect while the session waits for
    its token: the session dials again, and the stream of the first dial does not stay open
    beside the second one's (it would reconnect by itself forever)."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    page.evaluate(QUICK_CLIENT)
    result: dict[str, Any] = page.evaluate(
        """async () => {
            const c = window.quickClient({ slow: true });
            const call = c.call("Counter", "x", "Get", {}).catch((e) => e.code);
            await window.until(() => window.fetches.length === 1);
            c.connect().catch(() => {});
            await window.until(() => window.tokens === 2); // the dial waits for its token
            window.fetches[0].reject(new TypeError("Failed to fetch"));
            const code = await call;
            await new Promise((r) => setTimeout(r, 200)); // both dials are done by now
            const open = window.sources.filter((s) => !s.closed);
            const result = { code, open: open.length };
            c.close();
            return result;
        }"""
    )
    assert result == {"code": "UNAVAILABLE", "open": 1}


def test_a_fractional_timeout_is_sent_as_whole_milliseconds(
    context: BrowserContext, web_url: str
) -> None:
    """A deadline that is not a whole number of milliseconds (a third of a second as
    ``1000 / 3``) goes out as whole milliseconds, rounded up: the gate refuses a
    Goverse-Timeout-Ms that is not ASCII digits with INVALID_ARGUMENT."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    sent = page.evaluate(
        """async () => {
            const c = new window.gv.Goverse({ gates: ["http://gate.test"] });
            const call = c.call("Counter", "x", "Get", {}, { timeoutMs: 1000 / 3 });
            await window.until(() => window.fetches.length === 1);
            const fetched = window.fetches[0];
            fetched.resolve(new Response("{}", { status: 200 }));
            await call;
            return fetched.headers["Goverse-Timeout-Ms"];
        }"""
    )
    assert sent.isdigit()
    assert 1 <= int(sent) <= 334


def test_the_longest_deadline_the_gate_takes_does_not_expire_at_once(
    context: BrowserContext, web_url: str
) -> None:
    """A timeoutMs of 4294967295 (the largest Goverse-Timeout-Ms, 49 days) is longer than a
    browser timer can wait (2^31 - 1 ms, which it takes as 0): the call still waits for its
    answer, in a session as well as one-shot."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    results = page.evaluate(
        """async () => {
            const longest = 4294967295;
            const oneShot = new window.gv.Goverse({ gates: ["http://gate.test"] });
            const session = new window.gv.Goverse({ gates: ["http://gate.test"] });
            const outcome = (promise) => promise.then(() => "ok", (e) => e.code);
            const first = outcome(oneShot.call("Counter", "x", "Get", {}, { timeoutMs: longest }));
            const connected = outcome(session.connect({ timeoutMs: longest }));
            await new Promise((r) => setTimeout(r, 50)); // a timer taken as 0 has fired by now
            await window.until(() => window.fetches.length === 1 && window.sources.length === 1);
            window.fetches[0].resolve(new Response("{}", { status: 200 }));
            window.sources[0].emit("registered", { clientId: "a", credential: "c" });
            const results = [await first, await connected];
            session.close();
            return results;
        }"""
    )
    assert results == ["ok", "ok"]


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("registered", "not json"),
        ("registered", "null"),
        ("registered", '{"clientId": "a"}'),
        ("message", "{oops"),
        ("message", '{"message": {}}'),
    ],
)
def test_a_malformed_event_is_a_broken_stream_not_an_uncaught_error(
    context: BrowserContext, web_url: str, event: str, data: str
) -> None:
    """An event whose data is not the JSON object the gate sends (not JSON, null, without its
    string ids or type) breaks the session's stream like a lost connection: no exception
    escapes to the page, the stream is closed, onDisconnect says why, and the session
    registers with the next gate. It threw in the event handler and left the session on a
    stream it could not use (``connecting`` until connect() timed out)."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    page.evaluate(QUICK_CLIENT)
    result: dict[str, Any] = page.evaluate(
        """async ([event, data]) => {
            const uncaught = [];
            window.addEventListener("error", (e) => uncaught.push(String(e.message)));
            const c = window.quickClient({ gates: ["http://a.test", "http://b.test"] });
            const losses = [];
            c.onDisconnect = ({ gate, reason }) => losses.push({ gate, reason });
            const connected = c.connect();
            await window.until(() => window.sources.length === 1);
            if (event === "message") {
                window.sources[0].emit("registered", { clientId: "a1", credential: "c1" });
                await connected;
            }
            window.sources[0].send(event, data);
            const redialed = await window.until(() => window.sources.length === 2)
                .then(() => true, () => false);
            const result = { uncaught, losses, redialed, state: c.state,
                             firstClosed: window.sources[0].closed };
            if (redialed) {
                window.sources[1].emit("registered", { clientId: "b1", credential: "c2" });
                result.clientId = await c.connect();
                result.gate = c.gate;
            }
            c.close();
            return result;
        }""",
        [event, data],
    )
    assert result["uncaught"] == []
    assert [loss["gate"] for loss in result["losses"]] == ["http://a.test"]
    assert result["losses"][0]["reason"].startswith(f"malformed {event} event: ")
    assert result["firstClosed"] is True
    assert result["redialed"] is True
    assert (result["clientId"], result["gate"]) == ("b1", "http://b.test")


@pytest.mark.parametrize("method", ["call", "create", "describe"])
def test_a_success_whose_body_is_not_json_is_an_internal_goverse_error(
    context: BrowserContext, web_url: str, method: str
) -> None:
    """A 200 answer that is not JSON (a captive portal's or a proxy's page) rejects with a
    GoverseError INTERNAL keeping the status 200, as gRPC answers a response it cannot parse:
    it rejected with the SyntaxError of JSON.parse, without a code."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    error: dict[str, Any] = page.evaluate(
        """async (method) => {
            const c = new window.gv.Goverse({ gates: ["http://gate.test"] });
            const args = { call: ["Counter", "x", "Get", {}], create: ["Counter", "x"],
                           describe: [] }[method];
            const pending = c[method](...args).then(() => null, (e) => e);
            await window.until(() => window.fetches.length === 1);
            window.fetches[0].resolve(new Response("<html>Sign in to the Wi-Fi</html>",
                                                   { status: 200 }));
            const e = await pending;
            return e && { name: e.name, code: e.code, httpStatus: e.httpStatus, detail: e.detail,
                          isError: e instanceof window.gv.GoverseError };
        }""",
        method,
    )
    assert error is not None
    assert error["detail"].startswith("the answer of http://gate.test is not JSON: "), error
    assert "<html>Sign in to the Wi-Fi</html>" in error["detail"]
    del error["detail"]
    assert error == {
        "name": "GoverseError",
        "code": "INTERNAL",
        "httpStatus": 200,
        "isError": True,
    }


@pytest.mark.parametrize("method", ["create", "delete"])
@pytest.mark.parametrize("body", ["null", "[]", "7", '"yes"'])
def test_a_create_or_delete_whose_json_is_not_an_object_is_an_internal_goverse_error(
    context: BrowserContext, web_url: str, method: str, body: str
) -> None:
    """A 200 answer to a create or delete whose JSON is not an object (``null``, an array, a
    number, a string) rejects with a GoverseError INTERNAL keeping the status 200, as a body
    that is not JSON does: ``null`` rejected with the TypeError of reading ``created`` of it,
    and the others resolved with false."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    error: dict[str, Any] = page.evaluate(
        """async ([method, body]) => {
            const c = new window.gv.Goverse({ gates: ["http://gate.test"] });
            const pending = c[method]("Counter", "x").then(() => null, (e) => e);
            await window.until(() => window.fetches.length === 1);
            window.fetches[0].resolve(new Response(body, { status: 200 }));
            const e = await pending;
            return e && { name: e.name, code: e.code, httpStatus: e.httpStatus, detail: e.detail,
                          isError: e instanceof window.gv.GoverseError };
        }""",
        [method, body],
    )
    assert error is not None
    assert error["detail"] == f"the answer of http://gate.test is not a JSON object: {body}", error
    del error["detail"]
    assert error == {
        "name": "GoverseError",
        "code": "INTERNAL",
        "httpStatus": 200,
        "isError": True,
    }


@pytest.mark.parametrize("throws", ["sync", "async"])
def test_a_token_function_that_throws_fails_a_one_shot_call_as_unauthenticated(
    context: BrowserContext, web_url: str, throws: str
) -> None:
    """A token function that throws (or whose promise rejects) fails a one-shot call with a
    GoverseError UNAUTHENTICATED naming its error, before anything is sent: gRPC answers
    credentials that fail to give their metadata the same way. It rejected with the token
    function's own Error, without a code."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    error: dict[str, Any] = page.evaluate(
        """async (throws) => {
            const token = throws === "sync"
                ? () => { throw new Error("sign-in expired"); }
                : async () => { throw new Error("sign-in expired"); };
            const c = new window.gv.Goverse({ gates: ["http://gate.test"], token });
            const e = await c.call("Counter", "x", "Get", {}).then(() => null, (e) => e);
            return e && { name: e.name, code: e.code, httpStatus: e.httpStatus, detail: e.detail,
                          cause: e.cause && e.cause.message, fetches: window.fetches.length };
        }""",
        throws,
    )
    assert error == {
        "name": "GoverseError",
        "code": "UNAUTHENTICATED",
        "httpStatus": 0,
        "detail": "no token: sign-in expired",
        "cause": "sign-in expired",
        "fetches": 0,
    }


def test_a_token_function_that_throws_fails_connect_as_unauthenticated(
    context: BrowserContext, web_url: str
) -> None:
    """connect() rejects with UNAUTHENTICATED as soon as the token function throws, not with
    UNAVAILABLE once its timeoutMs has passed; no stream is opened, and the session keeps
    trying (it asks for a token again)."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    result: dict[str, Any] = page.evaluate(
        """async () => {
            let asked = 0;
            const token = () => { asked += 1; throw new Error("sign-in expired"); };
            const c = new window.gv.Goverse({
                gates: ["http://gate.test"], token, timeoutMs: 60000,
                backoff: { initialMs: 1, maxMs: 1, stableMs: 60000 },
            });
            const started = Date.now();
            const e = await c.connect().then(() => null, (e) => e);
            const elapsed = Date.now() - started;
            await window.until(() => asked >= 2);
            const result = { code: e && e.code, detail: e && e.detail, fast: elapsed < 30000,
                             state: c.state, sources: window.sources.length };
            c.close();
            return result;
        }"""
    )
    assert result == {
        "code": "UNAUTHENTICATED",
        "detail": "no token: sign-in expired",
        "fast": True,
        "state": "connecting",
        "sources": 0,
    }


HUNG = """
    // Bounds a promise the test awaits: "hung" after 5 s instead of waiting forever.
    window.bounded = (promise) => Promise.race([
        promise, new Promise((r) => setTimeout(() => r("hung"), 5000)),
    ]);
"""


def test_a_one_shot_calls_deadline_covers_waiting_for_its_token(
    context: BrowserContext, web_url: str
) -> None:
    """A token function whose promise never settles: the one-shot call rejects with
    DEADLINE_EXCEEDED once its timeoutMs has passed, and sends nothing. Its deadline timer
    started only once the token had come, so the call waited forever."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    result: dict[str, Any] = page.evaluate(
        f"""async () => {{
            {HUNG}
            const token = () => new Promise(() => {{}});
            const c = new window.gv.Goverse({{ gates: ["http://gate.test"], token }});
            const started = Date.now();
            const outcome = await window.bounded(
                c.call("Counter", "x", "Get", {{}}, {{ timeoutMs: 100 }})
                    .then(() => "ok", (e) => ({{ code: e.code, detail: e.detail }})));
            return {{ outcome, elapsed: Date.now() - started, fetches: window.fetches.length }};
        }}"""
    )
    assert result["outcome"] == {
        "code": "DEADLINE_EXCEEDED",
        "detail": "no token from the token function in 100 ms",
    }
    assert result["elapsed"] >= 99
    assert result["fetches"] == 0


def test_a_dial_that_does_not_register_within_timeout_ms_tries_the_next_gate(
    context: BrowserContext, web_url: str
) -> None:
    """The session's first dial waits for a token that does not come: after the client's
    timeoutMs the dial fails (onDisconnect says why) and the session dials the next gate,
    asking for a token again; the late token of the abandoned dial opens no stream. The
    session stayed ``connecting`` forever, with no retry."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    result: dict[str, Any] = page.evaluate(
        f"""async () => {{
            {HUNG}
            let late = null;
            let asked = 0;
            const token = () => {{
                asked += 1;
                return asked === 1 ? new Promise((r) => {{ late = r; }}) : "t";
            }};
            const c = new window.gv.Goverse({{
                gates: ["http://a.test", "http://b.test"], token, timeoutMs: 100,
                backoff: {{ initialMs: 1, maxMs: 1, stableMs: 60000 }},
            }});
            const losses = [];
            c.onDisconnect = ({{ gate, reason }}) => losses.push({{ gate, reason }});
            const connected = c.connect({{ timeoutMs: 5000 }});
            const dialed = await window.until(() => window.sources.length === 1)
                .then(() => true, () => false);
            if (!dialed) return {{ dialed, losses, asked }};
            window.sources[0].emit("registered", {{ clientId: "b1", credential: "c" }});
            const clientId = await window.bounded(connected);
            late("stale");  // the first dial's token, long after it was given up
            await new Promise((r) => setTimeout(r, 0));  // lets the abandoned dial resume
            const result = {{ clientId, losses, url: window.sources[0].url, asked,
                             sources: window.sources.length, gate: c.gate }};
            c.close();
            return result;
        }}"""
    )
    assert result == {
        "clientId": "b1",
        "losses": [{"gate": "http://a.test", "reason": "no registration in 100 ms"}],
        "url": "http://b.test/v1/events?access_token=t",
        "asked": 2,
        "sources": 1,
        "gate": "http://b.test",
    }


BAD_TIMEOUTS = ["NaN", "-1", "0", "Infinity", "4294967296", '"5000"', "null"]
"""timeoutMs values no call can have: not a number, not above 0, above the largest
Goverse-Timeout-Ms (4294967295), a string, null."""


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_a_call_or_connect_with_a_timeout_that_is_not_a_deadline_is_invalid_argument(
    context: BrowserContext, web_url: str, timeout: str
) -> None:
    """A call's (or connect()'s) timeoutMs that is not a number of milliseconds above 0, at
    most 4294967295, rejects at once with a GoverseError INVALID_ARGUMENT naming it, and
    nothing is sent or dialed. NaN went out as ``Goverse-Timeout-Ms: NaN`` and the call ended
    at once as DEADLINE_EXCEEDED."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    result: dict[str, Any] = page.evaluate(
        f"""async () => {{
            {HUNG}
            const timeoutMs = {timeout};
            const c = new window.gv.Goverse({{ gates: ["http://gate.test"] }});
            const outcome = (p) => window.bounded(p.then(
                () => "ok", (e) => ({{ name: e.name, code: e.code, detail: e.detail }})));
            const call = await outcome(c.call("Counter", "x", "Get", {{}}, {{ timeoutMs }}));
            const described = await outcome(c.describe({{ timeoutMs }}));
            const connected = await outcome(c.connect({{ timeoutMs }}));
            return {{ call, described, connected, state: c.state,
                     fetches: window.fetches.length, sources: window.sources.length }};
        }}"""
    )
    for outcome in (result["call"], result["described"], result["connected"]):
        assert isinstance(outcome, dict), outcome
        assert outcome["name"] == "GoverseError"
        assert outcome["code"] == "INVALID_ARGUMENT"
        assert outcome["detail"].startswith("timeoutMs must be a number of milliseconds above 0")
    assert (result["state"], result["fetches"], result["sources"]) == ("idle", 0, 0)


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_a_client_with_a_timeout_that_is_not_a_deadline_is_refused_at_construction(
    context: BrowserContext, web_url: str, timeout: str
) -> None:
    """The constructor refuses such a default timeoutMs with a TypeError, as it refuses an
    empty gate list: a programming error, found before the first call."""
    error = _construction_error(module_page(context, web_url), f"timeoutMs: {timeout}")
    assert error["name"] == "TypeError"
    assert error["message"].startswith("timeoutMs must be a number of milliseconds above 0")


@pytest.mark.parametrize(
    "backoff", ["{ initialMs: NaN }", "{ maxMs: -1 }", '{ stableMs: "1" }', "{ initialMs: null }"]
)
def test_a_backoff_that_is_not_milliseconds_is_refused_at_construction(
    context: BrowserContext, web_url: str, backoff: str
) -> None:
    """A backoff field that is not a finite number of milliseconds, 0 or more, is a
    TypeError at construction: NaN made every retry wait 0 ms (a dial loop)."""
    error = _construction_error(module_page(context, web_url), f"backoff: {backoff}")
    assert error["name"] == "TypeError"
    assert error["message"].startswith("backoff.")


def _construction_error(page: Page, options: str) -> dict[str, Any]:
    """What constructing a client with `options` (JavaScript, beside its gates) threw."""
    error: dict[str, Any] | None = page.evaluate(
        f"""() => {{
            try {{
                new window.gv.Goverse({{ gates: ["http://gate.test"], {options} }});
                return null;
            }} catch (e) {{
                return {{ name: e.name, message: e.message }};
            }}
        }}"""
    )
    assert error is not None, f"a client with {options} was made"
    return error


REFUSE = """
    // The gate answers window.sources[i] with something else than events: EventSource fails
    // it for good (readyState CLOSED) without its status; the client asks again with fetch.
    window.refuse = async (i, response) => {
        const probes = window.fetches.length;
        window.sources[i].readyState = 2;
        window.sources[i].emit("error");
        await window.until(() => window.fetches.length === probes + 1);
        const probe = window.fetches[probes];
        probe.resolve(response);
        return probe;
    };
    window.refusal = (status, code) => new Response(
        JSON.stringify({ code, message: "no" }), { status });
"""


def test_connect_waits_on_while_some_gate_has_not_refused(
    context: BrowserContext, web_url: str
) -> None:
    """Gate a refuses the session (401, read by the fetch that asks again, with the stream's
    URL), gate b does not answer yet: connect() is not rejected with a's code, since b may
    still register the session; its UNAVAILABLE at timeoutMs names a's refusal as the last
    failure."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    page.evaluate(QUICK_CLIENT)
    result: dict[str, Any] = page.evaluate(
        f"""async () => {{
            {REFUSE}
            const c = window.quickClient({{ gates: ["http://a.test", "http://b.test"] }});
            const connected = c.connect({{ timeoutMs: 300 }}).then(() => null, (e) => e);
            await window.until(() => window.sources.length === 1);
            const probe = await window.refuse(0, window.refusal(401, "UNAUTHENTICATED"));
            await window.until(() => window.sources.length === 2);
            const e = await connected;
            c.close();
            return {{ code: e && e.code, detail: e && e.detail, probe: probe.url,
                     accept: probe.headers.Accept }};
        }}"""
    )
    assert result == {
        "code": "UNAVAILABLE",
        "detail": "no gate registered the session in 300 ms (last: http://a.test: "
        "registration refused: UNAUTHENTICATED: no)",
        "probe": "http://a.test/v1/events",
        "accept": "text/event-stream",
    }


def test_a_refusal_that_is_a_stream_when_asked_again_is_dropped_and_not_a_refusal(
    context: BrowserContext, web_url: str
) -> None:
    """When the fetch that asks again gets an event stream (the refusal was passing), the
    client drops it at once (aborts it: a registration nobody would use) and fails the dial
    as an ordinary one, not as a refusal; with every other gate refusing, connect() is not
    rejected."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    page.evaluate(QUICK_CLIENT)
    result: dict[str, Any] = page.evaluate(
        f"""async () => {{
            {REFUSE}
            const c = window.quickClient({{ gates: ["http://a.test", "http://b.test"] }});
            const losses = [];
            c.onDisconnect = ({{ reason }}) => losses.push(reason);
            let settled = false;
            const connected = c.connect({{ timeoutMs: 5000 }}).finally(() => {{ settled = true; }});
            await window.until(() => window.sources.length === 1);
            const stream = new Response(new ReadableStream(), {{
                status: 200, headers: {{ "Content-Type": "text/event-stream" }} }});
            const probe = await window.refuse(0, stream);
            await window.until(() => window.sources.length === 2);
            await window.refuse(1, window.refusal(401, "UNAUTHENTICATED"));
            await window.until(() => window.sources.length === 3);
            const settledEarly = settled;
            window.sources[2].emit("registered", {{ clientId: "a2", credential: "c" }});
            const clientId = await connected;
            c.close();
            return {{ clientId, losses, dropped: probe.signal.aborted, settledEarly }};
        }}"""
    )
    assert result == {
        "clientId": "a2",
        "dropped": True,
        "settledEarly": False,
        "losses": ["event stream refused", "registration refused: UNAUTHENTICATED: no"],
    }


def test_a_handler_that_throws_is_reported_and_breaks_nothing(
    context: BrowserContext, web_url: str
) -> None:
    """Handlers that throw (onRegistered, onDisconnect, onMessage) or whose promise rejects
    (an async onReconnect): each error goes to console.error, none escapes to the page, and
    the session goes on: onReconnect still runs after a throwing onRegistered, the session
    fails over after a throwing onDisconnect, and later pushes still arrive. A throwing
    onRegistered skipped onReconnect for that registration."""
    page = module_page(context, web_url)
    page.evaluate(FAKE_TRANSPORT)
    page.evaluate(QUICK_CLIENT)
    result: dict[str, Any] = page.evaluate(
        """async () => {
            const uncaught = [];
            window.addEventListener("error", (e) => uncaught.push(String(e.message)));
            window.addEventListener("unhandledrejection", (e) => uncaught.push(String(e.reason)));
            const reported = [];
            console.error = (...args) => reported.push(args.map(String).join(" "));
            const c = window.quickClient({ gates: ["http://a.test", "http://b.test"] });
            const calls = [];
            c.onRegistered = ({ clientId }) => {
                calls.push(`registered ${clientId}`);
                throw new Error("join failed");
            };
            c.onReconnect = async (old, now) => {
                calls.push(`reconnect ${old} ${now}`);
                throw new Error("resync failed");
            };
            c.onDisconnect = ({ gate }) => {
                calls.push(`disconnect ${gate}`);
                throw new Error("render failed");
            };
            c.onMessage = (type) => {
                calls.push(`message ${type}`);
                throw new Error("bad message");
            };
            const connected = c.connect();
            await window.until(() => window.sources.length === 1);
            window.sources[0].emit("registered", { clientId: "a1", credential: "c1" });
            await connected;
            window.sources[0].emit("error");
            await window.until(() => window.sources.length === 2);
            window.sources[1].emit("registered", { clientId: "b1", credential: "c2" });
            window.sources[1].emit("message", { type: "t.One" });
            window.sources[1].emit("message", { type: "t.Two" });
            await window.until(() => reported.length === 6);
            const result = { calls, reported, uncaught, state: c.state, clientId: c.clientId };
            c.close();
            return result;
        }"""
    )
    assert result["calls"] == [
        "registered a1",
        "disconnect http://a.test",
        "registered b1",
        "reconnect a1 b1",
        "message t.One",
        "message t.Two",
    ]
    assert (result["state"], result["clientId"]) == ("registered", "b1")
    assert result["uncaught"] == []
    for handler, message in [
        ("onRegistered", "join failed"),
        ("onDisconnect", "render failed"),
        ("onReconnect", "resync failed"),
        ("onMessage", "bad message"),
    ]:
        assert any(
            line.startswith(f"goverse: {handler} failed") and message in line
            for line in result["reported"]
        ), (handler, result["reported"])
