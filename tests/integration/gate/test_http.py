"""The gate's HTTP/JSON interface on real node and gate processes: calls, errors, one-shot
callers, browser sessions over server-sent events, slow readers, draining, CORS, static files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from goverse.gate._auth import DEFAULT_LEEWAY_S
from tests.helpers.processes import BIN, ProcessGroup, ServiceProcess
from tests.helpers.sse import EventReader
from tests.helpers.telemetry import scrape
from tests.helpers.tokens import TokenIssuer
from tests.helpers.waiting import eventually

TIMEOUT = 10.0
HTTP_ON = "--http-listen=127.0.0.1:0"


def http_gate(processes: ProcessGroup, extra: Sequence[str] = ()) -> tuple[ServiceProcess, str]:
    """A node and a gate with HTTP on; the gate and its HTTP base URL."""
    node = processes.node()
    gate = processes.gate("g0", [node.address], (HTTP_ON, *extra))
    assert gate.ready is not None
    return gate, f"http://{gate.ready.identity['http']}"


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    url: str,
    path: str,
    body: str | bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """The status and the decoded JSON body of one request."""
    async with http.request(method, url + path, data=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


@contextlib.asynccontextmanager
async def events(
    http: aiohttp.ClientSession, url: str, *, query: str = "", headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[EventReader, dict[str, str]]]:
    """An open browser session: its event reader and the headers its calls carry."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=TIMEOUT * 3)
    async with http.get(f"{url}/v1/events{query}", headers=headers, timeout=timeout) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        reader = EventReader(response)
        first = await reader.next_event(TIMEOUT)
        assert first.name == "registered"
        registered = first.json()
        yield (
            reader,
            {
                "Goverse-Client-Id": registered["clientId"],
                "Goverse-Credential": registered["credential"],
            },
        )


async def test_json_calls_create_delete_and_describe(processes: ProcessGroup) -> None:
    """A call's request and reply are protobuf JSON (an empty body is ``{}``); create and
    delete answer whether they did; describe lists the types and their message names. HTTP
    calls are measured as the gRPC calls they stand for."""
    gate, url = http_gate(processes, ("--metrics-port=0",))
    async with client() as http:
        assert await call(http, url, "/v1/objects/Counter/c1", method="PUT") == (
            200,
            {"created": True},
        )
        assert await call(http, url, "/v1/objects/Counter/c1/Increment", '{"by": 3}') == (
            200,
            {"value": "3"},
        )
        assert await call(http, url, "/v1/objects/Counter/c1/Get") == (200, {"value": "3"})
        assert await call(http, url, "/v1/objects/Counter/c1", method="DELETE") == (
            200,
            {"deleted": True},
        )
        status, described = await call(http, url, "/v1/describe", method="GET")
        assert status == 200
        counter = next(t for t in described["types"] if t["name"] == "Counter")
        increment = next(m for m in counter["methods"] if m["name"] == "Increment")
        assert increment == {
            "name": "Increment",
            "requestType": "goverse.examples.v1.IncrementRequest",
            "responseType": "goverse.examples.v1.CounterValue",
        }
        async with http.get(f"http://127.0.0.1:{gate.metrics_port}/metrics") as response:
            scraped = await response.text()
        measured = [
            line
            for line in scraped.splitlines()
            if line.startswith("goverse_gate_call_duration") and 'object_type="Counter"' in line
        ]
        for rpc in ("CallObject", "CreateObject", "DeleteObject"):
            assert any(f'rpc="{rpc}"' in line for line in measured), rpc


async def test_calls_refused_before_they_are_routed_are_measured_as_over_grpc(
    processes: ProcessGroup,
) -> None:
    """A call, create or delete refused before the gate routes it (an unknown type or method,
    a body that is not the request, a bad ``Goverse-Timeout-Ms``, a forged session, a body
    over the bound) is counted in ``goverse_gate_call_duration_seconds`` under the labels the
    same refusal over gRPC gets: the RPC, the served names or ``_other``, and its code. They
    were refused before the timing started and never counted."""
    gate, url = http_gate(processes, ("--metrics-port=0", "--http-max-body-bytes=64KiB"))
    forged = {"Goverse-Client-Id": "g0/forged", "Goverse-Credential": "nope"}
    bad_timeout = {"Goverse-Timeout-Ms": "soon"}
    cases: list[tuple[str, str, str | None, dict[str, str], tuple[str, str, str, str]]] = [
        (
            "POST",
            "/v1/objects/Nope/x/Get",
            "{}",
            {},
            ("CallObject", "_other", "_other", "NOT_FOUND"),
        ),
        (
            "POST",
            "/v1/objects/Counter/x/Nope",
            "{}",
            {},
            ("CallObject", "Counter", "_other", "UNIMPLEMENTED"),
        ),
        (
            "POST",
            "/v1/objects/Counter/x/Increment",
            '{"by": ',
            {},
            ("CallObject", "Counter", "Increment", "INVALID_ARGUMENT"),
        ),
        (
            "POST",
            "/v1/objects/Counter/x/Get",
            "{}",
            bad_timeout,
            ("CallObject", "Counter", "Get", "INVALID_ARGUMENT"),
        ),
        (
            "POST",
            "/v1/objects/Counter/x/Get",
            "{}",
            forged,
            ("CallObject", "Counter", "Get", "UNAUTHENTICATED"),
        ),
        (
            "POST",
            "/v1/objects/Counter/x/Increment",
            " " * 100_000,
            {},
            ("CallObject", "Counter", "Increment", "RESOURCE_EXHAUSTED"),
        ),
        (
            "PUT",
            "/v1/objects/Counter/x",
            None,
            bad_timeout,
            ("CreateObject", "Counter", "", "INVALID_ARGUMENT"),
        ),
        (
            "PUT",
            "/v1/objects/Made/x",
            None,
            forged,
            ("CreateObject", "_other", "", "UNAUTHENTICATED"),
        ),
        (
            "DELETE",
            "/v1/objects/Counter/x",
            None,
            forged,
            ("DeleteObject", "Counter", "", "UNAUTHENTICATED"),
        ),
    ]
    async with client() as http:
        status, _ = await call(http, url, "/v1/describe", method="GET")  # the names served
        assert status == 200
        for method, path, body, headers, _labels in cases:
            status, got = await call(http, url, path, body, method=method, headers=headers)
            assert status >= 400, (path, got)
    samples = await asyncio.to_thread(scrape, gate.metrics_port)
    counted = {
        (named["rpc"], named["object_type"], named["method"], named["code"]): value
        for (name, labels), value in samples.items()
        if name == "goverse_gate_call_duration_seconds_count"
        for named in [dict(labels)]
    }
    assert counted == {labels: 1 for *_, labels in cases}, counted


DEEP_JSON = '{"by": ' + "[" * 20_000 + "]" * 20_000 + "}"
"""Valid JSON nested past Python's stack (40 KB): malformed input like any other."""


async def test_errors_are_json_bodies_with_the_status_of_their_code(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    """Each refusal answers ``{"code", "message"}`` at the HTTP status of its gRPC code:
    unknown type and path 404, unknown method 501, malformed or too deeply nested JSON,
    unknown fields, wrong types and a bad deadline 400, OUT_OF_RANGE 400, PERMISSION_DENIED
    403, an object's unexpected error 500 INTERNAL, a deadline 504, a wrong HTTP method 405, a
    body over the bound 413, a node that is gone 503."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[call]]\ntype = "Sleeper"\naccess = "reject"\n')
    _, url = http_gate(processes, ("--http-max-body-bytes=64KiB", f"--access-rules={rules}"))
    max_int64 = str(2**63 - 1)
    cases: list[tuple[str, str, str | None, dict[str, str], int, str]] = [
        ("POST", "/v1/objects/Nope/x/Get", "{}", {}, 404, "NOT_FOUND"),
        ("POST", "/v1/objects/Counter/x/Nope", "{}", {}, 501, "UNIMPLEMENTED"),
        ("POST", "/v1/objects/Counter/x/Increment", '{"by": ', {}, 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/objects/Counter/x/Increment", '{"bye": 1}', {}, 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/objects/Counter/x/Increment", '{"by": "lots"}', {}, 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/objects/Counter/x/Increment", "[1]", {}, 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/objects/Counter/x/Increment", DEEP_JSON, {}, 400, "INVALID_ARGUMENT"),
        (
            "POST",
            "/v1/objects/Counter/x/Get",
            "{}",
            {"Goverse-Timeout-Ms": "soon"},
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            "/v1/objects/Counter/x/Get",
            "{}",
            {"Goverse-Timeout-Ms": "\u00b2"},  # a digit to str.isdigit(), not to int()
            400,
            "INVALID_ARGUMENT",
        ),
        ("POST", "/v1/objects/Counter/x/Get", "{}", {"Goverse-Timeout-Ms": "9" * 400}, 400, ""),
        ("POST", "/v1/objects/Counter/x/Get", "{}", {"Goverse-Timeout-Ms": "4294967296"}, 400, ""),
        (
            "POST",
            "/v1/objects/Counter/x/Increment",
            "garbage!",
            {"Content-Encoding": "gzip"},  # a body that does not decompress
            400,
            "INVALID_ARGUMENT",
        ),
        ("POST", "/v1/objects/Counter/big/Increment", f'{{"by": "{max_int64}"}}', {}, 200, ""),
        ("POST", "/v1/objects/Counter/big/Increment", '{"by": 1}', {}, 400, "OUT_OF_RANGE"),
        ("POST", "/v1/objects/Sleeper/s/Sleep", '"1"', {}, 403, "PERMISSION_DENIED"),
        ("POST", "/v1/objects/Failing/f/Raise", "{}", {}, 500, "INTERNAL"),
        (
            "POST",
            "/v1/objects/Patient/p/Wait",
            '"5000"',
            {"Goverse-Timeout-Ms": "300"},
            504,
            "DEADLINE_EXCEEDED",
        ),
        ("GET", "/v1/objects/Counter/x/Get", None, {}, 405, "UNIMPLEMENTED"),
        ("GET", "/v1/nothing/here", None, {}, 404, "NOT_FOUND"),
        ("POST", "/v1/objects/Counter/x/Increment", " " * 100_000, {}, 413, "RESOURCE_EXHAUSTED"),
    ]
    async with client() as http:
        for method, path, body, headers, status, code in cases:
            got_status, got = await call(http, url, path, body, method=method, headers=headers)
            assert got_status == status, (path, body, got)
            if code:
                assert got["code"] == code, (path, body, got)
                assert got["message"], (path, body, got)
        processes.processes[0].kill()  # the node: its calls wait for it, then give up
        got_status, got = await call(
            http, url, "/v1/objects/Counter/x/Get", headers={"Goverse-Timeout-Ms": "1000"}
        )
        assert (got_status, got["code"]) == (503, "UNAVAILABLE"), got


async def test_a_call_without_a_session_runs_as_a_one_shot_caller(
    processes: ProcessGroup,
) -> None:
    """curl-style calls carry no session: each runs with a client id of its own that no
    registration holds, and without a principal when the gate authenticates no one."""
    _, url = http_gate(processes)
    async with client() as http:
        seen = []
        for _ in range(2):
            status, reply = await call(http, url, "/v1/objects/Identity/i/Caller")
            assert status == 200
            caller = json.loads(reply)
            assert caller["client_id"].startswith("g0/")
            assert caller["subject"] is None
            seen.append(caller["client_id"])
        assert seen[0] != seen[1]


async def test_with_jwt_calls_and_event_streams_need_the_bearer_token(
    processes: ProcessGroup,
) -> None:
    """With ``--authenticator jwt``: a one-shot call needs ``Authorization: Bearer`` and runs
    as its subject; an event stream takes the token as a header or as ``access_token`` (a
    browser's EventSource sends no headers), and its session's calls run as its subject."""
    issuer = TokenIssuer()
    _, url = http_gate(processes, issuer.gate_flags(processes.log_dir / "jwt"))
    identity = "/v1/objects/Identity/i/Caller"
    async with client() as http:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}):
            status, refused = await call(http, url, identity, headers=headers)
            assert (status, refused["code"]) == (401, "UNAUTHENTICATED")
            status, refused = await call(http, url, "/v1/describe", method="GET", headers=headers)
            assert status == 401
            async with http.get(f"{url}/v1/events", headers=headers) as response:
                assert response.status == 401
        bearer = {"Authorization": f"Bearer {issuer.token('alice')}"}
        status, reply = await call(http, url, identity, headers=bearer)
        assert status == 200
        assert json.loads(reply)["subject"] == "alice"

        async with events(
            http, url, headers={"Authorization": f"Bearer {issuer.token('bob')}"}
        ) as (
            _,
            session,
        ):
            status, reply = await call(http, url, identity, headers=session)
            assert status == 200
            assert json.loads(reply)["subject"] == "bob"
        async with events(http, url, query=f"?access_token={issuer.token('carol')}") as (
            _,
            session,
        ):
            status, reply = await call(http, url, identity, headers=session)
            assert status == 200
            assert json.loads(reply)["subject"] == "carol"


async def test_an_event_stream_ends_with_expired_when_its_token_expires(
    processes: ProcessGroup,
) -> None:
    """A browser session lasts no longer than its token: once the gate would refuse the
    token, the stream sends ``expired`` (UNAUTHENTICATED, "the token has expired") and ends,
    and the session's calls are refused (401) from then on."""
    issuer = TokenIssuer()
    _, url = http_gate(processes, issuer.gate_flags(processes.log_dir / "jwt"))
    expires_in_s = 8.0  # room for a loaded machine to register first
    expiring = issuer.token("erin", exp=int(time.time() - DEFAULT_LEEWAY_S + expires_in_s))
    async with (
        client() as http,
        events(http, url, query=f"?access_token={expiring}") as (
            reader,
            session,
        ),
    ):
        async with asyncio.timeout(expires_in_s + TIMEOUT):  # heartbeats come meanwhile
            expired = await reader.next_event(expires_in_s + TIMEOUT)
        assert expired.name == "expired"
        assert expired.json()["code"] == "UNAUTHENTICATED"
        assert "the token has expired" in expired.json()["message"]
        assert await reader.next(TIMEOUT) is None  # the stream ended
        status, refused = await call(http, url, "/v1/objects/Identity/i/Caller", headers=session)
        assert (status, refused["code"]) == (401, "UNAUTHENTICATED")


async def test_a_browser_session_gets_pushes_as_json_and_keeps_its_identity(
    processes: ProcessGroup,
) -> None:
    """Two sessions in one ChatRoom: a message one sends reaches the other as a ``message``
    event with the push's type name and protobuf JSON. A call with another session's id, a
    wrong credential or half the headers is 401; a registration past --max-clients is 429."""
    _, url = http_gate(processes, ("--max-clients=2",))
    room = "/v1/objects/ChatRoom/lobby"
    async with client() as http, events(http, url) as (ann, ann_h), events(http, url) as (_, bo_h):
        for headers, user in ((ann_h, "ann"), (bo_h, "bo")):
            status, _ = await call(
                http, url, f"{room}/Join", json.dumps({"user": user}), headers=headers
            )
            assert status == 200
        status, sent = await call(
            http, url, f"{room}/Send", '{"user": "bo", "text": "hello"}', headers=bo_h
        )
        assert status == 200
        pushed = await ann.next_event(TIMEOUT)
        assert pushed.name == "message"
        assert pushed.json() == {
            "type": "goverse.examples.v1.ChatMessage",
            "message": {"room": "lobby", "user": "bo", "text": "hello", "seq": sent["seq"]},
        }

        forged = [
            {"Goverse-Client-Id": ann_h["Goverse-Client-Id"],
             "Goverse-Credential": bo_h["Goverse-Credential"]},
            {"Goverse-Client-Id": ann_h["Goverse-Client-Id"], "Goverse-Credential": "guess"},
            {"Goverse-Client-Id": ann_h["Goverse-Client-Id"]},
        ]  # fmt: skip
        for headers in forged:
            status, refused = await call(http, url, f"{room}/Leave", "{}", headers=headers)
            assert (status, refused["code"]) == (401, "UNAUTHENTICATED"), headers

        async with http.get(f"{url}/v1/events") as response:
            assert response.status == 429
            assert (await response.json())["code"] == "RESOURCE_EXHAUSTED"


async def test_a_slow_event_reader_is_disconnected_and_the_gate_keeps_no_backlog(
    processes: ProcessGroup,
) -> None:
    """A browser session that stops reading: its pushes fill the transport, then its bounded
    queue, and it is disconnected as a slow consumer (its registration ends: calls with its
    credential answer 401, its connection is closed), as a gRPC client would be."""
    gate, url = http_gate(processes, ("--client-queue-messages=50", "--client-queue-bytes=1MiB"))
    host, _, port = url.removeprefix("http://").rpartition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(f"GET /v1/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    async with asyncio.timeout(TIMEOUT):
        while not (line := await reader.readline()).startswith(b"data:"):
            assert line, "the stream ended before it registered"
    registered = json.loads(line.removeprefix(b"data:"))
    session = {
        "Goverse-Client-Id": registered["clientId"],
        "Goverse-Credential": registered["credential"],
    }
    payload = json.dumps("x" * 32 * 1024)
    try:
        async with client() as http:
            for _ in range(2000):  # far more than kernel buffers, transport and queue hold
                status, _ = await call(
                    http, url, "/v1/objects/Pusher/p/PushToCaller", payload, headers=session
                )
                if status == 401:
                    break
                assert status == 200
            else:
                raise AssertionError("the stalled session was never disconnected")
        await eventually(
            lambda: any(
                line.get("event") == "client disconnected as a slow consumer"
                for line in gate.log_lines()
            ),
            TIMEOUT,
            "the slow-consumer log line",
        )
        # The gate aborted the connection: what the kernel held arrives, then the end.
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(TIMEOUT):
                while await reader.read(65536):
                    pass
    finally:
        writer.close()


async def test_gate_shutdown_sends_draining_and_ends_every_event_stream_in_budget(
    processes: ProcessGroup,
) -> None:
    """SIGTERM: each open event stream gets ``draining`` and then ends, well within the
    gate's shutdown budget; the gate exits 0."""
    gate, url = http_gate(processes, ("--shutdown-timeout=3s",))
    async with client() as http, events(http, url) as (first, _), events(http, url) as (second, _):
        started = time.monotonic()
        gate.signal(signal.SIGTERM)
        for reader in (first, second):
            last = await reader.next_event(TIMEOUT)
            assert (last.name, last.json()) == ("draining", {})
            assert await reader.next(TIMEOUT) is None
        assert time.monotonic() - started < 3.0
    assert gate.process is not None
    assert await asyncio.to_thread(gate.process.wait, TIMEOUT) == 0


async def test_cors_for_allowed_origins_only_and_static_files(processes: ProcessGroup) -> None:
    """A preflight from an allowed origin gets the methods and the Goverse headers; one from
    another origin is 403 without CORS headers; answers carry Allow-Origin only for an allowed
    origin. ``/web/`` serves the package's web directory."""
    _, url = http_gate(processes, ("--http-cors-origins=https://ok.example",))
    path = "/v1/objects/Counter/c/Increment"
    async with client() as http:
        preflight = {"Access-Control-Request-Method": "POST"}
        async with http.options(
            url + path, headers={**preflight, "Origin": "https://ok.example"}
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "https://ok.example"
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            allowed = response.headers["Access-Control-Allow-Headers"]
            assert "Goverse-Credential" in allowed
            assert "Authorization" in allowed
        async with http.options(
            url + path, headers={**preflight, "Origin": "https://evil.example"}
        ) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
        for origin, expected in (
            ("https://ok.example", "https://ok.example"),
            ("https://evil.example", None),
        ):
            async with http.post(url + path, data="{}", headers={"Origin": origin}) as response:
                assert response.status == 200
                assert response.headers.get("Access-Control-Allow-Origin") == expected
        async with http.get(f"{url}/web/README.md") as response:
            assert response.status == 200
            assert "goverse.js" in await response.text()
        async with http.get(f"{url}/web/../_http.py") as response:
            assert response.status in (403, 404)


@pytest.mark.parametrize("listen", ["unix:/tmp/x.sock"])
def test_http_listen_must_be_a_tcp_address(listen: str) -> None:
    """--http-listen takes HOST:PORT only."""
    from goverse.gate._config import parse_config

    with pytest.raises(SystemExit):
        parse_config([f"--http-listen={listen}"], {})


async def test_a_call_in_flight_when_the_gate_stops_finishes(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    """SIGTERM while an HTTP call runs on the node: the gate's stop waits for it as for a
    unary RPC, and the caller gets its answer."""
    witness = tmp_path / "witness"
    witness.mkdir()
    node = processes.node(env={"GOVERSE_TEST_WITNESS_DIR": str(witness)})
    gate = processes.gate("g0", [node.address], (HTTP_ON,))
    assert gate.ready is not None
    url = f"http://{gate.ready.identity['http']}"
    async with client() as http:
        held = asyncio.create_task(call(http, url, "/v1/objects/Witness/w/Hold", '"1500"'))
        try:
            await eventually(
                lambda: any('"call"' in f.read_text() for f in witness.glob("*.jsonl")),
                TIMEOUT,
                "the call to reach the object",
            )
            gate.signal(signal.SIGTERM)
            status, _ = await asyncio.wait_for(held, TIMEOUT)
            assert status == 200
        finally:
            held.cancel()
    assert gate.process is not None
    assert await asyncio.to_thread(gate.process.wait, TIMEOUT) == 0


def test_a_gate_whose_http_port_is_taken_exits_with_one_line(tmp_path: Path) -> None:
    """--http-listen on a port in use: the gate does not start, exits 1 and says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(BIN / "goverse-gate"),
                "--listen=127.0.0.1:0",
                "--gate-id=g0",
                "--metrics-port=off",
                f"--http-listen=127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 3,
        )
    assert result.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr


async def test_event_streams_count_against_the_per_peer_bound(processes: ProcessGroup) -> None:
    """--max-registrations-per-peer bounds browser sessions like gRPC registrations: a second
    session from the same address is 429 while the first is open, and admitted once it ended."""
    _, url = http_gate(processes, ("--max-registrations-per-peer=1",))
    async with client() as http:
        async with events(http, url), http.get(f"{url}/v1/events") as refused:
            assert refused.status == 429
            assert (await refused.json())["code"] == "RESOURCE_EXHAUSTED"
        await eventually(lambda: admitted(http, url), TIMEOUT, "the peer's slot to be freed")


async def admitted(http: aiohttp.ClientSession, url: str) -> bool:
    """Whether a new event stream is admitted (it is closed at once)."""
    async with http.get(f"{url}/v1/events") as response:
        return response.status == 200


async def _raw_status(url: str, request: bytes) -> int:
    """The HTTP status the gate answers `request`, sent as raw bytes (no client library
    would send a header's undecodable byte)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


async def test_header_bytes_that_are_not_text_are_refused_or_dropped(
    processes: ProcessGroup,
) -> None:
    """A credential with a byte no text has is a wrong credential (401); a trace context
    with one is malformed and dropped: the call is served (200)."""
    _, url = http_gate(processes)
    path = b"POST /v1/objects/Counter/raw/Get HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    forged = path + b"Goverse-Client-Id: g0/x\r\nGoverse-Credential: \xff\r\n\r\n"
    assert await _raw_status(url, forged) == 401
    traced = path + b"tracestate: a=\xff\r\ntraceparent: 00-" + b"1" * 32 + b"-" + b"2" * 16
    assert await _raw_status(url, traced + b"-01\r\n\r\n") == 200


MALFORMED_HTTP = {
    "header byte": b"GET /v1/describe HTTP/1.1\r\nHost: x\r\nX-Probe: "
    + b"\x01" * 5000
    + b"\r\n\r\n",
    "header too long": b"GET /v1/describe HTTP/1.1\r\nHost: x\r\nX-Probe: "
    + b"h" * 9000
    + b"\r\n\r\n",
    "request line too long": b"GET /" + b"p" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "version": b"GET / HTTP/9.9" + b"v" * 4000 + b"\r\n\r\n",
    "content length": b"POST /v1/objects/Counter/m/Get HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"9" * 5000
    + b"\r\n\r\n",
    "chunk": b"POST /v1/objects/Counter/m/Get HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz" + b"c" * 5000 + b"\r\n",
}
"""Requests the HTTP parser refuses, each with thousands of bytes of the caller's own."""


async def test_a_request_the_http_parser_refuses_gets_400_and_one_quiet_line(
    processes: ProcessGroup,
) -> None:
    """Malformed requests (a bad header byte, a header or request line too long, an unknown
    version, a bad Content-Length or chunk) answer 400 and are logged as one DEBUG line each,
    naming the parser's error without the request's bytes or a traceback (aiohttp logged
    each at ERROR with its traceback and the offending bytes: a 25 KB line for 5,000 bad
    header bytes); the gate keeps serving."""
    node = processes.node()
    gate = processes.gate("g0", [node.address], (HTTP_ON, "--log-level=debug"))
    assert gate.ready is not None
    url = f"http://{gate.ready.identity['http']}"
    for name, request in MALFORMED_HTTP.items():
        assert await _raw_status(url, request) == 400, name
    async with client() as http:
        assert (await call(http, url, "/v1/objects/Counter/m/Get"))[0] == 200
    await eventually(
        lambda: len(_refused_http_lines(gate)) == len(MALFORMED_HTTP), TIMEOUT, "the lines"
    )
    output = gate.output()
    assert "Traceback" not in output
    for probe in (b"\x01" * 16, b"h" * 64, b"p" * 64, b"v" * 64, b"9" * 64, b"c" * 64):
        assert probe.decode() not in output
        assert repr(probe)[2:-1] not in output
    assert [line for line in gate.log_lines() if line["level"] in ("error", "critical")] == []
    assert all(len(json.dumps(line)) < 1000 for line in _refused_http_lines(gate))


def _refused_http_lines(gate: ServiceProcess) -> list[dict[str, Any]]:
    return [line for line in gate.log_lines() if line["event"] == "malformed HTTP request refused"]
