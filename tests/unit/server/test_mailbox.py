"""Mailbox: bounded, non-blocking puts; batched reads; idempotent close."""

from __future__ import annotations

import asyncio

from goverse.server import Mailbox
from tests.helpers.tasks import bounded


async def test_get_batch_returns_everything_queued_in_one_read() -> None:
    """Items queued before a read come back together, oldest first."""
    box: Mailbox[int] = Mailbox(max_items=10)
    for i in range(5):
        assert box.put(i)
    assert await box.get_batch(max_items=100) == [0, 1, 2, 3, 4]
    assert len(box) == 0


async def test_batch_size_is_capped() -> None:
    box: Mailbox[int] = Mailbox(max_items=10)
    for i in range(5):
        box.put(i)
    assert await box.get_batch(max_items=2) == [0, 1]
    assert await box.get_batch(max_items=10) == [2, 3, 4]


async def test_put_refuses_beyond_item_bound_without_blocking() -> None:
    box: Mailbox[int] = Mailbox(max_items=2)
    assert box.put(1)
    assert box.put(2)
    assert not box.put(3)
    assert len(box) == 2


async def test_put_refuses_beyond_byte_bound_but_always_takes_one_item() -> None:
    """A single item larger than the byte bound is still taken into an empty mailbox, so a
    big message is not undeliverable; a second one is refused."""
    box: Mailbox[str] = Mailbox(max_items=10, max_bytes=100)
    assert box.put("big", size=500)
    assert not box.put("more", size=1)
    await box.get_batch(10)
    assert box.put("a", size=60)
    assert not box.put("b", size=60)
    assert box.nbytes == 60


async def test_put_on_closed_mailbox_returns_false() -> None:
    box: Mailbox[int] = Mailbox(max_items=2)
    assert box.close("done")
    assert not box.put(1)


async def test_close_is_idempotent_and_keeps_the_first_reason() -> None:
    box: Mailbox[int] = Mailbox(max_items=2)
    assert box.close("first")
    assert not box.close("second")
    assert box.closed
    assert box.close_reason == "first"


async def test_close_without_discard_flushes_then_ends() -> None:
    box: Mailbox[int] = Mailbox(max_items=5)
    box.put(1)
    box.put(2)
    box.close("draining")
    assert await box.get_batch(10) == [1, 2]
    assert await box.get_batch(10) is None


async def test_close_with_discard_ends_at_once() -> None:
    box: Mailbox[int] = Mailbox(max_items=5)
    box.put(1)
    box.close("slow consumer", discard=True)
    assert await box.get_batch(10) is None
    assert box.nbytes == 0


async def test_close_wakes_a_waiting_reader() -> None:
    box: Mailbox[int] = Mailbox(max_items=5)
    reader = asyncio.create_task(box.get_batch(10))
    await asyncio.sleep(0)
    box.close("bye")
    assert await bounded(reader, 5) is None


async def test_timeout_returns_empty_batch() -> None:
    box: Mailbox[int] = Mailbox(max_items=5)
    assert await box.get_batch(10, timeout=0.01) == []


async def test_drop_oldest_frees_room() -> None:
    box: Mailbox[int] = Mailbox(max_items=2)
    box.put(1, size=3)
    box.put(2, size=4)
    assert box.drop_oldest() == 1
    assert box.nbytes == 4
    assert box.put(3)


async def test_move_to_hands_over_the_queue_in_order_with_its_sizes() -> None:
    """What one mailbox holds moves to another, oldest first, byte counts and all; what the
    other refuses stays behind."""
    old: Mailbox[str] = Mailbox(max_items=5)
    for item, size in (("a", 10), ("b", 20), ("c", 30)):
        old.put(item, size)
    new: Mailbox[str] = Mailbox(max_items=2)
    assert old.move_to(new) == 2
    assert (len(new), new.nbytes) == (2, 30)
    assert (len(old), old.nbytes) == (1, 30)
    assert await new.get_batch(10) == ["a", "b"]
    assert await old.get_batch(10) == ["c"]


async def test_a_reader_of_two_sources_waits_on_the_mailbox_and_is_woken_for_the_other() -> None:
    """take_batch never waits ([] when empty, None once closed and empty); wait returns when
    an item is queued, when wake is called (the reader's other source has work) or at once
    when closed."""
    box: Mailbox[str] = Mailbox(10)
    assert box.take_batch(10) == []
    waiter = asyncio.get_running_loop().create_task(box.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    box.wake()
    async with asyncio.timeout(5):
        await waiter
    waiter = asyncio.get_running_loop().create_task(box.wait())
    await asyncio.sleep(0)
    box.put("a")
    async with asyncio.timeout(5):
        await waiter
    assert box.take_batch(10) == ["a"]
    box.close("done")
    async with asyncio.timeout(5):
        await box.wait()
    assert box.take_batch(10) is None
