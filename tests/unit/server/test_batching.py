"""BatchRule: one stream message never exceeds the size limit, by count and by wire bytes."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BytesValue, UInt64Value

from goverse import wire
from goverse.server import BatchRule, Mailbox
from goverse.server._batching import GATHER_BELOW, gathered_batch, varint_size
from goverse.v1 import gate_pb2, node_pb2
from tests.helpers.tasks import bounded

LIMIT = 64 * 1024


def push(size: int) -> any_pb2.Any:
    """A pushed message of about `size` bytes."""
    return wire.pack(BytesValue(value=b"x" * size))


def envelope(size: int) -> node_pb2.Envelope:
    return node_pb2.Envelope(
        client_message=node_pb2.ClientMessageEnvelope(client_ids=["g1/a"], message=push(size))
    )


def pushes_rule(limit: int = LIMIT, max_items: int = 10_000) -> BatchRule:
    return BatchRule(
        gate_pb2.RegisterResponse,
        "messages.messages",
        max_message_bytes=limit,
        max_items=max_items,
    )


def envelopes_rule(limit: int = LIMIT, max_items: int = 10_000) -> BatchRule:
    return BatchRule(
        node_pb2.RegisterGateResponse,
        "envelopes.envelopes",
        max_message_bytes=limit,
        max_items=max_items,
    )


def pushed_messages(batch: list[any_pb2.Any]) -> Message:
    return gate_pb2.RegisterResponse(messages=gate_pb2.PushedMessages(messages=batch))


def envelope_batch(batch: list[node_pb2.Envelope]) -> Message:
    return node_pb2.RegisterGateResponse(envelopes=node_pb2.EnvelopeBatch(envelopes=batch))


WRITERS = [
    pytest.param(pushes_rule, push, pushed_messages, id="gate-to-client"),
    pytest.param(envelopes_rule, envelope, envelope_batch, id="node-to-gate"),
]


@pytest.mark.parametrize(("rule_for", "item", "response"), WRITERS)
async def test_a_batch_never_makes_a_stream_message_over_the_limit(
    rule_for: Callable[..., BatchRule],
    item: Callable[[int], Message],
    response: Callable[[list[Any]], Message],
) -> None:
    """Items of many sizes, queued as the writers queue them (the ones too large even alone
    refused), come out in order in batches whose stream message is never over the limit; a
    batch stops only where the next item would have taken it over."""
    rule = rule_for()
    rng = random.Random(9)
    sizes = [
        rng.choice([10, 1_000, 20_000, 60_000, LIMIT, rng.randrange(LIMIT)]) for _ in range(300)
    ]
    mailbox: Mailbox[Any] = Mailbox(len(sizes))
    queued = []
    for candidate in map(item, sizes):
        size = rule.size_of(candidate)
        if rule.fits(size):
            assert mailbox.put(candidate, size)
            queued.append(candidate)
    assert 0 < len(queued) < len(sizes)
    mailbox.close("done")
    batches = []
    while (batch := await rule.next_batch(mailbox)) is not None:
        assert response(batch).ByteSize() <= LIMIT
        batches.append(batch)
    assert [message for batch in batches for message in batch] == queued
    for batch, following in itertools.pairwise(batches):
        taken = sum(rule.size_of(message) for message in batch)
        assert taken + rule.size_of(following[0]) > rule.max_bytes


@pytest.mark.parametrize(("rule_for", "item", "response"), WRITERS)
def test_the_largest_item_that_fits_fits_alone_and_one_byte_more_does_not(
    rule_for: Callable[..., BatchRule],
    item: Callable[[int], Message],
    response: Callable[[list[Any]], Message],
) -> None:
    """The rule is exact at the edge: an item of max_bytes makes a stream message within the
    limit, and an item one byte larger is refused before it could be queued."""
    rule = rule_for()
    payload = LIMIT - 300
    while rule.size_of(item(payload + 1)) <= rule.max_bytes:
        payload += 1
    largest = item(payload)
    assert rule.fits(rule.size_of(largest))
    assert response([largest]).ByteSize() <= LIMIT
    assert not rule.fits(rule.size_of(item(payload + 1)))


@pytest.mark.parametrize(("rule_for", "item", "response"), WRITERS)
def test_size_of_is_what_an_item_adds_to_the_stream_message(
    rule_for: Callable[..., BatchRule],
    item: Callable[[int], Message],
    response: Callable[[list[Any]], Message],
) -> None:
    """An item's size is its tag, length varint and payload in the repeated field."""
    rule = rule_for()
    small, large = item(200), item(300)  # the stream message's length takes 2 bytes in both
    with_small = response([small]).ByteSize()
    with_both = response([small, large]).ByteSize()
    assert with_both - with_small == rule.size_of(large)
    assert rule.size_of(large) == 1 + varint_size(large.ByteSize()) + large.ByteSize()


async def test_a_batch_holds_at_most_max_items() -> None:
    rule = pushes_rule(max_items=3)
    mailbox: Mailbox[Any] = Mailbox(10)
    for _ in range(7):
        message = push(1)
        mailbox.put(message, rule.size_of(message))
    sizes = []
    while mailbox:
        batch = await rule.next_batch(mailbox)
        assert batch is not None
        sizes.append(len(batch))
    assert sizes == [3, 3, 1]


async def test_an_idle_mailbox_gives_an_empty_batch_after_the_timeout() -> None:
    """The node's heartbeat: nothing queued within the timeout is an empty batch."""
    assert await pushes_rule().next_batch(Mailbox(1), timeout=0.01) == []


@pytest.mark.parametrize(
    ("response", "path"),
    [
        (gate_pb2.RegisterResponse, "registered.client_id"),
        (gate_pb2.RegisterResponse, "nothing.here"),
        (gate_pb2.RegisterResponse, "messages"),
    ],
)
def test_a_path_that_names_no_batch_is_refused(response: type[Message], path: str) -> None:
    with pytest.raises(ValueError, match="field"):
        BatchRule(response, path, max_message_bytes=LIMIT, max_items=1)


@pytest.mark.parametrize("value", [1, 127, 128, 16_383, 16_384, 2**21, 2**28, 2**35, 2**63])
def test_varint_size_is_what_protobuf_encodes(value: int) -> None:
    """A one-field message holding `value` is one tag byte and the varint."""
    assert varint_size(value) == UInt64Value(value=value).ByteSize() - 1
    assert varint_size(0) == 1


async def test_a_lone_item_waits_one_turn_for_the_items_started_with_it() -> None:
    """Calls started one by one reach a writer a turn apart: a lone queued item waits one turn
    of the loop, and what is put in that turn goes in the same batch."""
    mailbox: Mailbox[int] = Mailbox(100)
    mailbox.put(1)

    async def another_call() -> None:
        mailbox.put(2)

    started = asyncio.get_running_loop().create_task(another_call())
    assert await bounded(gathered_batch(mailbox, 10), 5.0) == [1, 2]
    await bounded(started, 5.0)


async def test_enough_items_are_taken_at_once() -> None:
    """With GATHER_BELOW items queued, the batch is taken without a turn in between."""
    mailbox: Mailbox[int] = Mailbox(100)
    for item in range(GATHER_BELOW):
        mailbox.put(item)

    async def later() -> None:
        mailbox.put(-1)

    started = asyncio.get_running_loop().create_task(later())
    assert await bounded(gathered_batch(mailbox, 100), 5.0) == list(range(GATHER_BELOW))
    await bounded(started, 5.0)
    assert mailbox.take_batch(10) == [-1]


async def test_a_gathered_batch_keeps_the_bounds_and_ends_with_the_mailbox() -> None:
    """At most max_items a batch; a wake without items keeps waiting; None once closed and
    empty."""
    mailbox: Mailbox[int] = Mailbox(100)
    waiting = asyncio.get_running_loop().create_task(gathered_batch(mailbox, 2))
    mailbox.wake()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    for item in range(5):
        mailbox.put(item)
    assert await bounded(waiting, 5.0) == [0, 1]
    mailbox.close("done")
    assert await bounded(gathered_batch(mailbox, 10), 5.0) == [2, 3, 4]
    assert await bounded(gathered_batch(mailbox, 10), 5.0) is None
