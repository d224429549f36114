"""Tests of goverse.testing: objects hosted in a test with the node's rules, and their record."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

import goverse.testing
from goverse.errors import (
    CallError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from goverse.examples.chat import ChatRoom
from goverse.examples.counter import Counter
from goverse.examples.v1.chat_pb2 import (
    ChatMessage,
    JoinRequest,
    JoinResponse,
    SendRequest,
    SendResponse,
)
from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.objects import Caller, Object, ObjectDefinitionError, Principal
from goverse.testing import ObjectCall, ObjectEnvironment, Pushed, UnansweredCallError

README = Path(__file__).resolve().parents[2] / "README.md"
ANN = "gate-a/ann"
BOB = "gate-b/bob"


class Announcer(Object):
    """Pushes and broadcasts on request."""

    async def Announce(self, request: StringValue) -> Int64Value:
        return Int64Value(value=self.broadcast(request))

    async def Notify(self, request: StringValue) -> Int64Value:
        """Pushes its id to the comma-separated client ids in `request.value`."""
        return Int64Value(value=self.push(request.value.split(","), StringValue(value=self.id)))


class Tallier(Object):
    """Keeps its total in the Counter with its own id."""

    async def Add(self, request: IncrementRequest) -> CounterValue:
        return await self.call_object("Counter", self.id, "Increment", request, CounterValue)

    async def AddOrSay(self, request: IncrementRequest) -> StringValue:
        """Like Add, but answers the status code of a failed call instead of raising."""
        try:
            await self.call_object("Counter", self.id, "Increment", request, CounterValue)
        except CallError as error:
            return StringValue(value=error.status_code.name)
        return StringValue(value="OK")

    async def CallSelf(self, request: Empty) -> Empty:
        return await self.call_object("Tallier", self.id, "CallSelf", request, Empty)


class Lifecycle(Object):
    """Counts its activations and how many calls are inside it at once."""

    def __init__(self) -> None:
        self.activations = 0
        self.inside = 0
        self.most_inside = 0
        self.deactivated = False

    async def on_activate(self) -> None:
        # Yield a few times so that concurrent first calls really interleave.
        for _ in range(5):
            await asyncio.sleep(0)
        self.activations += 1

    async def on_deactivate(self) -> None:
        self.deactivated = True

    async def Enter(self, request: Empty) -> Int64Value:
        """Answers how many activations this instance had when the call got in."""
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        for _ in range(5):
            await asyncio.sleep(0)
        self.inside -= 1
        return Int64Value(value=self.activations)


class Flaky(Object):
    """Its activation fails while `failures` is above zero."""

    failures: ClassVar[int] = 0

    async def on_activate(self) -> None:
        if Flaky.failures > 0:
            Flaky.failures -= 1
            raise ValueError("activation fails on purpose")

    async def Ping(self, request: Empty) -> Empty:
        return Empty()


class Broken(Object):
    """Methods that break the rules, or fail."""

    async def Crash(self, request: Empty) -> Empty:
        raise KeyError("crashes on purpose")

    async def WrongType(self, request: Empty) -> Int64Value:
        return StringValue(value="not an Int64Value")  # type: ignore[return-value]

    def Sync(self, request: Empty) -> Empty:  # not async: not callable
        return Empty()


class RefusingCounter(Object):
    """A Counter that refuses every increment."""

    type_name = "Counter"

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        raise InvalidArgument("refused on purpose")


class BadName(Object):
    type_name = "not a name"


def test_public_names() -> None:
    """The module exports exactly the testing API, and every name resolves."""
    assert sorted(goverse.testing.__all__) == [
        "HostedObject",
        "ObjectCall",
        "ObjectEnvironment",
        "Pushed",
        "Response",
        "UnansweredCallError",
    ]
    for name in goverse.testing.__all__:
        assert getattr(goverse.testing, name) is not None


async def test_a_hosted_counter_keeps_its_state_between_calls() -> None:
    """Calls reach one instance, whose state the test can read."""
    env = ObjectEnvironment()
    counter = env.create(Counter, "apples")
    assert (await counter.call("Increment", IncrementRequest(by=2), CounterValue)).value == 2
    assert (await counter.call("Increment", IncrementRequest(by=3), CounterValue)).value == 5
    assert (await counter.call("Get", GetRequest(), CounterValue)).value == 5
    assert counter.instance.state.value == 5
    assert counter.instance.id == "apples"


async def test_on_activate_runs_once_before_the_first_call() -> None:
    """Concurrent first calls activate the object exactly once, before any of them runs."""
    env = ObjectEnvironment()
    hosted = env.create(Lifecycle, "l1")
    assert not hosted.active
    results = await asyncio.gather(*(hosted.call("Enter", Empty(), Int64Value) for _ in range(5)))
    assert [result.value for result in results] == [1] * 5
    assert hosted.active


async def test_calls_to_one_object_take_turns() -> None:
    """Concurrent calls to one object never run at the same time."""
    env = ObjectEnvironment()
    hosted = env.create(Lifecycle, "l1")
    await asyncio.gather(*(hosted.call("Enter", Empty(), Int64Value) for _ in range(5)))
    assert hosted.instance.most_inside == 1


async def test_the_caller_is_who_the_test_says() -> None:
    """A client id given by the test is self.caller.client_id; no caller is the empty one,
    which the chat room refuses with INVALID_ARGUMENT."""
    env = ObjectEnvironment()
    room = env.create(ChatRoom, "lobby")
    await room.call("Join", JoinRequest(user="ann"), JoinResponse, caller=ANN)
    await room.call("Join", JoinRequest(user="bot"), JoinResponse, caller=Caller(BOB, "Bot", "b"))
    assert dict(room.instance.state.members) == {ANN: "ann", BOB: "bot"}
    with pytest.raises(InvalidArgument, match="only clients can join") as caught:
        await room.call("Join", JoinRequest(user="nobody"), JoinResponse)
    assert caught.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


async def test_pushes_are_recorded_with_their_client_ids() -> None:
    """A message sent to the chat room is pushed once to all its members."""
    env = ObjectEnvironment()
    room = env.create(ChatRoom, "lobby")
    await room.call("Join", JoinRequest(user="ann"), JoinResponse, caller=ANN)
    await room.call("Join", JoinRequest(user="bob"), JoinResponse, caller=BOB)
    reply = await room.call("Send", SendRequest(user="ann", text="hi"), SendResponse, caller=ANN)
    said = ChatMessage(room="lobby", user="ann", text="hi", seq=reply.seq)
    assert env.pushes == [Pushed(tuple(sorted((ANN, BOB))), said)]
    assert env.pushed_to(BOB) == [said]
    assert env.pushed_to("gate-c/nobody") == []


async def test_a_push_to_a_malformed_client_id_is_recorded_but_not_accepted() -> None:
    """push() answers how many ids a node would accept: "ann" has no gate part."""
    env = ObjectEnvironment()
    announcer = env.create(Announcer, "news")
    reply = await announcer.call("Notify", StringValue(value=f"{ANN},ann,{ANN}"), Int64Value)
    assert reply.value == 1
    assert env.pushes == [Pushed((ANN, "ann"), StringValue(value="news"))]


async def test_broadcasts_are_recorded() -> None:
    """A broadcast is recorded apart from pushes."""
    env = ObjectEnvironment()
    announcer = env.create(Announcer, "news")
    await announcer.call("Announce", StringValue(value="hello all"), Int64Value)
    assert env.broadcasts == [StringValue(value="hello all")]
    assert env.pushes == []


async def test_a_call_to_another_object_is_answered_by_a_registered_response() -> None:
    """A response registered for a type and method answers any id, and the call is recorded
    with the client and the calling object."""
    env = ObjectEnvironment()
    env.respond("Counter", "Increment", CounterValue(value=41))
    tallier = env.create(Tallier, "t1")
    reply = await tallier.call("Add", IncrementRequest(by=1), CounterValue, caller=ANN)
    assert reply.value == 41
    assert env.calls == [
        ObjectCall(
            Caller(ANN, "Tallier", "t1"), "Counter", "t1", "Increment", IncrementRequest(by=1)
        )
    ]


async def test_a_response_for_one_id_wins_over_one_for_the_type() -> None:
    """Responses can be computed from the request; the one registered for an id is used for
    that id only."""
    env = ObjectEnvironment()
    env.respond("Counter", "Increment", lambda request: CounterValue(value=request.by * 10))
    env.respond("Counter", "Increment", CounterValue(value=-1), object_id="special")
    assert (
        await env.create(Tallier, "t1").call("Add", IncrementRequest(by=2), CounterValue)
    ).value == 20
    assert (
        await env.create(Tallier, "special").call("Add", IncrementRequest(), CounterValue)
    ).value == -1


async def test_a_call_to_a_hosted_object_is_routed_to_it() -> None:
    """An object the environment hosts serves other objects' calls and keeps the state."""
    env = ObjectEnvironment()
    counter = env.create(Counter, "t1")
    tallier = env.create(Tallier, "t1")
    await tallier.call("Add", IncrementRequest(by=2), CounterValue)
    reply = await tallier.call("Add", IncrementRequest(by=3), CounterValue)
    assert reply.value == 5
    assert counter.instance.state.value == 5
    assert [call.method for call in env.calls] == ["Increment", "Increment"]


async def test_a_failed_call_reaches_the_calling_object_as_a_call_error() -> None:
    """A registered error, or an error of a hosted callee, is a CallError with its status
    code in the calling object, as on a node."""
    env = ObjectEnvironment()
    env.respond("Counter", "Increment", NotFound("no such counter"), object_id="gone")
    gone = env.create(Tallier, "gone")
    assert (await gone.call("AddOrSay", IncrementRequest(), StringValue)).value == "NOT_FOUND"
    env.create(RefusingCounter, "t1")
    tallier = env.create(Tallier, "t1")
    assert (await tallier.call("AddOrSay", IncrementRequest(), StringValue)).value == (
        "INVALID_ARGUMENT"
    )


async def test_an_unanswered_call_fails_the_test() -> None:
    """A call nobody answers raises UnansweredCallError out of the test's call, naming what
    to register; the call is still recorded."""
    env = ObjectEnvironment()
    tallier = env.create(Tallier, "t1")
    with pytest.raises(UnansweredCallError, match=r"Tallier/t1 called Counter/t1\.Increment"):
        await tallier.call("AddOrSay", IncrementRequest(by=1), StringValue)
    assert [call.object_type for call in env.calls] == ["Counter"]


async def test_a_call_back_into_the_call_chain_is_refused() -> None:
    """An object calling itself would wait for its own turn forever: FAILED_PRECONDITION."""
    env = ObjectEnvironment()
    tallier = env.create(Tallier, "t1")
    with pytest.raises(FailedPrecondition, match="its own call chain"):
        await tallier.call("CallSelf", Empty(), Empty)


async def test_an_error_a_method_raises_keeps_its_status_code() -> None:
    """The chat room refuses a text that is too long with INVALID_ARGUMENT."""
    env = ObjectEnvironment()
    room = env.create(ChatRoom, "lobby")
    with pytest.raises(InvalidArgument, match="longer than") as caught:
        await room.call("Send", SendRequest(user="ann", text="x" * 5000), SendResponse)
    assert caught.value.status_code is grpc.StatusCode.INVALID_ARGUMENT
    assert env.pushes == []


async def test_a_request_of_the_wrong_type_is_invalid() -> None:
    """The request is checked against the method's declared type before the method runs."""
    env = ObjectEnvironment()
    counter = env.create(Counter, "apples")
    with pytest.raises(InvalidArgument, match=r"expected goverse\.examples\.v1\.IncrementRequest"):
        await counter.call("Increment", GetRequest(), CounterValue)
    assert not counter.active


async def test_an_unknown_method_is_unimplemented() -> None:
    """A method the class does not have answers UNIMPLEMENTED, as on a node."""
    env = ObjectEnvironment()
    counter = env.create(Counter, "apples")
    with pytest.raises(Unimplemented, match="Counter has no method 'Decrement'") as caught:
        await counter.call("Decrement", IncrementRequest(), CounterValue)
    assert caught.value.status_code is grpc.StatusCode.UNIMPLEMENTED


async def test_a_method_that_breaks_the_rules_is_unimplemented_with_the_reason() -> None:
    """A node does not serve a sync method either; the test is told why."""
    env = ObjectEnvironment()
    broken = env.create(Broken, "b")
    with pytest.raises(
        Unimplemented, match=r"Broken\.Sync is not callable: it is not an async def"
    ):
        await broken.call("Sync", Empty(), Empty)


async def test_any_other_exception_is_internal_and_chained() -> None:
    """As on a node the caller sees INTERNAL; the original exception is the cause."""
    env = ObjectEnvironment()
    broken = env.create(Broken, "b")
    with pytest.raises(Internal, match=r"Broken.Crash failed \(KeyError\)") as caught:
        await broken.call("Crash", Empty(), Empty)
    assert isinstance(caught.value.__cause__, KeyError)


async def test_a_result_of_the_wrong_type_is_internal() -> None:
    """A method returning another type than it declares answers INTERNAL, as on a node."""
    env = ObjectEnvironment()
    broken = env.create(Broken, "b")
    with pytest.raises(Internal, match=r"returned StringValue, not google\.protobuf\.Int64Value"):
        await broken.call("WrongType", Empty(), Int64Value)


async def test_asking_for_another_response_type_is_a_test_error() -> None:
    """The response type the test names must be the one the method declares."""
    env = ObjectEnvironment()
    counter = env.create(Counter, "apples")
    with pytest.raises(TypeError, match=r"returns goverse\.examples\.v1\.CounterValue"):
        await counter.call("Get", GetRequest(), Int64Value)


async def test_after_a_failed_activation_the_next_call_starts_afresh() -> None:
    """The failed call answers INTERNAL; the next one activates a new instance."""
    Flaky.failures = 1
    env = ObjectEnvironment()
    flaky = env.create(Flaky, "f")
    first = flaky.instance
    with pytest.raises(Internal, match="Flaky/f failed to activate"):
        await flaky.call("Ping", Empty(), Empty)
    assert not flaky.active
    await flaky.call("Ping", Empty(), Empty)
    assert flaky.active
    assert flaky.instance is not first


async def test_deactivate_runs_on_deactivate_and_the_next_call_starts_afresh() -> None:
    """deactivate() is False before activation; after it, a new instance is activated."""
    env = ObjectEnvironment()
    hosted = env.create(Lifecycle, "l1")
    assert await hosted.deactivate() is False
    await hosted.call("Enter", Empty(), Int64Value)
    first = hosted.instance
    assert await hosted.deactivate() is True
    assert first.deactivated
    assert (await hosted.call("Enter", Empty(), Int64Value)).value == 1
    assert hosted.instance is not first


def test_a_class_the_node_would_refuse_cannot_be_hosted() -> None:
    """An invalid type name is an ObjectDefinitionError; hosting an object twice, or a
    malformed id, are refused too."""
    env = ObjectEnvironment()
    with pytest.raises(ObjectDefinitionError, match="BadName: object_type 'not a name'"):
        env.create(BadName, "x")
    env.create(Counter, "apples")
    with pytest.raises(ValueError, match="Counter/apples is already hosted"):
        env.create(Counter, "apples")
    with pytest.raises(InvalidArgument, match="object_id is empty"):
        env.create(Counter, "")


async def test_the_readme_example_passes() -> None:
    """The example under "Testing objects" in README.md runs as written."""
    section = README.read_text().split("### Testing objects", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(README), "exec"), namespace)
    await namespace["test_a_message_is_pushed_to_every_member"]()


class WhoCalls(Object):
    async def Subject(self, request: Empty) -> StringValue:
        principal = self.caller.principal
        return StringValue(value="" if principal is None else principal.subject)

    async def Relay(self, request: StringValue) -> StringValue:
        return await self.call_object("WhoCalls", request.value, "Subject", Empty(), StringValue)


async def test_a_test_can_say_whom_the_client_authenticated_as() -> None:
    """`principal=` is what ``self.caller.principal`` says; an object calling another for
    the client passes it on; without it a caller is anonymous."""
    env = ObjectEnvironment()
    one = env.create(WhoCalls, "one")
    env.create(WhoCalls, "two")
    alice = Principal("alice", {"scope": "x"})
    said = await one.call("Subject", Empty(), StringValue, caller="g/a", principal=alice)
    assert said.value == "alice"
    relayed = await one.call(
        "Relay", StringValue(value="two"), StringValue, caller="g/a", principal=alice
    )
    assert relayed.value == "alice"
    assert (await one.call("Subject", Empty(), StringValue, caller="g/a")).value == ""
