"""Pushes from objects to clients through the gates: to one, to many, to all, chat."""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import Client
from goverse.examples.v1.chat_pb2 import (
    ChatMessage,
    JoinRequest,
    JoinResponse,
    SendRequest,
    SendResponse,
)
from tests.helpers.cluster import Cluster
from tests.helpers.pushes import Inbox


async def connected(cluster: Cluster, clients: list[Client], count: int) -> list[Client]:
    new = [cluster.client() for _ in range(count)]
    clients.extend(new)
    for client in new:
        await client.connect()
    return new


async def test_push_to_the_caller(shared_cluster: Cluster, clients: list[Client]) -> None:
    (client,) = await connected(shared_cluster, clients, 1)
    inbox = Inbox(client)
    accepted = await client.call(
        "Pusher", "p1", "PushToCaller", StringValue(value="hello"), Int64Value
    )
    assert accepted.value == 1
    assert (await inbox.next(StringValue)).value == "hello"


async def test_push_to_many_reaches_exactly_those_clients(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    a, b, c = await connected(shared_cluster, clients, 3)
    inboxes = [Inbox(a), Inbox(b), Inbox(c)]
    # Pushers on both nodes, so pushes come down both nodes' streams.
    for node in shared_cluster.node_addresses:
        pusher = shared_cluster.ids_owned_by(node, "Pusher", 1, "many")[0]
        ids = f"{a.client_id},{b.client_id}"
        assert (
            await a.call("Pusher", pusher, "PushTo", StringValue(value=ids), Int64Value)
        ).value == 2
        for inbox in inboxes[:2]:
            assert (await inbox.next(StringValue)).value == pusher
    marker = StringValue(value="marker")
    await c.call("Pusher", "marker", "PushToCaller", marker, Int64Value)
    await inboxes[2].nothing_before(marker)


async def test_broadcast_reaches_every_client(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    new = await connected(shared_cluster, clients, 3)
    inboxes = [Inbox(client) for client in new]
    reply = await new[0].call("Pusher", "b", "Broadcast", StringValue(value="to all"), Int64Value)
    assert reply.value == 1  # one gate in this cluster
    for inbox in inboxes:
        got = await inbox.next(StringValue)
        while got.value != "to all":  # earlier tests' broadcasts are not ours to count
            got = await inbox.next(StringValue)


async def test_chat_room_pushes_every_message_to_every_member(
    shared_cluster: Cluster, clients: list[Client]
) -> None:
    users = await connected(shared_cluster, clients, 3)
    inboxes = [Inbox(client) for client in users]
    for index, client in enumerate(users):
        await client.call(
            "ChatRoom", "e2e-room", "Join", JoinRequest(user=f"u{index}"), JoinResponse
        )
    sent = await users[1].call(
        "ChatRoom", "e2e-room", "Send", SendRequest(user="u1", text="hi all"), SendResponse
    )
    for inbox in inboxes:
        message = await inbox.next(ChatMessage)
        assert message == ChatMessage(room="e2e-room", user="u1", text="hi all", seq=sent.seq)
    late = shared_cluster.client()
    clients.append(late)
    await late.connect()
    joined = await late.call("ChatRoom", "e2e-room", "Join", JoinRequest(user="late"), JoinResponse)
    assert [m.text for m in joined.recent_messages] == ["hi all"]


async def test_many_pushes_arrive_in_order(shared_cluster: Cluster, clients: list[Client]) -> None:
    """Pushes from one object to one client keep their order (they may arrive batched)."""
    (client,) = await connected(shared_cluster, clients, 1)
    inbox = Inbox(client)
    for n in range(200):
        await client.call("Pusher", "order", "PushToCaller", StringValue(value=str(n)), Int64Value)
    assert [int((await inbox.next(StringValue)).value) for _ in range(200)] == list(range(200))
