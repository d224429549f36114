"""EtcdView against a real etcd: nodes and owners follow etcd, foreign data, readiness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import grpc
import pytest
import structlog
from aetcd import rpc

from goverse.placement import Placement
from goverse.server._cluster_keys import (
    SCHEMA,
    ClusterKeys,
    ForeignData,
    encode_node,
    encode_shard,
)
from goverse.server._etcd import EtcdClient, EtcdUnavailable, KeyValue
from goverse.server._etcd_view import EtcdView
from goverse.server._membership import ClusterView, NodeInfo
from goverse.transport import Backoff
from tests.helpers.etcd import EtcdServer, etcd_members
from tests.helpers.tasks import cancel_and_wait
from tests.integration.etcd.conftest import TIMEOUT

PREFIX = "/goverse"
KEYS = ClusterKeys(PREFIX)
TTL = timedelta(seconds=2)


async def until(view: EtcdView, holds: Callable[[], bool], timeout: float = 10.0) -> None:
    """Waits, on the view's version, until `holds()` (bounded)."""
    async with asyncio.timeout(timeout):
        version = view.version
        while not holds():
            version = await view.changed(version)


class Node:
    """A node as etcd sees it: a lease, its node key, the shard keys it created."""

    def __init__(self, client: EtcdClient, node_id: str, lease: int) -> None:
        self.client = client
        self.node_id = node_id
        self.lease = lease
        self.incarnation = f"{lease:x}"

    @classmethod
    async def join(cls, client: EtcdClient, node_id: str, ttl: int = 30) -> Node:
        node = cls(client, node_id, await client.grant(ttl))
        await client.put(
            KEYS.node(node_id), encode_node(f"addr-of-{node_id}", node.incarnation), node.lease
        )
        return node

    async def start_leaving(self) -> None:
        """Puts its node key again, on its lease, marked leaving (what a stopping node does)."""
        value = encode_node(f"addr-of-{self.node_id}", self.incarnation, leaving=True)
        await self.client.put(KEYS.node(self.node_id), value, self.lease)

    async def claim(self, shards: range | list[int]) -> dict[str, KeyValue]:
        value = encode_shard(self.node_id, self.incarnation)
        return await self.client.create_many(
            {KEYS.shard(shard): value for shard in shards}, self.lease
        )


def make_view(client: EtcdClient) -> EtcdView:
    return EtcdView(
        client,
        PREFIX,
        lease_ttl=TTL,
        backoff=Backoff(timedelta(milliseconds=20), timedelta(milliseconds=200)),
    )


@pytest.fixture
async def view(client: EtcdClient) -> AsyncIterator[EtcdView]:
    """A started EtcdView of the test's etcd, its watch loop running; cancelled after."""
    view = make_view(client)
    await view.start()
    run = asyncio.get_running_loop().create_task(view.run(), name="view")
    try:
        yield view
    finally:
        await cancel_and_wait(run)


async def test_the_view_is_a_cluster_view(client: EtcdClient) -> None:
    """EtcdView implements the ClusterView protocol routing codes against."""
    view: ClusterView = make_view(client)
    assert view.version == 0


async def test_start_on_an_empty_prefix_writes_the_schema_and_is_ready(
    client: EtcdClient,
) -> None:
    """A first process finds nothing, writes schema = goverse/1, and is ready with no node:
    no owner, no target."""
    view = make_view(client)
    assert not view.ready
    await view.start()
    schema = await client.get(KEYS.schema)
    assert schema is not None
    assert schema.value == SCHEMA
    assert view.ready
    assert view.loaded
    assert dict(view.nodes()) == {}
    assert view.owner(0) is None
    assert view.owner_address(0) is None
    assert view.target(0) is None
    await make_view(client).start()  # a second process accepts the schema


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("/goverse/leader", b"node-1"),
        ("/goverse/shard/12", b"a,b"),
        (KEYS.schema, b"goverse/2"),
        (KEYS.node("a:1"), b"not json"),
    ],
)
async def test_a_prefix_holding_foreign_data_is_refused_naming_the_key(
    client: EtcdClient, key: str, value: bytes
) -> None:
    """A key that is not goverse's (goverse Go's layout, another schema, an unreadable value)
    makes start raise ForeignData naming it, and nothing is written."""
    revision = await client.put(key, value)
    with pytest.raises(ForeignData) as raised:
        await make_view(client).start()
    assert raised.value.key == key
    assert (await client.get_prefix(KEYS.root))[0] == revision


async def test_nodes_and_owners_follow_puts_and_deletes(view: EtcdView, client: EtcdClient) -> None:
    """Node keys make live nodes; a shard key makes its node the owner, with the key's create
    revision as the epoch and the node's address to route to; a deleted shard key leaves the
    shard without an owner, and a deleted node key leaves its shards without one too."""
    one = await Node.join(client, "n1:7001")
    two = await Node.join(client, "n2:7001")
    await until(view, lambda: len(view.nodes()) == 2)
    assert view.nodes()["n1:7001"] == NodeInfo("n1:7001", "addr-of-n1:7001", one.incarnation)
    created = await one.claim(range(0, 10))
    await two.claim(range(10, 20))
    await until(view, lambda: view.owner(19) is not None)
    owner = view.owner(3)
    assert owner is not None
    assert (owner.node_id, owner.incarnation) == ("n1:7001", one.incarnation)
    assert owner.epoch == created[KEYS.shard(3)].create_revision
    assert view.owner_address(3) == "addr-of-n1:7001"
    assert view.owner_address(15) == "addr-of-n2:7001"
    assert view.owner(20) is None
    await client.delete(KEYS.shard(3))
    await until(view, lambda: view.owner(3) is None)
    await client.delete(KEYS.node("n2:7001"))
    await until(view, lambda: "n2:7001" not in view.nodes())
    assert all(view.owner(shard) is None for shard in range(10, 20))
    assert view.owner(4) is not None


async def test_an_expired_lease_takes_its_node_and_its_shards_in_one_change(
    view: EtcdView, client: EtcdClient
) -> None:
    """When a node's lease expires, etcd deletes its node key and its shard keys in one
    revision: the view drops them together, in one version."""
    survivor = await Node.join(client, "n1:7001")
    doomed = await Node.join(client, "n2:7001", ttl=1)
    await doomed.claim(range(100))
    await survivor.claim(range(100, 110))
    await until(view, lambda: view.owner(99) is not None and view.owner(109) is not None)
    seen: list[tuple[bool, bool]] = []
    version = view.version
    async with asyncio.timeout(10):
        while "n2:7001" in view.nodes() or view.owner(0) is not None:
            version = await view.changed(version)
            seen.append(("n2:7001" in view.nodes(), view.owner(0) is not None))
    assert seen[-1] == (False, False)
    assert (True, False) not in seen
    assert all(view.owner(shard) is None for shard in range(100))
    assert view.owner(105) is not None
    assert list(view.nodes()) == ["n1:7001"]


async def test_the_shards_whose_keys_went_are_handed_out_once(
    view: EtcdView, client: EtcdClient
) -> None:
    """take_freed names the shards whose keys the watch saw deleted since the last call (a
    release, an expired lease), each once, from its first call on (a gate never calls it and
    keeps nothing); a key created or rewritten frees nothing."""
    one = await Node.join(client, "n1:7001")
    await one.claim(range(10))
    await until(view, lambda: view.claim(9) is not None)
    assert view.take_freed() == set()  # counting starts here
    await client.delete(KEYS.shard(3))
    await client.delete(KEYS.shard(7))
    await one.claim([20])
    await until(view, lambda: view.claim(20) is not None)
    assert view.take_freed() == {3, 7}
    assert view.take_freed() == set()
    await client.revoke(one.lease)
    await until(view, lambda: view.claim(0) is None)
    assert view.take_freed() == {0, 1, 2, 4, 5, 6, 8, 9, 20}


async def test_a_shard_key_of_an_older_incarnation_is_no_owner(
    view: EtcdView, client: EtcdClient
) -> None:
    """A node that restarted has a new incarnation; the shard keys of its former run (on the
    old lease, until it expires) name no owner."""
    old = await Node.join(client, "n1:7001")
    await old.claim([5])
    await until(view, lambda: view.owner(5) is not None)
    new = await Node.join(client, "n1:7001")
    await until(view, lambda: view.nodes()["n1:7001"].incarnation == new.incarnation)
    assert view.owner(5) is None
    assert view.claim(5) is not None
    assert view.target(5) == "n1:7001"


async def test_targets_are_rendezvous_over_the_live_node_ids(
    view: EtcdView, client: EtcdClient
) -> None:
    """target is the placement function over the live node ids, recomputed as they change."""
    nodes = ["n1:7001", "n2:7001", "n3:7001"]
    for node_id in nodes:
        await Node.join(client, node_id)
    await until(view, lambda: len(view.nodes()) == 3)
    placement = Placement(nodes)
    assert all(view.target(s) == placement.node_for_shard(s) for s in range(0, 8192, 97))
    await client.delete(KEYS.node("n2:7001"))
    await until(view, lambda: len(view.nodes()) == 2)
    placement = Placement(["n1:7001", "n3:7001"])
    assert all(view.target(s) == placement.node_for_shard(s) for s in range(0, 8192, 97))


async def test_a_leaving_node_is_no_target_but_still_owns_what_it_holds(
    view: EtcdView, client: EtcdClient
) -> None:
    """A node whose key is marked leaving drops out of the targets at once (rendezvous over
    the nodes that stay: its shards go where they go when it has left), while it stays a
    live node and the owner of the shards it still holds, so routing keeps sending their
    calls to it. Only when its key is deleted is it gone, and its shards with it."""
    nodes = ["n1:7001", "n2:7001", "n3:7001"]
    joined = [await Node.join(client, node_id) for node_id in nodes]
    leaver = joined[1]
    held = [s for s in range(0, 8192, 97) if Placement(nodes).node_for_shard(s) == "n2:7001"]
    await leaver.claim(held)
    await until(view, lambda: len(view.nodes()) == 3 and view.owner(held[-1]) is not None)
    assert any(view.target(s) == "n2:7001" for s in held)

    with structlog.testing.capture_logs() as logs:
        await leaver.start_leaving()
        await until(view, lambda: view.nodes()["n2:7001"].leaving)
    staying = Placement(["n1:7001", "n3:7001"])
    assert all(view.target(s) == staying.node_for_shard(s) for s in range(8192))
    assert all(view.owner_address(s) == "addr-of-n2:7001" for s in held)
    assert sorted(view.nodes()) == nodes
    changes = [line for line in logs if line["event"] == "cluster membership changed"]
    assert [(line["leaving"], line["left"], line["nodes"]) for line in changes] == [
        (["n2:7001"], [], 3)
    ]

    await client.delete(KEYS.node("n2:7001"))
    await until(view, lambda: "n2:7001" not in view.nodes())
    assert all(view.owner(s) is None for s in held)
    assert all(view.target(s) == staying.node_for_shard(s) for s in range(0, 8192, 7))


async def test_a_change_wakes_whoever_waits_for_the_next_version(
    view: EtcdView, client: EtcdClient
) -> None:
    """changed(version) returns as soon as a change arrives, with a higher version."""
    version = view.version
    waiter = asyncio.ensure_future(view.changed(version))
    await asyncio.sleep(0)
    assert not waiter.done()
    await Node.join(client, "n1:7001")
    async with asyncio.timeout(10):
        assert await waiter > version


async def test_the_view_is_not_ready_after_a_ttl_without_etcd_and_ready_again_when_it_returns(
    view: EtcdView, client: EtcdClient, etcd: EtcdServer
) -> None:
    """With etcd killed, the view keeps its map and stays ready until a lease TTL after etcd
    last spoke, then turns not ready (a version bump wakes waiters); when etcd is back it
    reads etcd again, is ready again and follows new changes."""
    await Node.join(client, "n1:7001", ttl=60)
    await until(view, lambda: len(view.nodes()) == 1)
    loop = asyncio.get_running_loop()
    etcd.kill()
    killed_at = loop.time()
    await until(view, lambda: not view.ready, timeout=TTL.total_seconds() + 10)
    # A TTL after etcd last spoke: at most a quiet timeout (a progress report) before the kill.
    assert loop.time() - killed_at >= TTL.total_seconds() - client.timeout
    assert list(view.nodes()) == ["n1:7001"]  # routing goes on with the last map
    await etcd.start()
    await until(view, lambda: view.ready)
    await Node.join(client, "n2:7001")
    await until(view, lambda: len(view.nodes()) == 2)
    assert view.stats.watch_reconnects >= 1


async def test_a_frozen_etcd_makes_the_view_not_ready_about_a_ttl_after_it_froze(
    view: EtcdView, client: EtcdClient, etcd: EtcdServer
) -> None:
    """With etcd paused, the watch hangs without breaking: the view notices the silence and
    turns not ready a TTL after etcd last spoke (it asks for progress every quiet timeout),
    not a TTL after noticing; resumed, it is ready again."""
    await Node.join(client, "n1:7001", ttl=60)
    await until(view, lambda: len(view.nodes()) == 1)
    loop = asyncio.get_running_loop()
    etcd.pause()
    try:
        paused_at = loop.time()
        await until(view, lambda: not view.ready, timeout=TTL.total_seconds() + 10)
        elapsed = loop.time() - paused_at
    finally:
        etcd.resume()
    timeout = client.timeout
    assert TTL.total_seconds() - timeout <= elapsed <= TTL.total_seconds() + timeout + 0.5
    await until(view, lambda: view.ready)


async def test_a_view_on_a_member_cut_off_from_its_cluster_is_not_ready_a_ttl_later() -> None:
    """Three etcd members; the view's client knows only the first. The two others freeze:
    the first has no leader any more and sees none of the changes the others would make, yet
    it keeps the watch open and answers its progress requests. The watch must require a
    leader (etcd then cancels it), so that the view, which cannot read again there, stops
    being ready about a TTL later instead of routing on that member's frozen map for good."""
    async with etcd_members() as members, EtcdClient([members[0].endpoint], TIMEOUT) as client:
        view = make_view(client)
        await view.start()
        run = asyncio.get_running_loop().create_task(view.run(), name="view")
        try:
            assert view.ready
            for member in members[1:]:
                member.pause()
            await until(view, lambda: not view.ready, timeout=20.0)
            assert view.stats.watch_reconnects >= 1
        finally:
            await cancel_and_wait(run)


async def test_a_view_started_without_etcd_loads_once_etcd_is_there(
    client: EtcdClient, etcd: EtcdServer
) -> None:
    """start fails while etcd is down; run keeps trying and loads the view when etcd comes
    back, and the view is ready then."""
    await Node.join(client, "n1:7001", ttl=60)
    await etcd.stop()
    view = make_view(client)
    with pytest.raises(EtcdUnavailable):
        await view.start()
    run = asyncio.get_running_loop().create_task(view.run(), name="view")
    try:
        assert not view.ready
        await etcd.start()
        await until(view, lambda: view.ready)
        assert list(view.nodes()) == ["n1:7001"]
    finally:
        await cancel_and_wait(run)


async def test_a_compacted_resume_revision_makes_the_view_read_everything_again(
    client: EtcdClient, etcd: EtcdServer
) -> None:
    """When the revision to watch from was compacted away, the view reads the prefix again
    and follows from there."""
    view = make_view(client)
    await view.start()
    await Node.join(client, "n1:7001")
    latest = await client.put(KEYS.node("n2:7001"), encode_node("addr-of-n2:7001", "1"))
    await etcd.compact(latest)
    run = asyncio.get_running_loop().create_task(view.run(), name="view")
    try:
        await until(view, lambda: len(view.nodes()) == 2)
        assert view.stats.compactions == 1
        assert view.revision >= latest
    finally:
        await cancel_and_wait(run)


async def test_a_foreign_key_written_while_running_is_ignored_and_counted(
    view: EtcdView, client: EtcdClient
) -> None:
    """Foreign data refused at start is only ignored once running (refusing it would stop a
    running cluster); the view goes on following our keys."""
    await client.put("/goverse/leader", b"someone")
    await Node.join(client, "n1:7001")
    await until(view, lambda: len(view.nodes()) == 1)
    assert view.stats.foreign_keys == 1


async def put_raw(etcd: EtcdServer, key: bytes, value: bytes) -> None:
    """Writes a key as any program may, bytes that need not be UTF-8 (our client writes
    text keys only)."""
    async with grpc.aio.insecure_channel(etcd.endpoint) as channel:
        await rpc.KVStub(channel).Put(rpc.PutRequest(key=key, value=value), timeout=5)


async def test_a_key_that_is_not_utf8_is_foreign_data_not_the_end_of_the_view(
    view: EtcdView, client: EtcdClient, etcd: EtcdServer
) -> None:
    """Keys are bytes to etcd: another program's key that is not UTF-8, written while the
    view runs, is ignored and counted like any foreign key (it used to raise
    UnicodeDecodeError out of the watch loop, which left the view stale and ready for good);
    at start it is ForeignData, the one error line and exit code 2 of foreign data."""
    await put_raw(etcd, b"/goverse/\xff", b"someone")
    await Node.join(client, "n1:7001")
    await until(view, lambda: len(view.nodes()) == 1)
    assert view.stats.foreign_keys == 1
    with pytest.raises(ForeignData):
        await make_view(client).start()


async def test_one_info_line_per_membership_change_and_none_per_shard(
    view: EtcdView, client: EtcdClient
) -> None:
    """A node joining and claiming 500 shards logs one membership line; a node leaving logs
    one; shard changes log nothing."""
    with structlog.testing.capture_logs() as logs:
        one = await Node.join(client, "n1:7001")
        await one.claim(range(500))
        await until(view, lambda: view.owner(499) is not None)
        await client.delete(KEYS.node("n1:7001"))
        await until(view, lambda: not view.nodes())
    lines = [line for line in logs if line["log_level"] == "info"]
    assert [(line["event"], line["joined"], line["left"]) for line in lines] == [
        ("cluster membership changed", ["n1:7001"], []),
        ("cluster membership changed", [], ["n1:7001"]),
    ]
    assert lines[0]["nodes"] == 1
