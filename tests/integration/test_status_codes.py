"""The status codes of docs/errors.md for bad input, on real gate and node processes: each bad
call answers its documented code alike on the unary CallObject, on a Session stream (what the
SDK sends), through the SDK and over the gate's HTTP interface, there at the HTTP status of
docs/http.md's table; so does each registration a gate refuses for what it presented."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

import aiohttp
import grpc
import jwt
import pytest
from google.protobuf import any_pb2
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from goverse import wire
from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.v1 import describe_pb2, gate_pb2, gate_pb2_grpc
from tests.helpers.authenticators import BROKEN_KEY, GOOD_KEY
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.processes import process_group
from tests.helpers.session_client import SessionClient
from tests.helpers.tokens import AUDIENCE, ISSUER, TokenIssuer

LIMIT = 1024 * 1024
"""The cluster's --max-message-bytes (so also the HTTP body bound, --http-max-body-bytes)."""
FACES = ("unary", "session", "sdk", "http")


@dataclass(frozen=True)
class Gate:
    address: str
    url: str
    """Its HTTP base URL."""


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    """A node and a gate with HTTP on, both refusing calls to Sleeper by an access rule,
    shared by the module's tests (none changes what another sees)."""
    root = tmp_path_factory.mktemp("status-codes")
    rules = root / "rules.toml"
    rules.write_text('[[call]]\ntype = "Sleeper"\naccess = "reject"\n')
    common = [f"--max-message-bytes={LIMIT}", f"--access-rules={rules}"]
    with process_group(root / "logs") as group:
        node = group.node(extra=common)
        proc = group.gate("g0", [node.address], [*common, "--http-listen=127.0.0.1:0"])
        assert proc.ready is not None
        yield Gate(proc.address, f"http://{proc.ready.identity['http']}")


@dataclass(frozen=True)
class Row:
    """A bad call of docs/errors.md and what every face answers it."""

    name: str
    object_type: str
    object_id: str
    method: str
    request: Message
    """Sent packed; an ``Any`` is sent as it is (bytes no SDK would write)."""
    code: grpc.StatusCode
    says: str
    """In the status message of every gRPC face."""
    body: str | None
    """The HTTP request body; None: the row has no HTTP form."""
    http_status: int
    http_says: str = ""
    """In the HTTP error's message (empty: `says`)."""
    http_code: grpc.StatusCode | None = None
    """The code of the HTTP error body (None: `code`)."""
    faces: tuple[str, ...] = FACES


GARBAGE = any_pb2.Any(
    type_url=wire.TYPE_URL_PREFIX + IncrementRequest.DESCRIPTOR.full_name,
    value=b"\xff\xff\xff\xff",
)
OVERSIZED = BytesValue(value=b"x" * (LIMIT + 1))

ROWS = [
    Row("unknown type", "Nope", "x", "Get", GetRequest(), grpc.StatusCode.NOT_FOUND,
        "unknown object type 'Nope'", "{}", 404),
    Row("unknown method", "Counter", "x", "Explode", GetRequest(), grpc.StatusCode.UNIMPLEMENTED,
        "Counter has no method 'Explode'", "{}", 501),
    # An empty part is no call over HTTP: the path is unknown (docs/http.md).
    Row("empty type", "", "x", "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT,
        "object_type is empty", "{}", 404, "Not Found", grpc.StatusCode.NOT_FOUND),
    Row("empty id", "Counter", "", "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT,
        "object_id is empty", "{}", 404, "Not Found", grpc.StatusCode.NOT_FOUND),
    Row("empty method", "Counter", "x", "", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT,
        "method is empty", "{}", 404, "Not Found", grpc.StatusCode.NOT_FOUND),
    Row("malformed type", "Coun ter", "x", "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT,
        "'Coun ter' is not a name", "{}", 400),
    Row("type over 128 characters", "T" * 129, "x", "Get", GetRequest(),
        grpc.StatusCode.INVALID_ARGUMENT, "is not a name", "{}", 400),
    Row("unknown type, id over 256 bytes", "Nope", "x" * 257, "Get", GetRequest(),
        grpc.StatusCode.INVALID_ARGUMENT, "longer than 256 bytes", "{}", 400),
    Row("malformed method", "Counter", "x", "Get!", GetRequest(),
        grpc.StatusCode.INVALID_ARGUMENT, "is not a method name", "{}", 400),
    Row("id over 256 bytes", "Counter", "x" * 257, "Get", GetRequest(),
        grpc.StatusCode.INVALID_ARGUMENT, "longer than 256 bytes", "{}", 400),
    Row("id with control characters", "Counter", "a\x01b", "Get", GetRequest(),
        grpc.StatusCode.INVALID_ARGUMENT, "control characters", "{}", 400),
    Row("request of another type", "Counter", "x", "Increment", StringValue(value="1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "got google.protobuf.StringValue, expected goverse.examples.v1.IncrementRequest",
        '"1"', 400, "is a JSON object, not str"),
    Row("request bytes that do not parse", "Counter", "x", "Increment", GARBAGE,
        grpc.StatusCode.INVALID_ARGUMENT,
        "got an unparseable goverse.examples.v1.IncrementRequest", None, 400,
        faces=("unary", "session")),
    Row("request over --max-message-bytes", "Blob", "x", "Measure", OVERSIZED,
        grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max",
        json.dumps(base64.b64encode(OVERSIZED.value).decode()),
        413, "--http-max-body-bytes", faces=("unary", "sdk", "http")),
    Row("refused by an access rule", "Sleeper", "x", "Sleep", Int64Value(value=1),
        grpc.StatusCode.PERMISSION_DENIED, "not permitted", '"1"', 403),
    Row("an object's unexpected exception", "Failing", "x", "Raise", Empty(),
        grpc.StatusCode.INTERNAL, "ValueError", "{}", 500),
]  # fmt: skip
CASES = [
    pytest.param(row, face, id=f"{row.name}-{face}")
    for row in ROWS
    for face in FACES
    if face in row.faces
]


def _packed(request: Message) -> any_pb2.Any:
    return request if isinstance(request, any_pb2.Any) else wire.pack(request)


async def _grpc_status(gate: Gate, row: Row, face: str) -> tuple[grpc.StatusCode, str]:
    """The code and message `face` answers `row` with (OK when it succeeds)."""
    call = gate_pb2.CallObjectRequest(
        object_type=row.object_type,
        object_id=row.object_id,
        method=row.method,
        request=_packed(row.request),
    )
    if face == "unary":
        # The channel may send more than the gate takes: the gate's limit is what answers.
        client = GateClient(gate.address, options=[("grpc.max_send_message_length", 4 * LIMIT)])
        await client.connect()
        try:
            await client.stub.CallObject(call, metadata=client.metadata(), timeout=WAIT)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        finally:
            await client.close()
        return grpc.StatusCode.OK, ""
    if face == "session":
        session = await SessionClient(gate.address).connect()
        try:
            frame = gate_pb2.SessionCall(id=1, timeout_ms=int(WAIT * 1000), call=call)
            await session.send(frame)
            reply = await session.reply(1)
        finally:
            await session.close()
        if reply.WhichOneof("result") != "error":
            return grpc.StatusCode.OK, ""
        code = next(c for c in grpc.StatusCode if c.value[0] == reply.error.code)
        return code, reply.error.message
    async with Client([gate.address]) as sdk:
        try:
            await sdk.call(
                row.object_type, row.object_id, row.method, row.request, CounterValue, timeout=WAIT
            )
        except CallError as error:
            return error.status_code, error.message
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(("row", "face"), CASES)
async def test_a_bad_call_answers_its_documented_code_on_every_face(
    gate: Gate, row: Row, face: str
) -> None:
    """The code of docs/errors.md, with a message that says what was wrong; over HTTP the
    same code in the JSON body, at the status of docs/http.md's table."""
    if face == "http":
        assert row.body is not None
        path = "/".join(quote(part, safe="") for part in (row.object_type, row.object_id))
        url = f"{gate.url}/v1/objects/{path}/{quote(row.method, safe='')}"
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(url, data=row.body) as response,
        ):
            status, refused = response.status, await response.json()
        code = row.code if row.http_code is None else row.http_code
        assert (status, refused["code"]) == (row.http_status, code.name), refused
        assert (row.http_says or row.says) in refused["message"], refused
        return
    code, message = await _grpc_status(gate, row, face)
    assert code == row.code, message
    assert row.says in message, message


# -- refused registrations ---------------------------------------------------------------------


@dataclass(frozen=True)
class GuardedGates:
    """Gates that authenticate their clients: by JWT (:class:`TokenIssuer`'s) and by a user's
    authenticator (:class:`tests.helpers.authenticators.ApiKeys`)."""

    jwt: Gate
    keys: Gate
    issuer: TokenIssuer


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedGates]:
    root = tmp_path_factory.mktemp("refusals")
    issuer = TokenIssuer()
    http = "--http-listen=127.0.0.1:0"
    with process_group(root / "logs") as group:
        node = group.node()
        jwt_gate = group.gate("jwt", [node.address], [http, *issuer.gate_flags(root / "jwt")])
        keys = group.gate("keys", [node.address], [http, f"--authenticator={API_KEYS}"])
        gates = []
        for proc in (jwt_gate, keys):
            assert proc.ready is not None
            gates.append(Gate(proc.address, f"http://{proc.ready.identity['http']}"))
        yield GuardedGates(gates[0], gates[1], issuer)


API_KEYS = "tests.helpers.authenticators:ApiKeys"


@dataclass(frozen=True)
class Refusal:
    """A registration a gate refuses for what it presented (docs/errors.md)."""

    name: str
    gate: str
    """Which of :class:`GuardedGates`: ``jwt`` or ``keys``."""
    token: Callable[[TokenIssuer], str | None]
    """Made when the test runs: a token made at collection could expire before it does."""
    code: grpc.StatusCode
    says: str
    http_status: int


def _signed(issuer: TokenIssuer, key: str, **claims: object) -> str:
    """A token of `issuer`'s audience and issuer, signed with `key`, `claims` overriding."""
    payload = {"sub": "tester", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300}
    return jwt.encode({**payload, **claims}, key, algorithm="HS256")


REFUSALS = [
    Refusal("no token", "jwt", lambda issuer: None, grpc.StatusCode.UNAUTHENTICATED,
            "this gate requires a token", 401),
    Refusal("expired token", "jwt",
            lambda issuer: _signed(issuer, issuer.secret, exp=int(time.time()) - 3600),
            grpc.StatusCode.UNAUTHENTICATED, "the token has expired", 401),
    Refusal("forged token", "jwt", lambda issuer: _signed(issuer, "another-secret-" * 4),
            grpc.StatusCode.UNAUTHENTICATED, "the token's signature does not verify", 401),
    Refusal("not a JWT", "jwt", lambda issuer: "not-a-jwt", grpc.StatusCode.UNAUTHENTICATED,
            "the token is not a well-formed JWT", 401),
    Refusal("refused by a user's authenticator", "keys", lambda issuer: "wrong-key",
            grpc.StatusCode.UNAUTHENTICATED, "unknown API key", 401),
    Refusal("a user's authenticator that broke", "keys", lambda issuer: BROKEN_KEY,
            grpc.StatusCode.UNAVAILABLE, "the gate could not authenticate the client", 503),
]  # fmt: skip
REGISTRATION_FACES = (
    "register",
    "session",
    "describe",
    "sdk",
    "http-call",
    "http-describe",
    "http-events",
    "http-events-query",
)


async def _refused_over_grpc(
    address: str, face: str, token: str | None
) -> tuple[grpc.StatusCode, str]:
    """How a Register or Session stream, or a Describe without a registration, presenting
    `token` ends."""
    metadata = () if token is None else ((wire.AUTHORIZATION_KEY, f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gate_pb2_grpc.GateServiceStub(channel)
        try:
            if face == "describe":
                await stub.Describe(describe_pb2.DescribeRequest(), metadata=metadata, timeout=WAIT)
            elif face == "register":
                await stub.Register(
                    gate_pb2.RegisterRequest(), metadata=metadata, timeout=WAIT
                ).read()
            else:
                await stub.Session(metadata=metadata, timeout=WAIT).read()
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def _refused_over_http(url: str, face: str, token: str | None) -> tuple[int, str, str]:
    """The HTTP status, code and message a gate answers `face` presenting `token`."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    method, path = "POST", "/v1/objects/Counter/refused/Get"
    if face == "http-describe":
        method, path = "GET", "/v1/describe"
    elif face == "http-events":
        method, path = "GET", "/v1/events"
    elif face == "http-events-query":
        method, path, headers = "GET", "/v1/events", {}
        if token is not None:
            path += f"?access_token={quote(token, safe='')}"
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.request(method, url + path, headers=headers) as response,
    ):
        refused = await response.json()
    return response.status, refused["code"], refused["message"]


@pytest.mark.parametrize(
    ("refusal", "face"),
    [
        pytest.param(refusal, face, id=f"{refusal.name}-{face}")
        for refusal in REFUSALS
        for face in REGISTRATION_FACES
    ],
)
async def test_a_refused_registration_answers_its_documented_code_on_every_face(
    guarded: GuardedGates, refusal: Refusal, face: str
) -> None:
    """A token the gate's authenticator refuses ends a Register or Session stream, and a
    Describe without a registration, with UNAUTHENTICATED saying why (UNAVAILABLE when the
    authenticator broke); HTTP answers it as a JSON error (401, 503), for a call, describe
    and an event stream, with the token in the header or the query; the SDK's connect gives up
    with UNAVAILABLE naming the last refusal."""
    gate = guarded.jwt if refusal.gate == "jwt" else guarded.keys
    token = refusal.token(guarded.issuer)
    if face.startswith("http"):
        status, code, message = await _refused_over_http(gate.url, face, token)
        assert (status, code) == (refusal.http_status, refusal.code.name), message
        assert refusal.says in message, message
        return
    if face == "sdk":
        client = Client([gate.address], token=token, connect_timeout=timedelta(seconds=1))
        try:
            with pytest.raises(CallError) as raised:
                await client.connect()
        finally:
            await client.close()
        assert raised.value.status_code == grpc.StatusCode.UNAVAILABLE, raised.value.message
        if refusal.code == grpc.StatusCode.UNAUTHENTICATED:  # a refusal, not a failure
            said = f"last refusal: UNAUTHENTICATED: {refusal.says}"
            assert said in raised.value.message, raised.value.message
        return
    code, message = await _refused_over_grpc(gate.address, face, token)
    assert code == refusal.code, message
    assert refusal.says in message, message
    assert token is None or token not in message


async def test_the_guarded_gates_admit_a_good_token(guarded: GuardedGates) -> None:
    """What the refusals above are measured against: each gate admits a valid token."""
    for gate, token in ((guarded.jwt, guarded.issuer.token()), (guarded.keys, GOOD_KEY)):
        async with Client([gate.address], token=token) as client:
            value = await client.call("Counter", "admitted", "Get", GetRequest(), CounterValue)
        assert value.value == 0
