"""Tests of the object host: activation, turns, create/delete and deactivation, in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.errors import Internal, InvalidArgument, PermissionDenied, ShardNotServed, Unavailable
from goverse.node import NodeApp
from goverse.node._object_host import ObjectHost
from goverse.node._object_types import load_object_types
from goverse.node._shards import ShardTable
from goverse.objects import Caller, ObjectRuntime, Principal
from goverse.placement import SHARD_COUNT, shard_of
from goverse.server import ENDUSER_ID, AccessGuard, access_rules
from goverse.wire import ShardRefusal, pack, unpack
from tests.helpers.objects import WITNESS_DIR
from tests.helpers.telemetry import SpanCapture
from tests.helpers.waiting import eventually
from tests.helpers.witness import read_records
from tests.unit.node.conftest import node_config
from tests.unit.node.sample_objects import Tally


@pytest.fixture
async def app() -> AsyncIterator[NodeApp]:
    """A started node whose host the tests call directly (its parts exist once it is bound)."""
    async with NodeApp(node_config()) as started:
        yield started


async def hit(app: NodeApp, object_id: str) -> int:
    reply = await app.host.invoke("Tally", object_id, "Hit", pack(Empty()), Caller())
    value: int = unpack(reply, Int64Value).value
    return value


async def test_concurrent_first_calls_activate_one_instance(app: NodeApp) -> None:
    """Twenty calls racing to a new object construct and activate it exactly once, and
    each of them is served by that one instance."""
    results = await asyncio.gather(*(hit(app, "t1") for _ in range(20)))
    assert Tally.constructed == 1
    assert Tally.activated == 1
    assert sorted(results) == list(range(1, 21))
    assert app.host.list() == [("Tally", "t1")]


async def test_calls_to_one_object_take_turns(app: NodeApp) -> None:
    """Two concurrent calls to one object never run at the same time."""

    async def sleep() -> int:
        reply = await app.host.invoke(
            "Sleeper", "s1", "Sleep", pack(Int64Value(value=30)), Caller()
        )
        value: int = unpack(reply, Int64Value).value
        return value

    assert list(await asyncio.gather(sleep(), sleep(), sleep())) == [1, 1, 1]


async def test_calls_to_different_objects_run_concurrently(app: NodeApp) -> None:
    """Meet(2) on two objects returns only when both calls are inside at once."""

    async def meet(object_id: str) -> int:
        reply = await app.host.invoke(
            "Meeting", object_id, "Meet", pack(Int64Value(value=2)), Caller()
        )
        value: int = unpack(reply, Int64Value).value
        return value

    async with asyncio.timeout(10):
        assert list(await asyncio.gather(meet("a"), meet("b"))) == [2, 2]


async def test_create_activates_once_and_delete_deactivates(app: NodeApp) -> None:
    """create is True only the first time; delete runs on_deactivate and forgets the object;
    a later call activates a fresh instance."""
    assert await app.host.create("Tally", "t2") is True
    assert await app.host.create("Tally", "t2") is False
    assert Tally.activated == 1
    assert await hit(app, "t2") == 1
    assert await app.host.delete("Tally", "t2") is True
    assert Tally.deactivated == ["t2"]
    assert app.host.list() == []
    assert await app.host.delete("Tally", "t2") is False
    assert await hit(app, "t2") == 1
    assert Tally.constructed == 2


async def test_list_filters_by_type(app: NodeApp) -> None:
    await app.host.create("Tally", "b")
    await app.host.create("Tally", "a")
    await app.host.create("Counter", "c")
    assert app.host.list() == [("Counter", "c"), ("Tally", "a"), ("Tally", "b")]
    assert app.host.list("Tally") == [("Tally", "a"), ("Tally", "b")]
    assert app.host.active_count == 3


async def test_a_failed_activation_is_retried_by_the_next_call(app: NodeApp) -> None:
    """on_activate raising answers INTERNAL and leaves nothing behind; the next call
    activates a new instance."""
    with pytest.raises(Internal, match="failed to activate"):
        await app.host.invoke("Fragile", "f", "Ping", pack(Empty()), Caller())
    assert app.host.list() == []
    await app.host.invoke("Fragile", "f", "Ping", pack(Empty()), Caller())
    assert app.host.list() == [("Fragile", "f")]


async def test_deactivate_all_deactivates_every_object_and_refuses_new_calls(
    app: NodeApp,
) -> None:
    for object_id in ("x", "y", "z"):
        await app.host.create("Tally", object_id)
    assert await app.host.deactivate_all(timeout=5) == []
    assert sorted(Tally.deactivated) == ["x", "y", "z"]
    assert app.host.list() == []
    with pytest.raises(Unavailable):
        await hit(app, "x")


async def test_deactivate_all_waits_for_the_turn_of_a_busy_object(app: NodeApp) -> None:
    """An object in the middle of a call is deactivated after that call, not during it."""
    busy = asyncio.create_task(
        app.host.invoke("Sleeper", "busy", "Sleep", pack(Int64Value(value=100)), Caller())
    )
    await eventually(lambda: app.host.is_active("Sleeper", "busy"))
    assert await app.host.deactivate_all(timeout=5) == []
    assert busy.done()
    assert unpack(busy.result(), Int64Value).value == 1


async def test_a_call_waiting_for_its_turn_does_not_run_once_the_lease_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call is admitted while the lease is valid and waits for its object's turn behind a
    running call; the lease stops being valid meanwhile (the process was paused past it, and
    its fence has not run yet). The running call's result is not given (UNAVAILABLE: it ran,
    on a node that may not own the object any more); when the turn comes, the waiting call is
    refused as not the owner, which routing sends again, and none of the object's code runs
    for it."""
    monkeypatch.setenv(WITNESS_DIR, str(tmp_path))
    valid = [True]
    table = ShardTable("n1", lease_valid=lambda: valid[0])
    for shard in range(SHARD_COUNT):
        table.own(shard)
    host = ObjectHost(load_object_types(["tests.helpers.objects"]), table, "n1")
    host.attach_runtime(cast(ObjectRuntime, object()))
    release = Int64Value(value=300)
    running = asyncio.create_task(host.invoke("Witness", "w", "Hold", pack(release), Caller()))
    await eventually(lambda: len(read_records(tmp_path)) == 2, 5, "the first call to run")
    waiting = asyncio.create_task(host.invoke("Witness", "w", "Touch", pack(Empty()), Caller()))
    shard = shard_of("Witness", "w")
    await eventually(lambda: table.in_flight(shard) == 2, 5, "the second call to be admitted")
    valid[0] = False
    with pytest.raises(Unavailable, match="may have run"):
        await running
    with pytest.raises(ShardNotServed) as refused:
        await waiting
    assert refused.value.reason is ShardRefusal.NOT_OWNER
    assert [record.event for record in read_records(tmp_path)] == ["activate", "call"]


async def test_a_clients_principal_is_on_the_call_span_and_seen_by_the_object(
    captured_spans: SpanCapture,
) -> None:
    """A call carrying a principal: its ``<Type>.<Method>`` span has ``enduser.id`` (the
    subject), and the object sees the principal."""
    table = ShardTable("n1")
    for shard in range(SHARD_COUNT):
        table.own(shard)
    host = ObjectHost(load_object_types(["tests.helpers.objects"]), table, "n1")
    host.attach_runtime(cast(ObjectRuntime, object()))
    caller = Caller("g/c", principal=Principal("dana", {"scope": "s"}))
    reply = await host.invoke("Identity", "who", "Caller", pack(Empty()), caller)
    seen = json.loads(unpack(reply, StringValue).value)
    assert (seen["subject"], seen["claims"]) == ("dana", {"scope": "s"})
    (span,) = [span for span in captured_spans.spans if span.name == "Identity.Caller"]
    assert span.attributes[ENDUSER_ID] == "dana"


async def test_the_access_rules_refuse_a_call_by_the_callers_kind(tmp_path: Path) -> None:
    """An internal-only method: refused to a client's call, allowed to another object's;
    creates and deletes are checked too."""
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[call]]\nmethod = "Caller"\naccess = "internal"\n'
        '[[create]]\naccess = "reject"\n[[delete]]\naccess = "reject"\n'
    )
    table = ShardTable("n1")
    for shard in range(SHARD_COUNT):
        table.own(shard)
    guard = AccessGuard(access_rules(rules))
    host = ObjectHost(load_object_types(["tests.helpers.objects"]), table, "n1", access=guard)
    host.attach_runtime(cast(ObjectRuntime, object()))
    with pytest.raises(PermissionDenied, match="by a client"):
        await host.invoke("Identity", "i", "Caller", pack(Empty()), Caller("g/c"))
    await host.invoke("Identity", "i", "Caller", pack(Empty()), Caller("g/c", "Relay", "r"))
    with pytest.raises(PermissionDenied):
        await host.create("Identity", "j")
    with pytest.raises(PermissionDenied):
        await host.delete("Identity", "i")


@pytest.mark.parametrize("method", ["Raise", "Exit"])
async def test_a_method_raising_what_is_not_an_exception_answers_internal(
    app: NodeApp, method: str
) -> None:
    """A method raising a BaseException that is not an Exception (a library's own, or
    SystemExit) answers INTERNAL as any other failure does, rather than leaving its call
    unanswered or ending the node's event loop; the object goes on serving."""
    with pytest.raises(Internal, match=f"Escaping.{method} failed"):
        await app.host.invoke("Escaping", "e", method, pack(Empty()), Caller())
    await app.host.invoke("Escaping", "e", "Ping", pack(Empty()), Caller())
    assert app.host.list() == [("Escaping", "e")]


async def test_an_activation_raising_what_is_not_an_exception_answers_internal(
    app: NodeApp,
) -> None:
    """on_activate raising a BaseException that is not an Exception answers INTERNAL and
    leaves nothing behind, as a failed activation does."""
    with pytest.raises(Internal, match="failed to activate"):
        await app.host.invoke("Escaping", "activate-1", "Ping", pack(Empty()), Caller())
    assert app.host.held_count == 0


async def test_a_deactivation_raising_what_is_not_an_exception_is_logged(app: NodeApp) -> None:
    """on_deactivate raising SystemExit is logged as any failure of it is: a delete answers,
    and the retirement of idle objects (the upkeep's) goes on to the others."""
    await app.host.create("Escaping", "deactivate-1")
    assert await app.host.delete("Escaping", "deactivate-1") is True
    for object_id in ("deactivate-2", "deactivate-3", "other"):
        await app.host.create("Escaping", object_id)
    assert await app.host.deactivate_idle(0) == 3
    assert app.host.held_count == 0


HUGE_NAME = "x" * 2**20
"""A 1 MiB name: a node's own caller (another node, or anyone in plaintext) is not checked by
a gate first."""


@pytest.mark.parametrize(
    ("object_type", "object_id", "method"),
    [(HUGE_NAME, "i", "Caller"), ("Identity", "i", HUGE_NAME), ("Identity", "i" * 1000, "Caller")],
    ids=["type", "method", "id"],
)
async def test_a_malformed_name_is_refused_before_the_object_span_is_started(
    captured_spans: SpanCapture, object_type: str, object_id: str, method: str
) -> None:
    """A call whose type, method or id is malformed answers INVALID_ARGUMENT without a
    ``<Type>.<Method>`` span: a span named after a 1 MiB input would be exported whole (one
    such span can make its whole batch too large for the collector), and the OTLP encoder
    keeps the names of 4096 spans for reuse."""
    table = ShardTable("n1")
    for shard in range(SHARD_COUNT):
        table.own(shard)
    host = ObjectHost(load_object_types(["tests.helpers.objects"]), table, "n1")
    host.attach_runtime(cast(ObjectRuntime, object()))
    with pytest.raises(InvalidArgument):
        await host.invoke(object_type, object_id, method, pack(Empty()), Caller())
    assert [span.name for span in captured_spans.spans if len(span.name) > 300] == []
    assert not any(
        len(str(value)) > 300 for span in captured_spans.spans for value in span.attributes.values()
    )
