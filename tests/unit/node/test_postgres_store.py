"""The PostgreSQL backend's pure parts: what it shows of a URL, how it cuts a batch."""

from __future__ import annotations

import asyncio

import pytest

from goverse.node._config import redact_store
from goverse.node._postgres_store import PostgresBackend, _segments
from goverse.node._store import Op, OpKind, StoreUnavailable, open_store

A, B = ("Counter", "a"), ("Counter", "b")


def test_the_description_hides_every_password() -> None:
    backend = PostgresBackend("postgresql://goverse:s3cr%40t@db:5432/state", None, 2)
    assert backend.description == "postgresql://goverse:***@db:5432/state"
    backend = PostgresBackend("postgres://goverse@db/state?sslmode=require&password=pw1", None, 2)
    assert backend.description == "postgres://goverse@db/state?sslmode=require&password=***"


def test_errors_never_carry_a_password() -> None:
    """Whatever a driver puts in its message, the password given, the URL's, and its
    percent-decoded form are masked."""
    backend = PostgresBackend("postgresql://goverse:s3cr%40t@db/state", "from-file", 2)
    error = backend._unavailable("cannot connect", OSError("s3cr@t s3cr%40t from-file"))
    assert str(error) == "postgresql://goverse:***@db/state: cannot connect: *** *** ***"


def test_a_batch_is_cut_where_an_object_comes_again() -> None:
    """Within a run every object appears once, so its operations may be grouped by kind."""
    ops = [
        Op(OpKind.LOAD, A, 1),
        Op(OpKind.LOAD, B, 1),
        Op(OpKind.SAVE, A, 1, b"x"),
        Op(OpKind.SAVE, B, 1, b"y"),
        Op(OpKind.DELETE, ("Counter", "c"), 1),
        Op(OpKind.DELETE, A, 1),
    ]
    assert _segments(ops) == [[0, 1], [2, 3, 4], [5]]
    assert _segments([]) == [[]]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://goverse:hunter2@127.0.0.1:notaport/db", "ValueError: invalid literal"),
        ("postgresql://goverse:hunter2@127.0.0.1:1/db?sslmode=bogus", "`sslmode` parameter"),
    ],
)
async def test_a_bad_url_is_unavailable_with_the_reason(url: str, why: str) -> None:
    store = open_store(url, None, 2)
    with pytest.raises(StoreUnavailable, match="cannot connect") as refused:
        async with asyncio.timeout(10):
            await store.open()
    assert why in str(refused.value)
    assert "hunter2" not in str(refused.value)


async def test_a_password_with_an_unescaped_slash_is_not_shown() -> None:
    """Regression: the password of a URL was taken to end at the first '/', so one written
    unescaped with a '/' in it (base64 secrets have them) was shown whole in the store's
    description (logged at each retry, in Status) and, in part, in the driver's error."""
    store = open_store("postgresql://goverse:hun/ter2@127.0.0.1:1/db", None, 2)
    assert store.description == "postgresql://goverse:***@127.0.0.1:1/db"
    assert redact_store("postgresql://goverse:hun/ter2@db/x") == "postgresql://goverse:***@db/x"
    with pytest.raises(StoreUnavailable, match="cannot connect") as refused:
        async with asyncio.timeout(10):
            await store.open()
    assert "hun" not in str(refused.value)
    assert "ter2" not in str(refused.value)
