"""Cluster keys: where goverse keeps its membership in etcd and what the values say, in one place.

Under the prefix (``--etcd-prefix``, default ``/goverse``; docs/membership.md)::

    <prefix>/schema              goverse/1                             no lease
    <prefix>/nodes/<node-id>     {"address": ..., "incarnation": ...}  the node's lease
                                 (+ "leaving": true while it leaves)
    <prefix>/gates/<gate-id>     {"address": ...}                      the gate's lease
    <prefix>/shards/<n>          {"incarnation": ..., "node": ...}     the owner's lease

Ids are percent-encoded in keys (``:`` is left as it is, ``/`` and ``%`` are not); a shard is
its decimal number, 0 to 8191. Values are JSON objects written with sorted keys and no spaces,
so the same owner always encodes to the same bytes (a release deletes the shard key only if
it still holds exactly those). Readers ignore fields they do not know: a node key's
``leaving`` flag, written only while the node leaves, reads as a plain live node to a version
that predates it (that version's nodes then wait for the key to go before claiming the
leaving node's shards, as they always did). A shard key's create revision is its ownership
epoch.

Everything that reads or writes these keys — the view, the node's registration and its shard
ownership — builds and parses them here.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from goverse import wire
from goverse.placement import SHARD_COUNT
from goverse.server._etcd import KeyValue
from goverse.server._membership import NodeInfo, ShardOwner
from goverse.server._values import ascii_digits

SHARD_HOLDERS_CACHED = 256
"""Distinct shard key values whose decoding a process keeps (one per node incarnation)."""
SCHEMA = b"goverse/1"
"""The value of the ``schema`` key: the layout this code reads and writes."""


class ForeignData(ValueError):
    """A key under the prefix that is not one of ours, or a value we cannot read: the prefix
    holds someone else's data (or another schema's). `key` names the first such key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class KeyKind(enum.Enum):
    SCHEMA = "schema"
    NODE = "nodes"
    GATE = "gates"
    SHARD = "shards"


@dataclass(frozen=True, slots=True)
class GateInfo:
    """A registered gate (for operators: nothing routes by it)."""

    gate_id: str
    address: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One of our keys, parsed: what it names and, when decoded from a put, what it holds."""

    kind: KeyKind
    name: str = ""
    """The node id or gate id it names (decoded)."""
    shard: int = -1
    """The shard it names."""
    node: NodeInfo | None = None
    gate: GateInfo | None = None
    owner: ShardOwner | None = None
    """The shard's owner, its epoch being the key's create revision."""


def _encode(fields: Mapping[str, str | bool]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def encode_node(address: str, incarnation: str, *, leaving: bool = False) -> bytes:
    """The value of a node key; `leaving` marks a node that is handing its shards off before
    it stops (absent otherwise, so a node that is not leaving writes what older versions
    wrote)."""
    fields: dict[str, str | bool] = {"address": address, "incarnation": incarnation}
    if leaving:
        fields["leaving"] = True
    return _encode(fields)


def encode_gate(address: str) -> bytes:
    """The value of a gate key."""
    return _encode({"address": address})


def encode_shard(node_id: str, incarnation: str) -> bytes:
    """The value of a shard key owned by that run of that node: always the same bytes."""
    return _encode({"incarnation": incarnation, "node": node_id})


def _object(key: str, value: bytes) -> dict[str, Any]:
    """The JSON object a value holds, or ForeignData."""
    try:
        decoded: Any = json.loads(value)
    # ValueError: not UTF-8, not JSON (JSONDecodeError), or an int past Python's limit on
    # digits (a plain ValueError); RecursionError: nested past the stack.
    except (ValueError, RecursionError):
        raise ForeignData(key, "the value is not JSON") from None
    if not isinstance(decoded, dict):
        raise ForeignData(key, "the value is not a JSON object")
    return decoded


def _fields(key: str, decoded: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The string fields `names` of a decoded value, or ForeignData."""
    fields = []
    for name in names:
        field = decoded.get(name)
        if not isinstance(field, str) or not field or not wire.is_text(field):
            raise ForeignData(key, f"the value has no {name!r} string")
        fields.append(field)
    return fields


@functools.lru_cache(maxsize=SHARD_HOLDERS_CACHED)
def _shard_holder(value: bytes) -> tuple[str, str]:
    """The node id and incarnation a shard key's value names, or ForeignData (its key left
    blank). Cached: thousands of shard keys hold the same few values, and a scale streams
    them to every gate and node at once."""
    node_id, incarnation = _fields("", _object("", value), ("node", "incarnation"))
    return node_id, incarnation


def _flag(key: str, decoded: dict[str, Any], name: str) -> bool:
    """The optional boolean field `name` of a decoded value (absent: False), or ForeignData."""
    field = decoded.get(name, False)
    if not isinstance(field, bool):
        raise ForeignData(key, f"the value's {name!r} is not a boolean")
    return field


class ClusterKeys:
    """The keys of one cluster, under `prefix` (``/goverse``, as ``--etcd-prefix`` checks it)."""

    def __init__(self, prefix: str) -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"{prefix!r} is not a key prefix like /goverse")
        self.prefix = prefix
        self.root = prefix + "/"
        """What every key of the cluster starts with: read and watch this."""
        self.schema = self.root + "schema"
        self.nodes = self.root + "nodes/"
        self.gates = self.root + "gates/"
        self.shards = self.root + "shards/"

    def node(self, node_id: str) -> str:
        return self.nodes + _encode_id(node_id)

    def gate(self, gate_id: str) -> str:
        return self.gates + _encode_id(gate_id)

    def shard(self, shard: int) -> str:
        if not 0 <= shard < SHARD_COUNT:
            raise ValueError(f"shard {shard} is not in 0..{SHARD_COUNT - 1}")
        return f"{self.shards}{shard}"

    def parse(self, key: str) -> Entry:
        """What the key names (no value); ForeignData when it is not one of ours."""
        if key == self.schema:
            return Entry(KeyKind.SCHEMA)
        if not key.startswith(self.root):
            raise ForeignData(key, f"not under {self.root}")
        kind, sep, name = key[len(self.root) :].partition("/")
        if not sep or not name:
            raise ForeignData(key, "not a key goverse writes")
        if kind == KeyKind.SHARD.value:
            if not ascii_digits(name) or str(int(name)) != name or int(name) >= SHARD_COUNT:
                raise ForeignData(key, f"not a shard number in 0..{SHARD_COUNT - 1}")
            return Entry(KeyKind.SHARD, shard=int(name))
        if kind in (KeyKind.NODE.value, KeyKind.GATE.value):
            decoded = unquote(name)
            if _encode_id(decoded) != name:
                raise ForeignData(key, "the id is not percent-encoded as goverse encodes it")
            return Entry(KeyKind(kind), name=decoded)
        raise ForeignData(key, "not a key goverse writes")

    def decode(self, kv: KeyValue) -> Entry:
        """The key and what it holds; ForeignData when either is not ours."""
        entry = self.parse(kv.key)
        match entry.kind:
            case KeyKind.SCHEMA:
                if kv.value != SCHEMA:
                    raise ForeignData(
                        kv.key, f"schema {kv.value!r}, not {SCHEMA.decode()!r} (another version?)"
                    )
                return entry
            case KeyKind.NODE:
                decoded = _object(kv.key, kv.value)
                address, incarnation = _fields(kv.key, decoded, ("address", "incarnation"))
                leaving = _flag(kv.key, decoded, "leaving")
                node = NodeInfo(entry.name, address, incarnation, leaving)
                return Entry(KeyKind.NODE, name=entry.name, node=node)
            case KeyKind.GATE:
                [address] = _fields(kv.key, _object(kv.key, kv.value), ("address",))
                return Entry(KeyKind.GATE, name=entry.name, gate=GateInfo(entry.name, address))
            case KeyKind.SHARD:
                try:
                    node_id, incarnation = _shard_holder(kv.value)
                except ForeignData as error:
                    raise ForeignData(kv.key, error.reason) from None
                owner = ShardOwner(node_id, incarnation, kv.create_revision)
                return Entry(KeyKind.SHARD, shard=entry.shard, owner=owner)


def _encode_id(name: str) -> str:
    # ':' stays readable (ids are host:port); '/' would split the key, '%' must round-trip.
    return quote(name, safe=":")
