"""ClientRegistry: registration, authentication, removal, delivery of node envelopes, drain."""

from __future__ import annotations

import grpc
import pytest
import structlog

from goverse.errors import ResourceExhausted, Unauthenticated, Unavailable
from goverse.gate import ClientProxy, ClientRegistry
from goverse.gate._client_proxy import StreamEnd
from goverse.v1 import gate_pb2
from goverse.wire import CloseReason
from tests.helpers.fake_node import broadcast, to_clients, unpack_text


def registry(
    max_clients: int = 100, queue: int = 100, overflow: str = "disconnect"
) -> ClientRegistry:
    return ClientRegistry(
        "g1",
        max_clients=max_clients,
        queue_messages=queue,
        queue_bytes=1 << 20,
        max_message_bytes=1 << 22,
        overflow=overflow,
    )


async def drain_texts(reg: ClientRegistry, client_id: str) -> list[str]:
    proxy = reg.get(client_id)
    assert proxy is not None
    if proxy.queued == 0:
        return []
    batch = await proxy.next_batch()
    assert batch is not None
    return [unpack_text(m) for m in batch]


def test_register_issues_distinct_ids_under_the_gate_and_strong_credentials() -> None:
    """Client ids are "<gate-id>/<random>"; credentials are long and distinct."""
    reg = registry()
    a, b = reg.register(), reg.register()
    assert a.client_id.startswith("g1/")
    assert a.client_id != b.client_id
    assert a.credential != b.credential
    assert len(a.credential) >= 40
    assert len(reg) == 2


def test_authenticate_accepts_the_right_credential() -> None:
    reg = registry()
    proxy = reg.register()
    assert reg.authenticate(proxy.client_id, proxy.credential) is proxy


@pytest.mark.parametrize(
    ("client_id", "credential", "message"),
    [
        (None, None, "missing goverse-client-id and goverse-credential"),
        ("g1/x", None, "missing goverse-credential"),
        (None, "c", "missing goverse-client-id"),
        ("g1/unknown", "whatever", "unknown client id or wrong credential"),
        ("g1/unknown", "ünïcode", "unknown client id or wrong credential"),
        ("g1/unknown", "\udcff", "unknown client id or wrong credential"),  # a header's 0xFF
    ],
)
def test_authenticate_refuses_missing_or_unknown(
    client_id: str | None, credential: str | None, message: str
) -> None:
    """Missing metadata and unknown ids are refused with a clear message."""
    reg = registry()
    reg.register()
    with pytest.raises(Unauthenticated, match=message):
        reg.authenticate(client_id, credential)


def test_a_client_cannot_use_another_clients_credential() -> None:
    """Client B's credential does not authenticate as client A, and the refusal reveals
    neither client's credential."""
    reg = registry()
    a, b = reg.register(), reg.register()
    with pytest.raises(Unauthenticated) as refused:
        reg.authenticate(a.client_id, b.credential)
    assert a.credential not in str(refused.value)
    assert b.credential not in str(refused.value)
    assert b.client_id not in str(refused.value)


def test_wrong_credential_and_unknown_id_get_the_same_message() -> None:
    """An attacker cannot tell whether a client id exists."""
    reg = registry()
    a = reg.register()
    with pytest.raises(Unauthenticated) as wrong:
        reg.authenticate(a.client_id, "guess")
    with pytest.raises(Unauthenticated) as unknown:
        reg.authenticate("g1/0000000000000000", "guess")
    assert str(wrong.value) == str(unknown.value)


def test_forged_calls_are_all_refused_but_logged_once_per_interval() -> None:
    """A caller forging client ids or credentials sets the rate of refusals: a thousand of
    them are each refused, and logged once per reason and interval (``call refused`` at
    INFO; the next line says how many were left out). Each wrote a line."""
    reg = registry()
    a = reg.register()
    with structlog.testing.capture_logs() as logs:
        for n in range(1000):
            with pytest.raises(Unauthenticated):
                reg.authenticate(f"g1/forged{n}", "guess")
            with pytest.raises(Unauthenticated):
                reg.authenticate(a.client_id, f"guess{n}")
    refused = [line for line in logs if line["event"] == "call refused"]
    assert [(line["reason"], line["unlogged_before"]) for line in refused] == [
        ("unknown client", 0),
        ("wrong credential", 0),
    ], refused
    assert {line["log_level"] for line in refused} == {"info"}


def test_credential_dies_with_the_registration() -> None:
    """Once removed, the client id and credential are refused."""
    reg = registry()
    proxy = reg.register()
    proxy.close("stream ended")
    assert reg.remove(proxy)
    with pytest.raises(Unauthenticated):
        reg.authenticate(proxy.client_id, proxy.credential)


def test_remove_only_removes_the_registered_proxy() -> None:
    """remove() of a proxy no longer registered is a no-op returning False."""
    reg = registry()
    proxy = reg.register()
    assert reg.remove(proxy)
    assert not reg.remove(proxy)


def test_max_clients() -> None:
    """Beyond max_clients, register raises ResourceExhausted; a removal frees a place."""
    reg = registry(max_clients=2)
    first = reg.register()
    reg.register()
    with pytest.raises(ResourceExhausted, match="maximum of 2 clients"):
        reg.register()
    reg.remove(first)
    reg.register()


async def test_deliver_to_listed_clients_only() -> None:
    """A client-message envelope reaches each listed local client, nobody else."""
    reg = registry()
    a, b, c = reg.register(), reg.register(), reg.register()
    accepted = reg.deliver(to_clients([a.client_id, c.client_id, "g1/gone"], "hi"))
    assert accepted == 2
    assert await drain_texts(reg, a.client_id) == ["hi"]
    assert await drain_texts(reg, b.client_id) == []
    assert await drain_texts(reg, c.client_id) == ["hi"]
    assert reg.delivered == 2
    assert reg.dropped["unknown_client"] == 1


async def test_broadcast_reaches_every_client() -> None:
    reg = registry()
    proxies = [reg.register() for _ in range(3)]
    assert reg.deliver(broadcast("all")) == 3
    for proxy in proxies:
        assert await drain_texts(reg, proxy.client_id) == ["all"]


async def test_a_full_client_is_disconnected_and_counted_while_the_others_get_the_push() -> None:
    """A push that overflows a client's queue disconnects it as a slow consumer (counted, with
    the pushes it discarded); the others still get the push."""
    reg = registry(queue=1)
    slow, fast = reg.register(), reg.register()
    reg.deliver(to_clients([slow.client_id], "first"))
    assert reg.deliver(broadcast("second")) == 1
    assert slow.slow_consumer
    assert reg.slow_consumer_disconnects == 1
    assert reg.dropped["slow_consumer"] == 2
    assert await drain_texts(reg, fast.client_id) == ["second"]


async def test_drop_oldest_counts_what_it_dropped() -> None:
    reg = registry(queue=1, overflow="drop-oldest")
    slow = reg.register()
    reg.deliver(to_clients([slow.client_id], "first"))
    assert reg.deliver(to_clients([slow.client_id], "second")) == 1
    assert reg.dropped["queue_full"] == 1
    assert reg.slow_consumer_disconnects == 0
    assert await drain_texts(reg, slow.client_id) == ["second"]


def test_a_draining_client_may_still_call_but_not_a_disconnected_one() -> None:
    """While its stream flushes and sends Draining, a client's credential still works; after
    a slow-consumer disconnect it does not."""
    reg = registry(queue=1)
    draining, slow = reg.register(), reg.register()
    reg.deliver(to_clients([slow.client_id], "a"))
    reg.deliver(to_clients([slow.client_id], "b"))
    reg.drain("bye")
    assert reg.authenticate(draining.client_id, draining.credential) is draining
    with pytest.raises(Unauthenticated):
        reg.authenticate(slow.client_id, slow.credential)


def test_drain_closes_every_proxy_for_draining_and_refuses_new_clients() -> None:
    reg = registry()
    proxies = [reg.register() for _ in range(3)]
    assert reg.drain("bye") == 3
    assert all(p.closed and p.draining for p in proxies)
    assert reg.drain("again") == 0
    with pytest.raises(Unavailable):
        reg.register()


def test_push_to_a_closed_proxy_is_counted() -> None:
    reg = registry()
    proxy = reg.register()
    proxy.close("gone")
    assert reg.deliver(to_clients([proxy.client_id], "late")) == 0
    assert reg.dropped["client_closed"] == 1


def test_pushes_queued_for_a_client_whose_stream_ends_are_counted_as_dropped() -> None:
    """Two pushes delivered to a client whose stream then ends before it took them: the
    registry (goverse_gate_pushes_dropped_total) counts both as ``client_closed``."""
    reg = registry()
    with reg.connect() as proxy:
        assert reg.deliver(to_clients([proxy.client_id], "a")) == 1
        assert reg.deliver(to_clients([proxy.client_id], "b")) == 1
    assert reg.dropped["client_closed"] == 2
    assert reg.delivered == 2


def test_connect_refuses_with_the_status_the_stream_must_end_with() -> None:
    """A full gate refuses with RESOURCE_EXHAUSTED; a draining one with UNAVAILABLE and close
    reason shutdown (go to another gate)."""
    reg = registry(max_clients=1)
    reg.register()
    with pytest.raises(StreamEnd) as full, reg.connect():
        pass
    assert (full.value.code, full.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    assert "maximum of 1 clients" in full.value.details
    reg.drain("bye")
    with pytest.raises(StreamEnd) as draining, reg.connect():
        pass
    assert draining.value.code == grpc.StatusCode.UNAVAILABLE
    assert draining.value.reason is CloseReason.SHUTDOWN
    assert "shutting down" in draining.value.details


def test_connect_ends_the_registration_however_the_stream_ends() -> None:
    """When the stream ends by an error, as by a cancellation, the proxy is closed as
    peer_gone, unregistered and its credential void, and the end is logged with that reason."""
    reg = registry()
    opened: list[ClientProxy] = []

    def stream_that_breaks() -> None:
        with reg.connect() as proxy:
            opened.append(proxy)
            assert reg.authenticate(proxy.client_id, proxy.credential) is proxy
            raise RuntimeError("the transport broke")

    with structlog.testing.capture_logs() as logs, pytest.raises(RuntimeError):
        stream_that_breaks()
    [proxy] = opened
    assert proxy.closed_by is CloseReason.PEER_GONE
    assert len(reg) == 0
    with pytest.raises(Unauthenticated):
        reg.authenticate(proxy.client_id, proxy.credential)
    [ended] = [line for line in logs if line["event"] == "client stream ended"]
    assert ended["reason"] == "peer_gone"


def test_a_drained_stream_ends_logged_as_shutdown() -> None:
    reg = registry()
    with structlog.testing.capture_logs() as logs, reg.connect():
        reg.drain("bye")
    [ended] = [line for line in logs if line["event"] == "client stream ended"]
    assert ended["reason"] == "shutdown"


async def test_a_broadcast_builds_one_stream_message_for_every_client() -> None:
    """Every client's stream sends the broadcast in the same stream message object (built
    once, not a copy of the push per client); its content is the push."""
    reg = registry()
    proxies = [reg.register() for _ in range(3)]
    reg.deliver(broadcast("all"))
    sent = []
    for proxy in proxies:
        stream = proxy.stream("g1")
        await anext(stream)  # registered
        sent.append(await anext(stream))
        await stream.aclose()
    assert all(message is sent[0] for message in sent)
    assert [unpack_text(m) for m in sent[0].messages.messages] == ["all"]


async def test_different_pushes_and_batches_get_their_own_stream_messages() -> None:
    """Only the same single push shares a stream message: the next broadcast and a batch of
    several pushes each get a message of their own, with their content."""
    reg = registry()
    a, b = reg.register(), reg.register()

    def texts(message: gate_pb2.RegisterResponse | gate_pb2.SessionResponse) -> list[str]:
        return [unpack_text(m) for m in message.messages.messages]

    reg.deliver(broadcast("one"))
    first = a.messages.register(a.take_batch() or [])
    assert b.messages.register(b.take_batch() or []) is first
    reg.deliver(broadcast("two"))
    second = a.messages.register(a.take_batch() or [])
    assert second is not first
    assert (texts(first), texts(second)) == (["one"], ["two"])
    reg.deliver(to_clients([a.client_id], "three"))
    reg.deliver(to_clients([a.client_id], "four"))
    assert texts(a.messages.session(a.take_batch() or [])) == ["three", "four"]
