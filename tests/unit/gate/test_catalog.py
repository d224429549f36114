"""Catalog: the gate's union of its nodes' descriptions, its refreshes and its lookups."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from goverse import wire
from goverse._object_types import load_object_types
from goverse.descriptions import describe_types
from goverse.errors import Internal, InvalidArgument, NotFound, Unimplemented
from goverse.examples.v1.chat_pb2 import ChatMessage, SendResponse
from goverse.examples.v1.counter_pb2 import CounterValue
from goverse.gate._catalog import MISS_REFRESH_INTERVAL, Catalog, union
from goverse.server import KnownNames, Supervisor
from goverse.server._metrics import OTHER
from goverse.transport import ChannelPool, channel_options
from goverse.v1 import describe_pb2
from tests.helpers.fake_node import FakeNode
from tests.helpers.fake_view import FakeView
from tests.helpers.tasks import bounded
from tests.helpers.waiting import eventually


def described(module: str, at: int) -> describe_pb2.DescribeResponse:
    return describe_types(load_object_types([module]), at)


def without_method(
    response: describe_pb2.DescribeResponse, type_name: str, method: str
) -> describe_pb2.DescribeResponse:
    """`response` with `method` of `type_name` left out (another version of the type)."""
    changed = describe_pb2.DescribeResponse()
    changed.CopyFrom(response)
    for description in changed.types:
        if description.name == type_name:
            kept = [m for m in description.methods if m.name != method]
            del description.methods[:]
            description.methods.extend(kept)
    return changed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool() -> AsyncIterator[ChannelPool]:
    channels = ChannelPool(channel_options())
    yield channels
    await channels.close()


@pytest.fixture
async def second_node() -> AsyncIterator[FakeNode]:
    node = await FakeNode().start()
    try:
        yield node
    finally:
        await node.stop(0)


def catalog(view: FakeView, pool: ChannelPool, clock: Clock | None = None) -> Catalog:
    return Catalog(
        view,
        pool,
        refresh_interval=timedelta(minutes=10),
        node_timeout=2.0,
        clock=clock or Clock(),
    )


def test_union_takes_a_type_described_differently_from_the_newest_description() -> None:
    """Mid-rollout, two nodes describe Counter differently: the newest description wins,
    whatever the order the nodes answered in; the union's time is the newest."""
    old = described("goverse.examples.counter", 100)
    new = without_method(described("goverse.examples.counter", 200), "Counter", "Get")
    for responses in ([old, new], [new, old]):
        merged = union(responses)
        assert [m.name for m in merged.types[0].methods] == ["Increment"]
        assert merged.described_unix_ms == 200


async def test_the_catalog_is_the_union_of_its_nodes_and_follows_the_view(
    fake_node: FakeNode, second_node: FakeNode, pool: ChannelPool
) -> None:
    """Two nodes with one type each: the catalog has both; once a node leaves the view, its
    type leaves the catalog at the next refresh."""
    fake_node.description = described("goverse.examples.counter", 1)
    second_node.description = described("goverse.examples.chat", 2)
    view = FakeView(fake_node.address, second_node.address)
    cat = catalog(view, pool)
    response = await cat.describe()
    assert [t.name for t in response.types] == ["ChatRoom", "Counter"]
    view.set_nodes(fake_node.address)
    await cat.refresh()
    assert [t.name for t in (await cat.describe()).types] == ["Counter"]


async def test_every_type_and_method_described_becomes_a_metric_label(
    fake_node: FakeNode, second_node: FakeNode, pool: ChannelPool
) -> None:
    """A refresh adds each described type and method to the gate's metric labels; a type
    that left with its node keeps its label (labels are only added)."""
    fake_node.description = described("goverse.examples.counter", 1)
    second_node.description = described("goverse.examples.chat", 2)
    view = FakeView(fake_node.address, second_node.address)
    names = KnownNames()
    cat = Catalog(view, pool, refresh_interval=timedelta(minutes=10), names=names)
    assert names.labels("Counter", "Get") == (OTHER, OTHER)
    await cat.refresh()
    assert names.labels("Counter", "Get") == ("Counter", "Get")
    assert names.labels("ChatRoom", "Join") == ("ChatRoom", "Join")
    assert names.labels("Counter", "Join") == ("Counter", OTHER)
    view.set_nodes(fake_node.address)
    await cat.refresh()
    assert names.labels("ChatRoom", "Join") == ("ChatRoom", "Join")


async def test_a_node_that_stops_answering_keeps_its_last_description(
    fake_node: FakeNode, pool: ChannelPool
) -> None:
    """A node still in the view that does not answer a refresh keeps what it said last."""
    fake_node.description = described("goverse.examples.counter", 1)
    cat = catalog(FakeView(fake_node.address), pool)
    await cat.refresh()
    await fake_node.stop(0)
    await cat.refresh()
    assert [t.name for t in (await cat.describe()).types] == ["Counter"]


async def test_concurrent_refreshes_ask_each_node_once(
    fake_node: FakeNode, pool: ChannelPool
) -> None:
    """Refreshes wanted while one runs take its result: one Describe per node."""
    cat = catalog(FakeView(fake_node.address), pool)
    await asyncio.gather(*(cat.refresh() for _ in range(5)))
    assert fake_node.describes == 1


async def test_lookups_answer_as_calls_do_and_a_miss_refreshes_at_most_once_a_second(
    fake_node: FakeNode, pool: ChannelPool
) -> None:
    """Unknown type NOT_FOUND, unknown method UNIMPLEMENTED, bad JSON INVALID_ARGUMENT; a miss
    refreshes (finding a type a node gained), but not twice within the miss interval."""
    clock = Clock()
    cat = catalog(FakeView(fake_node.address), pool, clock)
    fake_node.description = described("goverse.examples.counter", 1)
    await cat.refresh()
    method = await cat.method("Counter", "Increment")
    assert cat.to_dict(cat.request_from_json(method, b'{"by": 2}')) == {"by": "2"}
    with pytest.raises(InvalidArgument):
        cat.request_from_json(method, b'{"by": 2, "extra": true}')
    with pytest.raises(Unimplemented):
        await cat.method("Counter", "Nope")
    assert fake_node.describes == 1  # the last refresh was just now

    clock.now += MISS_REFRESH_INTERVAL
    fake_node.description = described("goverse.examples.chat", 2)
    assert (await cat.method("ChatRoom", "Join")).request.DESCRIPTOR.name == "JoinRequest"
    assert fake_node.describes == 2
    with pytest.raises(NotFound):
        await cat.method("Nope", "Get")
    assert fake_node.describes == 2


async def test_run_refreshes_when_the_view_changes(
    fake_node: FakeNode, second_node: FakeNode, pool: ChannelPool
) -> None:
    """The refresh loop takes a node that joined the view in, well before its interval."""
    second_node.description = described("goverse.examples.chat", 2)
    view = FakeView(fake_node.address)
    cat = catalog(view, pool)
    supervisor = Supervisor("gate")
    supervisor.spawn("describe-catalog", cat.run())
    try:
        await eventually(lambda: fake_node.describes >= 1, 5.0, "the first refresh")
        view.set_nodes(fake_node.address, second_node.address)
        await eventually(
            lambda: "ChatRoom" in cat.descriptions.types, 5.0, "the joined node's type"
        )
    finally:
        assert await supervisor.shutdown(5.0) == []


async def test_pushes_and_replies_convert_to_json(fake_node: FakeNode, pool: ChannelPool) -> None:
    """A push of a described type becomes its type and JSON, one of an unknown type its type
    and base64 bytes; a reply of another type than the method's is INTERNAL."""
    fake_node.description = described("goverse.examples.chat", 1)
    cat = catalog(FakeView(fake_node.address), pool)
    await cat.refresh()
    pushed = wire.pack(ChatMessage(room="r", user="u", text="t", seq=3))
    assert await cat.push_dict(pushed) == {
        "type": "goverse.examples.v1.ChatMessage",
        "message": {"room": "r", "user": "u", "text": "t", "seq": "3"},
    }
    unknown = wire.pack(CounterValue(value=1))
    assert await cat.push_dict(unknown) == {
        "type": "goverse.examples.v1.CounterValue",
        "base64": base64.b64encode(unknown.value).decode(),
    }
    send = await cat.method("ChatRoom", "Send")
    assert cat.response_dict(send, wire.pack(SendResponse(seq=4))) == {"seq": "4"}
    with pytest.raises(Internal):
        cat.response_dict(send, unknown)


async def test_describe_asks_again_for_a_node_that_did_not_answer(
    fake_node: FakeNode, pool: ChannelPool, unreachable: str
) -> None:
    """A node of the view missing from the union (it was starting) is asked again by the next
    Describe, once the miss interval has passed."""
    clock = Clock()
    view = FakeView(unreachable)
    cat = Catalog(view, pool, refresh_interval=timedelta(minutes=10), node_timeout=0.2, clock=clock)
    assert list((await cat.describe()).types) == []
    fake_node.description = described("goverse.examples.counter", 1)
    view.set_nodes(unreachable, fake_node.address)
    clock.now += MISS_REFRESH_INTERVAL
    assert [t.name for t in (await cat.describe()).types] == ["Counter"]


async def test_a_miss_whose_caller_gave_up_still_counts_against_the_miss_interval(
    fake_node: FakeNode, pool: ChannelPool, unreachable: str
) -> None:
    """A lookup that missed is cancelled while its refresh waits for a node that does not
    answer (an HTTP client gone): the refresh it started still counts, so another miss within
    the interval asks no node again. Before, every miss whose caller gave up before the
    slowest node answered let the next miss refresh again, whatever the interval."""
    fake_node.description = described("goverse.examples.counter", 1)
    cat = catalog(FakeView(fake_node.address, unreachable), pool)  # the clock stands still
    lookup = asyncio.get_running_loop().create_task(cat.method("Nope", "Get"))
    await eventually(lambda: fake_node.describes == 1, 5.0, "the miss's refresh")
    lookup.cancel()  # the unreachable node is still being waited for
    with pytest.raises(asyncio.CancelledError):
        await bounded(lookup, 5.0)
    with pytest.raises(NotFound):
        await bounded(cat.method("Nope", "Get"), 5.0)
    assert fake_node.describes == 1
