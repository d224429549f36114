"""ClientProxy: pushes never raise or block, close is idempotent, reads come in batches."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from goverse.gate import ClientProxy
from goverse.gate._client_proxy import SlowClientPolicy, StreamEnd
from goverse.gate._config import GateConfig
from goverse.server import DropReason
from goverse.v1 import gate_pb2
from goverse.wire import CloseReason
from tests.helpers.fake_node import text, unpack_text
from tests.helpers.tasks import bounded, cancel_and_wait


def proxy(
    max_messages: int = 100,
    max_bytes: int = 1 << 20,
    batch_bytes: int = 1 << 20,
    overflow: str = "disconnect",
    slow: list[ClientProxy] | None = None,
) -> ClientProxy:
    return ClientProxy(
        "g1/abc",
        "secret",
        max_messages=max_messages,
        max_bytes=max_bytes,
        max_batch_bytes=batch_bytes,
        overflow=overflow,
        on_slow_consumer=None if slow is None else slow.append,
    )


async def test_push_on_a_closed_proxy_returns_false_and_does_not_raise() -> None:
    """After close, push refuses quietly and counts the drop."""
    client = proxy()
    client.close("gone")
    assert client.closed
    assert client.push(text("late")) is False
    assert client.dropped == 1


async def test_close_twice_is_safe_and_keeps_the_first_reason() -> None:
    """close() is idempotent: True the first time only; the first reason stays."""
    client = proxy()
    assert client.close("first") is True
    assert client.close("second") is False
    assert client.close("third", drain=True) is False
    assert client.close_reason == "first"
    assert not client.draining


async def test_overflow_disconnects_a_slow_consumer_and_frees_its_queue() -> None:
    """Beyond the message bound (default policy), push returns False at once, the proxy closes
    as a slow consumer, its queue is discarded and the registry is told once."""
    slow: list[ClientProxy] = []
    client = proxy(max_messages=3, slow=slow)
    assert [client.push(text(str(i))) for i in range(5)] == [True, True, True, False, False]
    assert client.closed
    assert client.slow_consumer
    assert client.close_reason == "slow consumer"
    assert client.slow_consumer_details.startswith("slow consumer: ")
    assert not client.draining
    assert (client.queued, client.queued_bytes) == (0, 0)
    assert client.dropped == 5  # three discarded, the overflowing push, one refused after
    assert slow == [client]
    assert await client.next_batch() is None


async def test_byte_bound_overflows_too() -> None:
    """Beyond the byte bound, push returns False and the slow consumer is disconnected."""
    client = proxy(max_bytes=200)
    results = [client.push(text("x" * 60)) for _ in range(5)]
    assert results[0] is True
    assert False in results
    assert client.slow_consumer
    assert client.queued_bytes == 0


async def test_drop_oldest_makes_room_for_the_newest() -> None:
    """Under drop-oldest an overflow drops the oldest pushes; the proxy stays open and the
    reader gets the newest ones."""
    slow: list[ClientProxy] = []
    client = proxy(max_messages=3, overflow="drop-oldest", slow=slow)
    assert all(client.push(text(str(i))) for i in range(10))
    assert not client.closed
    assert client.dropped == 7
    assert slow == []
    batch = await client.next_batch()
    assert batch is not None
    assert [unpack_text(m) for m in batch] == ["7", "8", "9"]


async def test_drop_oldest_also_honours_the_byte_bound() -> None:
    client = proxy(max_bytes=200, overflow="drop-oldest")
    for i in range(10):
        assert client.push(text(f"{i}" + "x" * 59))
        assert client.queued_bytes <= 200
    assert client.dropped > 0


def test_an_unknown_overflow_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="overflow policy"):
        proxy(overflow="block")


async def test_a_push_larger_than_a_stream_message_is_refused() -> None:
    """A message that can never fit one stream message is dropped rather than queued."""
    client = proxy(batch_bytes=100)
    assert client.push(text("x" * 500)) is False
    assert client.queued == 0


async def test_next_batch_reads_many_pushes_at_once() -> None:
    """Everything queued comes back in one batch, oldest first."""
    client = proxy()
    for i in range(50):
        assert client.push(text(str(i)))
    batch = await client.next_batch()
    assert batch is not None
    assert [unpack_text(message) for message in batch] == [str(i) for i in range(50)]


async def test_batches_stay_under_the_stream_message_limit() -> None:
    """A batch never carries more bytes than one stream message may."""
    client = proxy(batch_bytes=1000)
    for _ in range(40):
        assert client.push(text("y" * 90))
    sizes = []
    total = 0
    while total < 40:
        batch = await client.next_batch()
        assert batch is not None
        total += len(batch)
        sizes.append(sum(message.ByteSize() + 2 for message in batch))
    assert len(sizes) > 1
    assert max(sizes) <= 1000


async def test_draining_close_flushes_then_ends() -> None:
    """After a draining close the writer still gets what was queued, then None."""
    client = proxy()
    client.push(text("a"))
    client.push(text("b"))
    assert client.close("shutting down", drain=True)
    assert client.draining
    assert client.push(text("c")) is False
    batch = await client.next_batch()
    assert batch is not None
    assert [unpack_text(m) for m in batch] == ["a", "b"]
    assert await client.next_batch() is None


async def test_other_close_discards_the_queue() -> None:
    """A non-draining close drops what is queued: the reader gets None at once."""
    client = proxy()
    client.push(text("a"))
    client.close("client went away")
    assert await client.next_batch() is None


async def test_close_after_draining_discards_what_is_left() -> None:
    """When the stream ends during a drain, the rest is discarded; draining stays True."""
    client = proxy()
    client.push(text("a"))
    client.close("shutting down", drain=True)
    client.close("stream ended")
    assert client.draining
    assert await client.next_batch() is None


async def test_close_wakes_a_waiting_reader() -> None:
    """A reader blocked on an empty queue returns None as soon as the proxy closes."""
    client = proxy()
    reader = asyncio.create_task(client.next_batch())
    await asyncio.sleep(0)
    assert not reader.done()
    client.close("bye")
    assert await bounded(reader, 5) is None


async def test_waiting_reader_can_be_cancelled() -> None:
    """next_batch() is cancellable; the proxy keeps working afterwards."""
    client = proxy()
    reader = asyncio.create_task(client.next_batch())
    await asyncio.sleep(0)
    await cancel_and_wait(reader, 5)
    assert reader.cancelled()
    assert client.push(text("after"))
    assert await client.next_batch() is not None


def test_repr_never_shows_the_credential() -> None:
    assert "secret" not in repr(proxy())


async def events(client: ClientProxy) -> list[gate_pb2.RegisterResponse]:
    """Every event of the client's stream, until it ends with OK."""
    async with asyncio.timeout(5):
        return [event async for event in client.stream("g1")]


async def test_the_stream_sends_registered_then_batches_then_draining() -> None:
    """The stream protocol: Registered (id, credential, gate, the gate's message size limit)
    first, then what was queued in one PushedMessages, then after a draining close Draining
    with its text, then OK."""
    client = proxy()
    client.push(text("a"))
    client.push(text("b"))
    client.close("the gate is shutting down", drain=True)
    sent = await events(client)
    assert [event.WhichOneof("event") for event in sent] == ["registered", "messages", "draining"]
    assert sent[0].registered == gate_pb2.Registered(
        client_id="g1/abc", credential="secret", gate_id="g1", max_message_bytes=1 << 20
    )
    assert [unpack_text(m) for m in sent[1].messages.messages] == ["a", "b"]
    assert sent[2].draining.reason == "the gate is shutting down"
    assert client.closed_by is CloseReason.SHUTDOWN


async def test_a_slow_consumer_stream_ends_with_resource_exhausted_and_its_close_reason() -> None:
    """After an overflow the stream sends nothing more and ends as the servicer must abort it:
    RESOURCE_EXHAUSTED, the slow-consumer details, close reason slow_consumer."""
    client = proxy(max_messages=1)
    client.push(text("a"))
    client.push(text("b"))
    stream = client.stream("g1")
    assert (await anext(stream)).WhichOneof("event") == "registered"
    with pytest.raises(StreamEnd) as ended:
        await anext(stream)
    assert ended.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ended.value.details.startswith("slow consumer: ")
    assert ended.value.reason is CloseReason.SLOW_CONSUMER


async def test_closed_by_names_why_in_the_wire_vocabulary() -> None:
    """None while open; shutdown for a draining close, slow_consumer for an overflow,
    peer_gone for any other close (the stream ended); the first close decides."""
    assert proxy().closed_by is None
    drained, gone, slow = proxy(), proxy(), proxy(max_messages=1)
    drained.close("bye", drain=True)
    drained.close("stream ended")
    gone.close("stream ended")
    slow.push(text("a"))
    slow.push(text("b"))
    assert [drained.closed_by, gone.closed_by, slow.closed_by] == [
        CloseReason.SHUTDOWN,
        CloseReason.PEER_GONE,
        CloseReason.SLOW_CONSUMER,
    ]


def test_the_slow_client_policies_are_the_flag_values() -> None:
    """SlowClientPolicy is the vocabulary of --slow-client-policy; both spellings work."""
    flag = GateConfig.parser({}).parse(["--slow-client-policy=drop-oldest"])
    assert flag.slow_client_policy is SlowClientPolicy.DROP_OLDEST
    by_enum = proxy(max_messages=1, overflow=SlowClientPolicy.DROP_OLDEST)
    by_flag = proxy(max_messages=1, overflow="drop-oldest")
    for client in (by_enum, by_flag):
        assert client.push(text("a"))
        assert client.push(text("b"))
        assert not client.closed


async def test_drops_are_counted_with_the_shared_reasons() -> None:
    """Too large, closed and overflowing pushes are reported as DropReason values."""
    drops: list[tuple[DropReason, int]] = []
    client = ClientProxy(
        "g1/abc",
        "secret",
        max_messages=1,
        max_bytes=1 << 20,
        max_batch_bytes=100,
        on_drop=lambda reason, count: drops.append((reason, count)),
    )
    client.push(text("x" * 500))
    client.push(text("a"))
    client.push(text("b"))
    client.push(text("c"))
    assert drops == [
        (DropReason.MESSAGE_TOO_LARGE, 1),
        (DropReason.SLOW_CONSUMER, 2),
        (DropReason.CLIENT_CLOSED, 1),
    ]


def recorded_proxy(drops: list[tuple[DropReason, int]]) -> ClientProxy:
    return ClientProxy(
        "g1/abc",
        "secret",
        max_messages=100,
        max_bytes=1 << 20,
        max_batch_bytes=1 << 20,
        on_drop=lambda reason, count: drops.append((reason, count)),
    )


async def test_pushes_still_queued_when_the_client_goes_away_are_counted_as_dropped() -> None:
    """Three pushes queued, then the client goes away: the three discarded with its queue
    are counted once, as ``client_closed`` (what an operator adds up as pushes lost), and in
    the proxy's own count. They used to vanish from every count."""
    drops: list[tuple[DropReason, int]] = []
    client = recorded_proxy(drops)
    for value in "abc":
        assert client.push(text(value))
    client.close("the client went away")
    client.close("again")
    assert drops == [(DropReason.CLIENT_CLOSED, 3)]
    assert client.dropped == 3


async def test_pushes_a_drain_kept_for_a_client_that_goes_away_are_counted_as_dropped() -> None:
    """A draining close keeps two pushes for the writer to flush; the client goes away before
    they are sent: the two discarded then are counted as ``client_closed``."""
    drops: list[tuple[DropReason, int]] = []
    client = recorded_proxy(drops)
    client.push(text("a"))
    client.push(text("b"))
    client.close("shutting down", drain=True)
    assert drops == []
    client.close("the client went away")
    assert drops == [(DropReason.CLIENT_CLOSED, 2)]
