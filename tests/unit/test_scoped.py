"""Scoped: a context variable set for a block and restored after it, in whichever Context the
block ends."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator

import pytest

from goverse._scoped import Scoped

_variable: contextvars.ContextVar[str] = contextvars.ContextVar("test_scoped", default="outer")


def test_the_block_sees_the_value_and_gets_the_result() -> None:
    with Scoped(_variable, "inner", 42) as result:
        assert _variable.get() == "inner"
        assert result == 42
    assert _variable.get() == "outer"


def _nested() -> None:
    with Scoped(_variable, "a", None):
        with Scoped(_variable, "b", None):
            assert _variable.get() == "b"
        assert _variable.get() == "a"
        raise RuntimeError


def test_nested_blocks_restore_in_turn_and_on_an_exception() -> None:
    with pytest.raises(RuntimeError):
        _nested()
    assert _variable.get() == "outer"


async def test_a_generator_closed_from_another_task_ends_its_block_without_error() -> None:
    """What the event loop's finalizer does to a streaming handler gRPC left unfinished: it
    closes the async generator in a task of its own, another Context than the block began in."""
    ended = asyncio.Event()

    async def stream() -> AsyncGenerator[str, None]:
        with Scoped(_variable, "streaming", None):
            try:
                yield _variable.get()
                await asyncio.Event().wait()
                yield "never"  # pragma: no cover
            finally:
                ended.set()

    generator = stream()

    async def first() -> str:
        _variable.set("caller")
        return await anext(generator)

    assert await asyncio.create_task(first()) == "streaming"
    closing = asyncio.create_task(generator.aclose())
    await asyncio.wait_for(closing, timeout=5)
    assert ended.is_set()
    assert _variable.get() == "outer"
