"""Cluster keys: key builders and parsers, JSON values, and what counts as foreign data."""

from __future__ import annotations

import pytest

from goverse.server._cluster_keys import (
    SCHEMA,
    ClusterKeys,
    ForeignData,
    KeyKind,
    encode_gate,
    encode_node,
    encode_shard,
)
from goverse.server._etcd import KeyValue
from goverse.server._membership import NodeInfo, ShardOwner

KEYS = ClusterKeys("/goverse")


def kv(key: str, value: bytes, create_revision: int = 7) -> KeyValue:
    return KeyValue(key, value, create_revision, create_revision, 0)


def test_keys_live_under_the_prefix() -> None:
    """The layout of docs/membership.md, under the prefix and a slash."""
    assert KEYS.schema == "/goverse/schema"
    assert KEYS.node("10.0.0.7:7001") == "/goverse/nodes/10.0.0.7:7001"
    assert KEYS.gate("gate-1") == "/goverse/gates/gate-1"
    assert KEYS.shard(8191) == "/goverse/shards/8191"
    assert KEYS.root == "/goverse/"


@pytest.mark.parametrize(
    "node_id", ["node-0.goverse-node.default.svc:7001", "unix:/tmp/gv-x/n 1.sock", "a%2Fb", "ü:1"]
)
def test_a_node_id_round_trips_through_its_key(node_id: str) -> None:
    """Node ids are percent-encoded in keys ('/' and '%' included, ':' kept) and parse back."""
    key = KEYS.node(node_id)
    assert "/" not in key.removeprefix(KEYS.nodes)
    entry = KEYS.parse(key)
    assert (entry.kind, entry.name) == (KeyKind.NODE, node_id)


def test_values_decode_to_what_was_encoded() -> None:
    """A node key gives its NodeInfo, a gate key its GateInfo, a shard key its owner with
    the key's create revision as the epoch; the schema key must say goverse/1."""
    node = KEYS.decode(kv(KEYS.node("n:1"), encode_node("10.0.0.1:7001", "7e57")))
    assert node.node == NodeInfo("n:1", "10.0.0.1:7001", "7e57")
    gate = KEYS.decode(kv(KEYS.gate("g1"), encode_gate("10.0.0.2:7100")))
    assert gate.gate is not None
    assert gate.gate.address == "10.0.0.2:7100"
    shard = KEYS.decode(kv(KEYS.shard(42), encode_shard("n:1", "7e57"), create_revision=99))
    assert (shard.kind, shard.shard, shard.owner) == (
        KeyKind.SHARD,
        42,
        ShardOwner("n:1", "7e57", 99),
    )
    assert KEYS.decode(kv(KEYS.schema, SCHEMA)).kind is KeyKind.SCHEMA


def test_a_leaving_node_says_so_and_a_node_that_is_not_writes_what_older_versions_wrote() -> None:
    """The leaving flag is written only while a node leaves, so every other node key holds
    the bytes older versions wrote and read; a key without it reads as not leaving."""
    assert encode_node("a:1", "7e57") == b'{"address":"a:1","incarnation":"7e57"}'
    leaving = encode_node("a:1", "7e57", leaving=True)
    assert leaving == b'{"address":"a:1","incarnation":"7e57","leaving":true}'
    assert KEYS.decode(kv(KEYS.node("a:1"), leaving)).node == NodeInfo(
        "a:1", "a:1", "7e57", leaving=True
    )
    node = KEYS.decode(kv(KEYS.node("a:1"), encode_node("a:1", "7e57"))).node
    assert node is not None
    assert not node.leaving


def test_an_owner_always_encodes_to_the_same_bytes() -> None:
    """A release deletes a shard key only if it holds exactly the owner's bytes: the
    encoding is canonical (sorted keys, no spaces)."""
    assert encode_shard("n:1", "7e57") == b'{"incarnation":"7e57","node":"n:1"}'
    assert encode_shard("n:1", "7e57") == encode_shard("n:1", "7e57")


def test_fields_a_reader_does_not_know_are_ignored() -> None:
    """A later version may add fields to a value: this one reads what it knows."""
    value = b'{"address":"a:1","incarnation":"1","zone":"eu-1"}'
    assert KEYS.decode(kv(KEYS.node("a:1"), value)).node == NodeInfo("a:1", "a:1", "1")


@pytest.mark.parametrize(
    "key",
    [
        "/goverse/leader",
        "/goverse/shard/1",
        "/goverse/shards/8192",
        "/goverse/shards/007",
        "/goverse/shards/-1",
        "/goverse/shards/\u00b2",
        "/goverse/shards/",
        "/goverse/nodes/",
        "/goverse/nodes/a/b",
        "/goverse/nodes/a%3Ab",
        "/goverse/gates/x/y",
        "/goverse/schema/x",
        "/goverse2/nodes/a",
    ],
)
def test_keys_goverse_does_not_write_are_foreign(key: str) -> None:
    """Other layouts (goverse Go's leader and shard/ keys), shard numbers out of range or
    not canonical, ids not encoded as goverse encodes them: ForeignData naming the key."""
    with pytest.raises(ForeignData) as raised:
        KEYS.parse(key)
    assert raised.value.key == key


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (KEYS.schema, b"goverse/2"),
        (KEYS.node("a:1"), b"10.0.0.1:7001"),
        (KEYS.node("a:1"), b'{"address":"a:1"}'),
        (KEYS.node("a:1"), b'["a:1","1"]'),
        (KEYS.node("a:1"), b'{"address":"a:1","incarnation":"1","leaving":"yes"}'),
        (KEYS.shard(1), b"a:1,a:1"),
        (KEYS.shard(2), b"a:1,a:1"),
        (KEYS.shard(1), b'{"node":"","incarnation":"1"}'),
        (KEYS.gate("g"), b"\xff"),
        (KEYS.gate("g"), b"[" * 100_000 + b"]" * 100_000),
        (KEYS.node("a:1"), b'{"address":"\\ud800:7000","incarnation":"1"}'),
        # Past Python's limit on the digits of an int: json raises a plain ValueError.
        (KEYS.node("a:1"), b'{"address":"a:1","incarnation":"1","zone":' + b"1" * 5000 + b"}"),
        (KEYS.shard(3), b'{"node":"a:1","incarnation":' + b"9" * 5000 + b"}"),
    ],
)
def test_values_goverse_does_not_write_are_foreign(key: str, value: bytes) -> None:
    """Another schema, values that are not JSON objects or lack a field: ForeignData."""
    with pytest.raises(ForeignData) as raised:
        KEYS.decode(kv(key, value))
    assert raised.value.key == key


def test_a_prefix_must_look_like_one() -> None:
    """The prefix starts with a slash and does not end with one (--etcd-prefix checks the
    rest)."""
    for prefix in ("goverse", "/goverse/"):
        with pytest.raises(ValueError, match="prefix"):
            ClusterKeys(prefix)
    with pytest.raises(ValueError, match="shard"):
        KEYS.shard(8192)
