"""Client authentication, access rules and per-peer bounds, against real gate and node processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import StringValue

from goverse.client import Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.gate._auth import DEFAULT_LEEWAY_S
from goverse.v1 import describe_pb2, gate_pb2, node_pb2
from goverse.wire import CloseReason, close_reason_of, pack, unpack
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.node_client import NodeCaller
from tests.helpers.processes import BIN, ProcessGroup, ServiceProcess, process_group
from tests.helpers.telemetry import sample, scrape

SECRET = "test-secret-of-at-least-thirty-two-bytes!"
AUDIENCE = "goverse-tests"
ISSUER = "https://issuer.example"

RULES = """
# Ordered: the first rule that matches decides.
[[call]]
type = "Counter"
id = "internal-*"
method = "Increment"
access = "internal"

[[call]]
type = "Counter"
id = "external-*"
access = "external"

[[call]]
type = "Counter"
id = "first-ok"
access = "allow"

[[call]]
type = "Counter"
id = "first-*"
access = "reject"

[[call]]
type = "Counter"
id = "*-other"
access = "allow"

[[create]]
type = "Counter"
id = "nocreate-*"
access = "reject"

[[delete]]
type = "Counter"
id = "keep-*"
access = "reject"
"""


def token(**overrides: Any) -> str:
    """A token the JWT gate accepts, with `overrides` changing or removing (None) claims."""
    claims: dict[str, Any] = {
        "sub": "alice",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time()) + 300,
        "scope": "counter:write",
        "roles": ["admin", "ops"],
    }
    key = overrides.pop("key", SECRET)
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="HS256")


@dataclass
class Cluster:
    node: ServiceProcess
    jwt_gate: ServiceProcess
    """Requires a JWT (HS256, audience, issuer) and applies the access rules."""
    open_gate: ServiceProcess
    """Authenticates no one; at most 2 registrations per peer (rate: plenty)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One node and two gates, shared by the tests of this module (each uses its own ids)."""
    root = tmp_path_factory.mktemp("auth")
    rules = root / "rules.toml"
    rules.write_text(RULES)
    secret = root / "secret"
    secret.write_text(SECRET + "\n")
    with process_group(root / "logs") as group:
        node = group.node(extra=[f"--access-rules={rules}", "--metrics-port=0"])
        jwt_gate = group.gate(
            "jwt",
            [node.address],
            extra=[
                "--authenticator=jwt",
                f"--jwt-secret-file={secret}",
                f"--jwt-audience={AUDIENCE}",
                f"--jwt-issuer={ISSUER}",
                f"--access-rules={rules}",
                "--metrics-port=0",
            ],
        )
        open_gate = group.gate(
            "open",
            [node.address],
            extra=["--max-registrations-per-peer=2", "--registration-rate=1000"],
        )
        yield Cluster(node, jwt_gate, open_gate)


@pytest.fixture
async def alice(cluster: Cluster) -> AsyncIterator[GateClient]:
    client = await GateClient(cluster.jwt_gate.address, token=token()).connect()
    try:
        yield client
    finally:
        await client.close()


async def refusal(address: str, bearer: str | None) -> grpc.aio.AioRpcError:
    """The error a Register stream with `bearer` (None: no token) ends with."""
    client = GateClient(address, token=bearer)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.connect()
        return raised.value
    finally:
        await client.close()


async def call(
    client: GateClient, object_type: str, object_id: str, method: str, request: Any
) -> Any:
    return await client.stub.CallObject(
        gate_pb2.CallObjectRequest(
            object_type=object_type, object_id=object_id, method=method, request=pack(request)
        ),
        metadata=client.metadata(),
        timeout=WAIT,
    )


async def increment(client: GateClient, object_id: str) -> int:
    reply = await call(client, "Counter", object_id, "Increment", IncrementRequest(by=1))
    return unpack(reply.response, CounterValue).value


async def relay(client: GateClient, counter_id: str) -> int:
    reply = await call(client, "Relay", "r", "IncrementCounter", StringValue(value=counter_id))
    return unpack(reply.response, CounterValue).value


async def denied(action: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await action
    return raised.value


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_bearer", "says"),
    [
        # Made when the test runs, not when it is collected: a token made at collection would
        # expire (300 s) before a test that runs late in a long suite, and be refused for that.
        (lambda: None, "requires a token"),
        (lambda: token(exp=int(time.time()) - 3600), "expired"),
        (lambda: token(aud="someone-else"), "audience"),
        (lambda: token(iss="https://evil.example"), "issuer"),
        (lambda: token(key="another-secret-of-at-least-thirty-two-bytes"), "signature"),
        (lambda: "not-a-jwt", "well-formed"),
        (lambda: token(sub=None), "claim"),
    ],
    ids=["missing", "expired", "audience", "issuer", "forged", "garbage", "no-subject"],
)
async def test_a_bad_token_is_refused_with_unauthenticated_and_a_clear_message(
    cluster: Cluster, make_bearer: Callable[[], str | None], says: str
) -> None:
    """Registration with a missing, expired, foreign, forged or malformed token ends with
    UNAUTHENTICATED saying why, never echoing the token; the gate keeps serving."""
    bearer = make_bearer()
    error = await refusal(cluster.jwt_gate.address, bearer)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert says in (error.details() or "")
    assert bearer is None or bearer not in (error.details() or "")
    client = await GateClient(cluster.jwt_gate.address, token=token()).connect()
    await client.close()


async def test_a_refusal_is_logged_once_at_info_without_the_token(cluster: Cluster) -> None:
    """The gate logs a refused registration at INFO with its reason, and not the token."""
    bad = token(aud="log-check-audience")
    await refusal(cluster.jwt_gate.address, bad)
    lines = [
        line
        for line in cluster.jwt_gate.log_lines()
        if line.get("event") == "client authentication failed"
    ]
    assert any(line.get("reason") == "wrong_audience" for line in lines)
    assert all(line.get("level") == "info" for line in lines)
    assert bad not in cluster.jwt_gate.output()


async def test_the_principal_reaches_the_object_over_unary_calls(alice: GateClient) -> None:
    """A client registered with a valid token calls an object: the object sees the token's
    subject and the forwarded claims (scope as text, roles as JSON) beside the client id."""
    reply = await call(alice, "Identity", "unary", "Caller", Empty())
    seen = json.loads(unpack(reply.response, StringValue).value)
    assert seen["client_id"] == alice.client_id
    assert seen["subject"] == "alice"
    assert seen["claims"] == {"scope": "counter:write", "roles": '["admin", "ops"]'}


async def test_the_node_logs_a_calls_principal(cluster: Cluster, alice: GateClient) -> None:
    """A method that raises is logged by the node with the caller's principal (the subject,
    not the claims) beside its client id."""
    error = await denied(call(alice, "Failing", "logged", "Raise", Empty()))
    assert error.code() == grpc.StatusCode.INTERNAL
    lines = [
        line
        for line in cluster.node.log_lines()
        if line.get("event") == "object method raised" and line.get("object_id") == "logged"
    ]
    assert lines
    assert lines[0]["principal"] == "alice"
    assert lines[0]["client_id"] == alice.client_id
    assert "counter:write" not in json.dumps(lines[0])


async def test_the_principal_reaches_objects_over_the_sdk_session_and_between_objects(
    cluster: Cluster,
) -> None:
    """The SDK sends a token from a callable on registration; calls on its Session stream
    carry the principal, and so does a call one object makes to another for it."""
    fetched: list[str] = []

    async def fresh() -> str:
        fetched.append("once")
        return token(sub="bob")

    async with asyncio.timeout(WAIT):
        client = Client([cluster.jwt_gate.address], token=fresh)
        await client.connect()
        try:
            direct = await client.call("Identity", "sdk", "Caller", Empty(), StringValue)
            via = await client.call(
                "Identity", "sdk-relay", "CallerOf", StringValue(value="sdk"), StringValue
            )
        finally:
            await client.close()
    assert json.loads(direct.value)["subject"] == "bob"
    relayed = json.loads(via.value)
    assert relayed["subject"] == "bob"
    assert relayed["object"] == "sdk-relay"
    assert fetched == ["once"]


# -- sessions end with their tokens ---------------------------------------------------------

EXPIRES_IN_S = 8.0
"""How long after it is made :func:`expiring_token` is still accepted: room for a loaded
machine to register with it first, short enough for a test."""


def expiring_token(**overrides: Any) -> str:
    """A token the JWT gate accepts for about :data:`EXPIRES_IN_S` more seconds: its ``exp``
    is past, by less than the clock skew the gate tolerates (``DEFAULT_LEEWAY_S``)."""
    return token(exp=int(time.time() - DEFAULT_LEEWAY_S + EXPIRES_IN_S), **overrides)


async def test_a_register_stream_ends_when_its_token_expires(cluster: Cluster) -> None:
    """A registration lasts no longer than its token: once the gate would refuse the token,
    it ends the stream with UNAUTHENTICATED ("the token has expired", close reason
    ``token_expired``), and the registration's credential is refused from then on."""
    client = await GateClient(cluster.jwt_gate.address, token=expiring_token()).connect()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await client.rest_of_stream(timeout=EXPIRES_IN_S + WAIT)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "the token has expired" in (ended.value.details() or "")
        assert close_reason_of(ended.value.trailing_metadata()) is CloseReason.TOKEN_EXPIRED
        error = await denied(increment(client, "expired-other"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await client.close()


async def test_the_sdk_registers_again_with_a_fresh_token_when_its_token_expires(
    cluster: Cluster,
) -> None:
    """The SDK's Session stream ended by the token's expiry registers again with a fresh
    token from its token function (a new client id, ``on_reconnect``), and its calls go on
    under the new registration."""
    tokens = [expiring_token(sub="dave")]
    reconnected = asyncio.Event()

    def fresh() -> str:
        return tokens.pop() if tokens else token(sub="dave")

    def on_reconnect(old_id: str, new_id: str) -> None:
        reconnected.set()

    client = Client([cluster.jwt_gate.address], token=fresh, on_reconnect=on_reconnect)
    try:
        async with asyncio.timeout(WAIT):
            await client.connect()
        first = client.client_id
        async with asyncio.timeout(EXPIRES_IN_S + WAIT):
            await reconnected.wait()
        async with asyncio.timeout(WAIT):
            await client.wait_connected()
            reply = await client.call("Identity", "renewed", "Caller", Empty(), StringValue)
        second, registrations = client.client_id, client.registrations
    finally:
        await client.close()
    assert second != first
    assert json.loads(reply.value)["client_id"] == second
    assert json.loads(reply.value)["subject"] == "dave"
    assert registrations == 2


# -- access rules --------------------------------------------------------------------------


async def test_internal_only_is_refused_to_a_client_and_allowed_to_an_object(
    alice: GateClient,
) -> None:
    """Counter internal-*.Increment is internal: a client's call gets PERMISSION_DENIED from
    the gate; the same call made by another object (Relay) goes through."""
    error = await denied(increment(alice, "internal-1"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Counter.Increment" in (error.details() or "")
    assert await relay(alice, "internal-1") == 1


async def test_external_only_is_refused_to_an_object_and_allowed_to_a_client(
    alice: GateClient,
) -> None:
    """Counter external-* is external: a client calls it; an object calling it for the
    client is refused by the node with PERMISSION_DENIED."""
    assert await increment(alice, "external-1") == 1
    error = await denied(relay(alice, "external-1"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_first_matching_rule_wins(alice: GateClient) -> None:
    """first-ok is allowed by the rule before first-* (reject), and first-other is refused
    by that reject rule although a later rule (*-other) allows it."""
    assert await increment(alice, "first-ok") == 1
    error = await denied(increment(alice, "first-other"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "call[4]" in (error.details() or "")


async def test_create_and_delete_rules(alice: GateClient) -> None:
    """Creating Counter nocreate-* and deleting Counter keep-* are refused; others pass."""
    create = alice.stub.CreateObject(
        gate_pb2.CreateObjectRequest(object_type="Counter", object_id="nocreate-1"),
        metadata=alice.metadata(),
        timeout=WAIT,
    )
    assert (await denied(create)).code() == grpc.StatusCode.PERMISSION_DENIED
    delete = alice.stub.DeleteObject(
        gate_pb2.DeleteObjectRequest(object_type="Counter", object_id="keep-1"),
        metadata=alice.metadata(),
        timeout=WAIT,
    )
    assert (await denied(delete)).code() == grpc.StatusCode.PERMISSION_DENIED
    created = await alice.stub.CreateObject(
        gate_pb2.CreateObjectRequest(object_type="Counter", object_id="free-1"),
        metadata=alice.metadata(),
        timeout=WAIT,
    )
    assert created.created
    deleted = await alice.stub.DeleteObject(
        gate_pb2.DeleteObjectRequest(object_type="Counter", object_id="free-1"),
        metadata=alice.metadata(),
        timeout=WAIT,
    )
    assert deleted.deleted


async def test_the_node_enforces_the_rules_for_client_calls_too(cluster: Cluster) -> None:
    """A client call that reaches the node without the gate's check (straight to the node)
    is refused there as well: defence in depth."""
    async with NodeCaller(cluster.node.address) as node:
        error = await denied(
            node.stub.CallObject(
                node_pb2.NodeCallObjectRequest(
                    object_type="Counter",
                    object_id="internal-2",
                    method="Increment",
                    request=pack(IncrementRequest(by=1)),
                    caller=node_pb2.Caller(client_id="jwt/someone"),
                ),
                timeout=WAIT,
            )
        )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_refusals_and_denials_are_counted(cluster: Cluster, alice: GateClient) -> None:
    """Refused registrations are counted by reason on the gate; denied calls by operation,
    type and method on the service that denied them (the gate for a client's call, the node
    for an object's)."""
    await refusal(cluster.jwt_gate.address, token(iss="https://counted.example"))
    # A call the gate denies is labelled with the names its catalog knows: wait for its first
    # refresh (a Describe waits for it), as a gate that just started may not have it yet.
    await alice.stub.Describe(
        describe_pb2.DescribeRequest(), metadata=alice.metadata(), timeout=WAIT
    )
    await denied(increment(alice, "internal-counted"))
    await denied(relay(alice, "external-counted"))
    gate = await asyncio.to_thread(scrape, cluster.jwt_gate.metrics_port)
    node = await asyncio.to_thread(scrape, cluster.node.metrics_port)
    refused = "goverse_gate_registrations_refused_total"
    assert sample(gate, refused, reason="wrong_issuer") >= 1
    gate_denied = "goverse_gate_access_denied_total"
    node_denied = "goverse_node_access_denied_total"
    labels = {"operation": "call", "object_type": "Counter", "method": "Increment"}
    assert sample(gate, gate_denied, **labels) >= 1
    assert sample(node, node_denied, **labels) >= 1


def test_a_bad_rules_file_stops_either_service_with_one_line_and_exit_2(tmp_path: Path) -> None:
    """--access-rules naming a file that is not TOML, has an unknown level, a pattern that
    can never match, a rule that can never decide, says nothing or does not exist: the
    process exits with 2 and one line naming the flag and the problem."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[[call]\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[call]]\ntype = "Counter"\naccess = "sometimes"\n')
    never = tmp_path / "never.toml"
    never.write_text('[[call]]\ntype = "Counter"\nmethod = "reset"\naccess = "reject"\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    shadowed = tmp_path / "shadowed.toml"
    shadowed.write_text(
        '[[call]]\naccess = "reject"\n[[call]]\ntype = "Counter"\naccess = "allow"\n'
    )
    for program in ("goverse-gate", "goverse-node"):
        for path, says in (
            (broken, "not valid TOML"),
            (unknown, "'sometimes' is not one of"),
            (never, "call[1]: method 'reset' can never match"),
            (empty, "names no rule and no default"),
            (shadowed, "call[2] can never decide: call[1]"),
            (tmp_path / "missing.toml", "cannot read"),
        ):
            result = subprocess.run(
                [str(BIN / program), f"--access-rules={path}"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 2, (program, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert "--access-rules" in lines[0]
            assert says in lines[0]


def test_jwt_without_a_key_stops_the_gate_with_exit_2() -> None:
    result = subprocess.run(
        [str(BIN / "goverse-gate"), "--authenticator=jwt"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "needs exactly one of --jwt-secret-file" in result.stderr


# -- per-peer bounds -----------------------------------------------------------------------


async def test_one_peer_cannot_hold_more_than_its_registrations(cluster: Cluster) -> None:
    """With --max-registrations-per-peer=2 a third registration from the same address gets
    RESOURCE_EXHAUSTED naming the flag; the two registered clients keep working."""
    held = [await GateClient(cluster.open_gate.address).connect() for _ in range(2)]
    try:
        third = await refusal(cluster.open_gate.address, None)
        assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-registrations-per-peer" in (third.details() or "")
        assert await increment(held[1], "peer-bounds") == 1
    finally:
        for client in held:
            await client.close()


async def test_one_connection_cannot_hold_more_than_its_registrations(
    processes: ProcessGroup, cluster: Cluster
) -> None:
    """With --max-registrations-per-connection=2, a third Register stream on the same channel
    (one HTTP/2 connection) gets RESOURCE_EXHAUSTED naming the flag, while a client on a
    connection of its own from the same address registers; the held clients keep working."""
    gate = await asyncio.to_thread(
        processes.gate,
        "per-connection",
        [cluster.node.address],
        ["--max-registrations-per-connection=2"],
    )
    first = await GateClient(gate.address).connect()
    second = GateClient(gate.address, channel=first.channel)
    others: list[GateClient] = []
    try:
        await second.connect()
        third = first.stub.Register(gate_pb2.RegisterRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async with asyncio.timeout(WAIT):
                await third.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-registrations-per-connection" in (refused.value.details() or "")
        # Channels of one process share a connection unless told otherwise.
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        others.append(await GateClient(gate.address, options=own_connection).connect())
        assert await increment(second, "per-connection") == 1
    finally:
        for client in (*others, second, first):
            await client.close()


async def test_registrations_past_the_rate_are_refused_and_anonymous_without_authenticator(
    processes: ProcessGroup, cluster: Cluster
) -> None:
    """A gate without an authenticator (the default) registers anyone and its objects see no
    principal; with --registration-rate=0.01 the bucket (--max-registrations-per-peer: 2)
    is spent by two registrations and the next gets RESOURCE_EXHAUSTED, even after one of the
    two has left; the gate keeps serving the other."""
    gate = await asyncio.to_thread(
        processes.gate,
        "rate",
        [cluster.node.address],
        ["--max-registrations-per-peer=2", "--registration-rate=0.01"],
    )
    held = [await GateClient(gate.address).connect() for _ in range(2)]
    try:
        reply = await call(held[0], "Identity", "anonymous", "Caller", Empty())
        assert json.loads(unpack(reply.response, StringValue).value)["subject"] is None
        await held[0].close()
        rated = await refusal(gate.address, None)
        assert rated.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--registration-rate" in (rated.details() or "")
        assert await increment(held[1], "rate-bounds") == 1
    finally:
        for client in held:
            await client.close()
