"""etcd client: our small asyncio client over etcd's gRPC API (KV, Lease, Watch) with failover.

It uses only the generated stubs of the ``aetcd`` package (``aetcd.rpc``), not its high-level
client: that one runs tasks nobody owns, bounds calls with ``asyncio.wait_for`` (which loses
cancellations on 3.11, gh-86296), knows one endpoint and keeps no lease alive.

Every call is bounded by the client's timeout (``--etcd-timeout``) and tries the endpoints in
order, starting from the last one that answered; the time is shared between the endpoints
still to try, so a frozen member cannot take a whole request's time. Errors are translated in
one place, :meth:`EtcdClient._translate`; a call raises only these (and ``CancelledError``)::

    EtcdError                 etcd refused the request (.code: the gRPC status, when there is one)
     ├── EtcdUnavailable      no endpoint answered in time: refused, unreachable, timed out, or a
     │                        watch stream broke or fell silent. Retry later; a write's outcome
     │                        is unknown (the writes below say how to find it out)
     ├── EtcdCompacted        the revision asked for is compacted (.compact_revision): read again
     ├── EtcdLeaseNotFound    the lease expired or was revoked
     └── EtcdClosed           the client was closed

Keys are text (UTF-8; a byte that is not is read as U+FFFD), values bytes. A revision is
etcd's store version: it grows by one with every write transaction, and every key remembers
the revision that created it (``create_revision``) and last changed it (``mod_revision``).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import structlog
from aetcd import rpc

from goverse.transport import DEFAULT_KEEPALIVE, Keepalive, channel_options

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAX_TXN_OPS = 128
"""Operations per transaction etcd accepts by default (``--max-txn-ops``)."""
RANGE_PAGE = 1000
"""Keys per page of :meth:`EtcdClient.get_prefix`, far below the message-size limit."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Receive limit of our etcd channels: a watch response carries every event of a revision, and
a node that dies deletes up to 8192 shard keys in one."""

_RETRY_ELSEWHERE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
"""Statuses that say "this endpoint did not answer": the next endpoint may."""
_READY = {"wait_for_ready": True}
"""Every call waits for its channel to connect (within its timeout) instead of failing while
the channel sits in reconnect backoff after etcd came back."""
_REQUIRE_LEADER = (("hasleader", "true"),)
"""Metadata of a watch: etcd cancels it when its member has lost its leader (etcd's own
client's ``WithRequireLeader``). A member cut off from the others' quorum keeps a watch open
and answers its progress requests, so the watch would otherwise look alive while it misses
every change the rest of the cluster makes; cancelled, the view reads again elsewhere."""


class EtcdError(Exception):
    """etcd refused a request, or could not be asked (see the subclasses)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time, or a watch stream broke: retry later. A write may or may
    not have been applied."""


class EtcdCompacted(EtcdError):
    """The revision a watch or read asked for is compacted: read the current state again."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message, grpc.StatusCode.OUT_OF_RANGE)
        self.compact_revision = compact_revision
        """The oldest revision still available (0 when etcd did not say)."""


class EtcdLeaseNotFound(EtcdError):
    """The lease named in a request expired or was revoked."""


class EtcdClosed(EtcdError):
    """The client was closed."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key as etcd holds it. For a deletion event, only `key` and `mod_revision` (the
    revision of the deletion) are set."""

    key: str
    value: bytes
    create_revision: int
    """The revision that created the key; it changes only when the key is deleted and created
    again, so it identifies one life of the key (our ownership epoch)."""
    mod_revision: int
    lease: int
    """The lease the key is attached to; 0: none."""


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """The events of one watch response, in revision order: whole revisions, never part of one."""

    revision: int
    """The revision of the last event: a watch resumed from ``revision + 1`` misses nothing.
    (Not the response header's revision, which can run ahead of the events delivered.)"""
    events: tuple[WatchEvent, ...]


def prefix_range_end(prefix: bytes) -> bytes:
    """The end (exclusive) of the key range of every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(
        # etcd keys are bytes: another program's need not be UTF-8. Replaced, such a key is
        # still a key (never one of ours, which are UTF-8) for readers to judge as foreign.
        key=kv.key.decode(errors="replace"),
        value=bytes(kv.value),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
        lease=int(kv.lease),
    )


def _fill_create(txn: Any, key: bytes, value: bytes, lease: int) -> None:
    """Makes `txn` ``if create_revision(key) == 0 (absent): put; else: read it`` (the read tells
    our own earlier write, whose reply was lost, from someone else's). Filled in place: building
    the messages and copying them in costs four times as much, a third of a second for 8192."""
    compare = txn.compare.add()
    compare.key = key
    compare.target = rpc.Compare.CREATE
    compare.result = rpc.Compare.EQUAL
    compare.create_revision = 0
    put = txn.success.add().request_put
    put.key = key
    put.value = value
    put.lease = lease
    txn.failure.add().request_range.key = key


def _created(key: str, value: bytes, lease: int, reply: Any, revision: int) -> KeyValue | None:
    """The outcome of one :func:`_fill_create` transaction: the key, when this call or an
    earlier one with the same value and lease created it; None when it holds something else."""
    if reply.succeeded:
        return KeyValue(key, value, revision, revision, lease)
    existing = reply.responses[0].response_range.kvs
    if existing and existing[0].value == value and existing[0].lease == lease:
        return _key_value(existing[0])
    return None


def etcd_channel_options(keepalive: Keepalive = DEFAULT_KEEPALIVE) -> list[tuple[str, Any]]:
    """Our channel options (keepalive detects a dead peer) with two etcd-specific changes."""
    options = dict(channel_options(MAX_MESSAGE_BYTES, keepalive))
    # etcd's servers take pings only on a connection with a call in flight (grpc-go's default
    # enforcement, PermitWithoutStream false) and end a connection that sends more with GOAWAY
    # too_many_pings. A dead server matters only while we wait for it, so ping only then.
    options["grpc.keepalive_permit_without_calls"] = 0
    return list(options.items())


@dataclass
class _Stubs:
    channel: grpc.aio.Channel
    kv: Any
    lease: Any
    watch: Any


class EtcdClient:
    """An etcd client over one gRPC channel per endpoint, created on first use.

    `endpoints` are ``host:port`` (as ``--etcd-endpoints`` parses them), tried in order, each
    request starting from the last endpoint that answered; `timeout` bounds every request,
    failover included, and the opening of a watch. Calls wait for a connecting channel
    (``wait_for_ready``) within that bound, so an etcd that comes back is used as soon as a
    channel reconnects, not after a failed call. The channels carry no tracing interceptors:
    a span per keep-alive would bury the calls that matter.

    Use it as an async context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: timedelta,
        *,
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
        max_txn_ops: int = MAX_TXN_OPS,
        concurrency: int = 8,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        if max_txn_ops < 2 or concurrency < 1:
            raise ValueError("max_txn_ops must be at least 2 and concurrency at least 1")
        if timeout <= timedelta(0):
            raise ValueError("the etcd timeout must be positive")
        self._endpoints = tuple(endpoints)
        self._timeout = timeout.total_seconds()
        self._options = etcd_channel_options(keepalive)
        self._max_txn_ops = max_txn_ops
        self._concurrency = concurrency
        self._stubs: list[_Stubs | None] = [None] * len(self._endpoints)
        self._current = 0
        self._closed = False
        self.failovers = 0
        """Requests an endpoint did not answer, so the next one was tried (or none was left)."""

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints

    @property
    def timeout(self) -> float:
        """Seconds one request may take."""
        return self._timeout

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes every channel: calls and watches still open end with :class:`EtcdClosed`.
        Idempotent; the client takes no request afterwards."""
        self._closed = True
        stubs, self._stubs = self._stubs, [None] * len(self._endpoints)
        for stub in stubs:
            if stub is not None:
                await stub.channel.close()

    # -- requests ------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None when it does not exist."""
        reply = await self._range("get", rpc.RangeRequest(key=key.encode()))
        return _key_value(reply.kvs[0]) if reply.kvs else None

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key starting with `prefix`, sorted by key, as of one revision, and that
        revision (watch from ``revision + 1`` to follow every change after the read).

        Reads in pages of :data:`RANGE_PAGE` keys, each its own request, all at the revision
        of the first; should that revision be compacted between two pages, it starts again.
        """
        start, end = prefix.encode(), prefix_range_end(prefix.encode())
        for _ in range(3):
            try:
                return await self._read_pages(start, end)
            except EtcdCompacted:
                continue
        raise EtcdUnavailable(f"get_prefix {prefix!r}: compacted during the read, three times")

    async def _read_pages(self, start: bytes, end: bytes) -> tuple[int, list[KeyValue]]:
        revision = 0
        kvs: list[KeyValue] = []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=RANGE_PAGE, revision=revision
            )
            reply = await self._range("get_prefix", request)
            if revision == 0:
                revision = int(reply.header.revision)
            kvs.extend(_key_value(kv) for kv in reply.kvs)
            if not reply.more or not reply.kvs:
                return revision, kvs
            start = bytes(reply.kvs[-1].key) + b"\0"

    async def _range(self, what: str, request: Any) -> Any:
        return await self._call(what, lambda s, t: s.kv.Range(request, timeout=t, **_READY))

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Sets the key (on `lease`, 0: none); returns the revision of the write. Raises
        :class:`EtcdLeaseNotFound` when the lease is gone. Repeating it is harmless."""
        request = rpc.PutRequest(key=key.encode(), value=value, lease=lease)
        reply = await self._call("put", lambda s, t: s.kv.Put(request, timeout=t, **_READY))
        return int(reply.header.revision)

    async def create(self, key: str, value: bytes, lease: int = 0) -> KeyValue | None:
        """Creates the key only if it does not exist (a transaction on its create revision);
        returns it, its ``create_revision`` being the revision of the write, or None when the
        key exists with another value or lease.

        A key that already holds exactly `value` on `lease` counts as created: that is this
        call's own write when an earlier attempt's reply was lost, so retrying after
        :class:`EtcdUnavailable` is safe. (Writers that must tell each other apart use their
        own lease, or their own value.) Raises :class:`EtcdLeaseNotFound` when the lease is
        gone.
        """
        txn = rpc.TxnRequest()
        _fill_create(txn, key.encode(), value, lease)
        reply = await self._call("create", lambda s, t: s.kv.Txn(txn, timeout=t, **_READY))
        return _created(key, value, lease, reply, int(reply.header.revision))

    async def create_many(self, items: Mapping[str, bytes], lease: int = 0) -> dict[str, KeyValue]:
        """:meth:`create` for many keys at once; returns the keys created (with the same rule
        for our own earlier writes), each with its :class:`KeyValue`.

        Each key is created independently of the others: the keys go in transactions of up to
        ``max_txn_ops - 1`` nested create-if-absent transactions, a few in flight at a time. When
        one transaction fails, the others are cancelled and its error is raised; some keys
        may have been created by then, and calling again with the same items and lease
        reports them.
        """
        keys = list(items)
        if not keys:
            return {}
        created: dict[str, KeyValue] = {}
        slots = asyncio.Semaphore(self._concurrency)

        async def create_batch(batch: list[str]) -> None:
            txn = rpc.TxnRequest()
            for key in batch:
                _fill_create(txn.success.add().request_txn, key.encode(), items[key], lease)
            async with slots:
                reply = await self._call(
                    "create_many", lambda s, t: s.kv.Txn(txn, timeout=t, **_READY)
                )
            revision = int(reply.header.revision)
            for key, op in zip(batch, reply.responses, strict=True):
                kv = _created(key, items[key], lease, op.response_txn, revision)
                if kv is not None:
                    created[key] = kv

        # etcd checks a nested transaction against what its parent leaves of --max-txn-ops
        # (max_txn_ops minus the parent's own count): 127 one-op creates fit in 128, not 128.
        step = self._max_txn_ops - 1
        try:
            async with asyncio.TaskGroup() as group:
                for start in range(0, len(keys), step):
                    group.create_task(create_batch(keys[start : start + step]))
        except ExceptionGroup as failures:
            # TaskGroup wraps even one failure in a group; ours are EtcdErrors (anything else
            # is a bug and is re-raised as it came).
            errors = [e for e in failures.exceptions if isinstance(e, EtcdError)]
            if len(errors) != len(failures.exceptions):
                raise
            raise errors[0] from None
        return created

    async def delete(self, key: str) -> bool:
        """Deletes the key; returns whether it existed."""
        request = rpc.DeleteRangeRequest(key=key.encode())
        reply = await self._call(
            "delete", lambda s, t: s.kv.DeleteRange(request, timeout=t, **_READY)
        )
        return int(reply.deleted) > 0

    async def replace_if(self, key: str, expected: bytes, value: bytes, lease: int = 0) -> bool:
        """Sets the key to `value` (on `lease`) only if it holds `expected` (a transaction);
        returns whether it did. Unlike :meth:`put` it never creates the key: one applied late,
        after the key was deleted, finds nothing to replace. Raises
        :class:`EtcdLeaseNotFound` when the lease is gone."""
        encoded = key.encode()
        txn = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=encoded, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=expected
                )
            ],
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=encoded, value=value, lease=lease))
            ],
        )
        reply = await self._call("replace_if", lambda s, t: s.kv.Txn(txn, timeout=t, **_READY))
        return bool(reply.succeeded)

    async def delete_if(self, key: str, value: bytes) -> bool:
        """Deletes the key only if it holds `value` (a transaction); returns whether it did.

        False means the key does not hold `value` now: it is absent or holds something else.
        After :class:`EtcdUnavailable`, a retry that returns False may follow an attempt that
        did delete it; either way, the key no longer holds `value`.
        """
        encoded = key.encode()
        txn = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    key=encoded, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=value
                )
            ],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=encoded))],
        )
        reply = await self._call("delete_if", lambda s, t: s.kv.Txn(txn, timeout=t, **_READY))
        return bool(reply.succeeded) and int(reply.responses[0].response_delete_range.deleted) > 0

    # -- leases --------------------------------------------------------------------------------

    async def delete_many(self, items: Mapping[str, bytes]) -> set[str]:
        """:meth:`delete_if` for many keys at once: deletes each key that holds its value in
        `items`; returns the keys it deleted.

        The keys go in transactions of up to ``max_txn_ops - 1`` nested delete-if-equal
        transactions (as :meth:`create_many`), a few in flight at a time: one revision per
        transaction instead of one per key. When one transaction fails, the others are
        cancelled and its error is raised; some keys may have been deleted by then, and
        calling again leaves none of them holding its value.
        """
        keys = list(items)
        deleted: set[str] = set()
        slots = asyncio.Semaphore(self._concurrency)

        async def delete_batch(batch: list[str]) -> None:
            txn = rpc.TxnRequest()
            for key in batch:
                nested = txn.success.add().request_txn
                compare = nested.compare.add()
                compare.key = key.encode()
                compare.target = rpc.Compare.VALUE
                compare.result = rpc.Compare.EQUAL
                compare.value = items[key]
                nested.success.add().request_delete_range.key = key.encode()
            async with slots:
                reply = await self._call(
                    "delete_many", lambda s, t: s.kv.Txn(txn, timeout=t, **_READY)
                )
            for key, op in zip(batch, reply.responses, strict=True):
                nested_reply = op.response_txn
                if (
                    nested_reply.succeeded
                    and nested_reply.responses[0].response_delete_range.deleted
                ):
                    deleted.add(key)

        step = self._max_txn_ops - 1
        try:
            async with asyncio.TaskGroup() as group:
                for start in range(0, len(keys), step):
                    group.create_task(delete_batch(keys[start : start + step]))
        except ExceptionGroup as failures:
            errors = [e for e in failures.exceptions if isinstance(e, EtcdError)]
            if len(errors) != len(failures.exceptions):
                raise
            raise errors[0] from None
        return deleted

    async def grant(self, ttl: int) -> int:
        """Grants a lease of `ttl` seconds; returns its id. (A retried grant whose first reply
        was lost leaves an unused lease behind; it expires after `ttl`.)"""
        request = rpc.LeaseGrantRequest(TTL=ttl)
        reply = await self._call(
            "grant", lambda s, t: s.lease.LeaseGrant(request, timeout=t, **_READY)
        )
        if reply.error:
            raise EtcdError(f"grant: {reply.error}")
        return int(reply.ID)

    async def keepalive_once(self, lease: int) -> int:
        """Renews the lease once; returns its TTL in seconds from etcd's receipt of the
        request, or 0 when the lease is gone (expired or revoked)."""
        request = rpc.LeaseKeepAliveRequest(ID=lease)

        async def renew(stubs: _Stubs, timeout: float) -> int:
            # LeaseKeepAlive is a stream: one request, then half-close; etcd answers, then
            # ends the stream when it reads the half-close.
            call = stubs.lease.LeaseKeepAlive(iter([request]), timeout=timeout, **_READY)
            try:
                async for reply in call:
                    return int(reply.TTL)
            finally:
                call.cancel()
            raise EtcdUnavailable("keepalive: the stream ended without a reply")

        try:
            return await self._call("keepalive", renew)
        except EtcdLeaseNotFound:
            return 0

    async def revoke(self, lease: int) -> None:
        """Revokes the lease, deleting every key on it; a lease already gone is no error."""
        request = rpc.LeaseRevokeRequest(ID=lease)
        try:
            await self._call(
                "revoke", lambda s, t: s.lease.LeaseRevoke(request, timeout=t, **_READY)
            )
        except EtcdLeaseNotFound:
            return

    # -- watches -------------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, start_revision: int) -> Watch:
        """A watch of every key starting with `prefix`, from `start_revision` on (0: from now).

        Use it as ``async with client.watch_prefix(p, rev) as watch: async for batch in
        watch: ...``: entering opens the stream (bounded by the timeout; raises
        :class:`EtcdUnavailable`); iterating yields :class:`WatchBatch` es in revision order
        and raises :class:`EtcdCompacted` when `start_revision` is compacted (etcd says so
        right after confirming the watch, so the first step raises it) and
        :class:`EtcdUnavailable` when the stream breaks or falls silent (see :class:`Watch`);
        leaving closes it. A watch never ends by itself.
        """
        return Watch(self, prefix, start_revision)

    # -- the one place requests are made and errors translated ---------------------------------

    def _stub(self, index: int) -> _Stubs:
        stubs = self._stubs[index]
        if stubs is None:
            channel = grpc.aio.insecure_channel(self._endpoints[index], options=self._options)
            stubs = _Stubs(
                channel, rpc.KVStub(channel), rpc.LeaseStub(channel), rpc.WatchStub(channel)
            )
            self._stubs[index] = stubs
        return stubs

    async def _call(self, what: str, attempt: Callable[[_Stubs, float], Awaitable[T]]) -> T:
        """Runs `attempt` (given the stubs of an endpoint and the seconds it may take) on the
        endpoints in turn until one answers, within the client's timeout; translates errors."""
        if self._closed:
            raise EtcdClosed(f"{what}: the etcd client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        count = len(self._endpoints)
        first = self._current
        failures: list[str] = []
        for tried in range(count):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            index = (first + tried) % count
            try:
                # Share the time left among the endpoints left: a frozen member cannot take
                # the whole request's time, and the last endpoint gets whatever remains.
                result = await attempt(self._stub(index), remaining / (count - tried))
            except asyncio.CancelledError:
                closed = self._closed_under(what)
                if closed is None:
                    raise
                raise closed from None
            except (grpc.aio.AioRpcError, TimeoutError, EtcdUnavailable) as error:
                failure = self._translate(error, what, index)
                if not isinstance(failure, EtcdUnavailable):
                    raise failure from None
                failures.append(f"{self._endpoints[index]}: {failure}")
                self.failovers += 1
                self._current = (index + 1) % count
                continue
            self._current = index
            return result
        raise EtcdUnavailable(
            f"{what}: no etcd endpoint answered within {self._timeout:g}s ({'; '.join(failures)})",
            grpc.StatusCode.UNAVAILABLE,
        )

    def _closed_under(self, what: str) -> EtcdClosed | None:
        """What a CancelledError from a call means when the current task is not being
        cancelled: grpc raises it when close() cancelled the call (the caller gets
        EtcdClosed). None when it is a cancellation of the current task, to be re-raised."""
        task = asyncio.current_task()
        if self._closed and (task is None or task.cancelling() == 0):
            return EtcdClosed(f"{what}: the etcd client was closed")
        return None

    def _translate(self, error: BaseException, what: str, index: int | None = None) -> EtcdError:
        """The one mapping of gRPC failures to :class:`EtcdError` s."""
        if self._closed:
            return EtcdClosed(f"{what}: the etcd client is closed")
        if isinstance(error, EtcdError):
            return error
        if isinstance(error, TimeoutError):
            return EtcdUnavailable(f"no answer within {self._timeout:g}s")
        if not isinstance(error, grpc.aio.AioRpcError):
            raise TypeError(f"not a gRPC error: {error!r}")
        code, details = error.code(), error.details() or ""
        where = f" ({self._endpoints[index]})" if index is not None else ""
        if code in _RETRY_ELSEWHERE:
            return EtcdUnavailable(f"{code.name}: {details}", code)
        if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
            return EtcdLeaseNotFound(f"{what}: {details}", code)
        if code == grpc.StatusCode.OUT_OF_RANGE:
            return EtcdCompacted(f"{what}: {details}")
        return EtcdError(f"{what}{where}: {code.name}: {details}", code)


class Watch:
    """An open watch stream (see :meth:`EtcdClient.watch_prefix`); one consumer at a time.

    A stream can hang without breaking (a frozen etcd keeps its sockets open): after a timeout
    (the client's) with nothing received, the watch asks etcd for a progress report, and when
    nothing comes within another timeout it gives up with :class:`EtcdUnavailable`. A dead
    stream is so noticed within twice the timeout, under half a lease TTL by the settings'
    check. Progress reports and other responses without events are not yielded.
    """

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int) -> None:
        self._client = client
        self._prefix = prefix.encode()
        self._start_revision = start_revision
        self._call: Any = None
        self._reading: asyncio.Task[Any] | None = None
        self._broken: EtcdError | None = None
        self.endpoint: str | None = None
        """The endpoint the stream is open on."""
        self.last_heard: float | None = None
        """When etcd last sent something on the stream (``time.monotonic``; progress reports
        included): when the stream breaks, the view is known current up to then."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Opens the stream and waits for etcd to confirm the watch (bounded)."""
        client = self._client
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=self._prefix,
                range_end=prefix_range_end(self._prefix),
                start_revision=self._start_revision,
            )
        )

        async def attempt(stubs: _Stubs, timeout: float) -> tuple[Any, Any]:
            call = stubs.watch.Watch(metadata=_REQUIRE_LEADER, **_READY)
            try:
                async with asyncio.timeout(timeout):
                    await call.write(create)
                    reply = await call.read()
            except BaseException:
                call.cancel()
                raise
            if reply is grpc.aio.EOF:
                call.cancel()
                raise EtcdUnavailable("the watch stream ended at once")
            return call, reply

        self._call, reply = await client._call("watch", attempt)
        self.endpoint = client.endpoints[client._current]
        self.last_heard = time.monotonic()
        try:
            self._check(reply)
        except EtcdError:
            await self.close()
            raise

    def _check(self, reply: Any) -> None:
        """Raises when the reply ends the watch."""
        if reply.compact_revision:
            raise EtcdCompacted(
                f"watch from revision {self._start_revision}: compacted up to "
                f"{reply.compact_revision}",
                int(reply.compact_revision),
            )
        if reply.canceled:
            raise EtcdUnavailable(f"etcd cancelled the watch: {reply.cancel_reason}")

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchBatch:
        if self._call is None:
            raise RuntimeError("the watch is not open")
        if self._broken is not None:
            raise self._broken
        try:
            while True:
                reply = await self._receive()
                self._check(reply)
                if reply.events:
                    events = tuple(
                        WatchEvent(
                            EventType.DELETE if event.type == rpc.Event.DELETE else EventType.PUT,
                            _key_value(event.kv),
                        )
                        for event in reply.events
                    )
                    return WatchBatch(events[-1].kv.mod_revision, events)
        except EtcdError as error:
            self._broken = error
            raise

    async def _receive(self) -> Any:
        """The next response, or EtcdUnavailable when the stream broke or fell silent."""
        timeout = self._client.timeout
        if self._reading is None:
            # A read is its own task because cancelling a read cancels the whole call: waiting
            # for it with asyncio.wait lets a quiet stream live on.
            self._reading = asyncio.get_running_loop().create_task(
                self._call.read(), name="etcd-watch-read"
            )
        done, _ = await asyncio.wait({self._reading}, timeout=timeout)
        if not done:
            progress = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
            try:
                async with asyncio.timeout(timeout):
                    await self._call.write(progress)
            except asyncio.CancelledError:
                closed = self._client._closed_under("watch")
                if closed is None:
                    raise
                raise closed from None
            except (grpc.aio.AioRpcError, TimeoutError, asyncio.InvalidStateError) as error:
                raise EtcdUnavailable(f"the watch stream broke: {error!r}") from None
            done, _ = await asyncio.wait({self._reading}, timeout=timeout)
            if not done:
                raise EtcdUnavailable(
                    f"the watch stream is silent: no progress report within {timeout:g}s"
                )
        reading, self._reading = self._reading, None
        if reading.cancelled():
            # Not us (our own cancellation arrives at the wait above): the call was cancelled
            # under the read, by close() of the client.
            raise self._client._closed_under("watch") or EtcdUnavailable(
                "the watch stream was cancelled"
            )
        try:
            reply = reading.result()
        except grpc.aio.AioRpcError as error:
            raise self._client._translate(error, "watch") from None
        if reply is grpc.aio.EOF:
            raise EtcdUnavailable("etcd ended the watch stream")
        self.last_heard = time.monotonic()
        return reply

    async def close(self) -> None:
        """Cancels the stream; idempotent."""
        if self._call is not None:
            self._call.cancel()
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            await asyncio.wait({reading})
            if not reading.cancelled():
                reading.exception()  # the stream's end, which nobody waits for any more
