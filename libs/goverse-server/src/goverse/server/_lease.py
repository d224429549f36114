"""Lease: an etcd lease kept alive, and until when this process may trust it (self-fencing)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import structlog

from goverse.server._etcd import EtcdClosed, EtcdError
from goverse.transport import Backoff

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Clock(Protocol):
    """Time as the lease sees it: monotonic seconds, and a way to wait for a moment."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None:
        """Returns at `deadline` (at once when it passed)."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` (the event loop's clock too)."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(deadline - time.monotonic(), 0.0))


class LeaseRpc(Protocol):
    """The three etcd requests a lease makes (:class:`goverse.server._etcd.EtcdClient`)."""

    async def grant(self, ttl: int) -> int: ...

    async def keepalive_once(self, lease: int) -> int: ...

    async def revoke(self, lease: int) -> None: ...


class Lease:
    """An etcd lease: granted by :meth:`grant`, kept alive by :meth:`run`, ended by
    :meth:`revoke` or lost.

    **Validity.** etcd keeps a lease for its TTL from the moment it *receives* a keep-alive;
    this process only knows when it *sent* one. So each acknowledged keep-alive sent at `t`
    makes the lease valid until ``t + TTL`` (:attr:`valid_until`), never later than etcd's own
    view, and the grant counts from the moment it was sent. Past :attr:`valid_until` the keys
    on the lease may be gone and another process may hold what they claimed: :meth:`valid`
    with a margin is the check a node makes before serving.

    **Keep-alive.** :meth:`run` (a loop the owner runs under its supervisor) renews the lease
    every third of the TTL; a failed renewal is retried with jittered backoff (100 ms up to
    1 s) for as long as the lease is valid. It calls `on_lost` exactly once and returns when
    etcd refuses a renewal (TTL 0: the lease expired or was revoked elsewhere) or when
    validity runs out before a renewal is acknowledged (etcd unreachable, or this process was
    paused) — at :attr:`valid_until` at the latest, even while a renewal is still waiting for
    an answer. `on_lost` runs in the loop's task; it should only record the loss and wake
    whoever fences (it must not block).

    `clock` is for tests (a fake clock drives the loop); by default the monotonic clock.
    """

    def __init__(
        self,
        client: LeaseRpc,
        ttl: timedelta,
        *,
        on_lost: Callable[[], None],
        clock: Clock | None = None,
    ) -> None:
        if ttl < timedelta(seconds=1):
            raise ValueError("a lease TTL is at least one second")
        self._client = client
        self._ttl = ttl.total_seconds()
        self._interval = self._ttl / 3
        self._on_lost = on_lost
        self._clock = clock or MonotonicClock()
        self._id: int | None = None
        self._sent_at = 0.0
        self._valid_until = -math.inf
        self._lost_reason: str | None = None
        self._revoked = False
        self.keepalives = 0
        """Renewals etcd acknowledged."""
        self.keepalive_failures = 0
        """Renewals that got no answer (each one retried while the lease was valid)."""

    @property
    def id(self) -> int:
        """The lease id etcd granted (keys are put on it)."""
        if self._id is None:
            raise RuntimeError("the lease has not been granted")
        return self._id

    @property
    def incarnation(self) -> str:
        """The lease id in hexadecimal: what a process registers as its incarnation."""
        return f"{self.id:x}"

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def valid_until(self) -> float:
        """The clock time until which etcd surely keeps the lease, as of the last acknowledged
        keep-alive (``-inf`` before the grant). It stays as it was when the lease is lost or
        revoked: :meth:`valid` says whether the lease can still be trusted."""
        return self._valid_until

    @property
    def lost_reason(self) -> str | None:
        """Why the lease was lost, once it was; None while it is not."""
        return self._lost_reason

    def remaining(self) -> float:
        """Seconds left until :attr:`valid_until` (negative once past it; says nothing of a
        loss or a revocation, :meth:`valid` does)."""
        return self._valid_until - self._clock.now()

    def valid(self, margin: timedelta = timedelta(0)) -> bool:
        """Whether the lease is valid for at least `margin` more: false from ``valid_until -
        margin`` on, and once it was lost or revoked."""
        if self._lost_reason is not None or self._revoked:
            return False
        return self._clock.now() < self._valid_until - margin.total_seconds()

    async def grant(self) -> int:
        """Asks etcd for a lease of the TTL (rounded up to whole seconds, etcd's unit; the
        validity counts the TTL as given); returns its id. Raises the client's errors
        (:class:`~goverse.server._etcd.EtcdUnavailable`). Call it once per lease."""
        if self._id is not None:
            raise RuntimeError("the lease was granted already: make a new Lease")
        sent_at = self._clock.now()
        self._id = await self._client.grant(math.ceil(self._ttl))
        self._sent_at = sent_at
        self._valid_until = sent_at + self._ttl
        log.info("etcd lease granted", lease=self.incarnation, ttl_s=self._ttl)
        return self._id

    async def run(self) -> None:
        """Keeps the lease alive until it is lost (then calls `on_lost` once and returns) or
        the task is cancelled; see the class docstring. Raises :class:`EtcdClosed` when the
        client is closed under it. Returns at once after :meth:`revoke`."""
        lease = self.id
        retry = Backoff(timedelta(milliseconds=100), timedelta(seconds=1))
        next_at = self._sent_at + self._interval
        while not self._revoked and self._lost_reason is None:
            if next_at >= self._valid_until:
                # No renewal can happen in time: wait for the end of validity, then give up.
                await self._clock.sleep_until(self._valid_until)
                self._lose("no keep-alive acknowledged before the lease's validity ran out")
                return
            await self._clock.sleep_until(next_at)
            if self._revoked:
                return
            sent_at = self._clock.now()
            if sent_at >= self._valid_until:  # this process was paused past its validity
                self._lose("the lease's validity ran out before its next keep-alive")
                return
            try:
                ttl = await self._before_expiry(self._client.keepalive_once(lease))
            except EtcdClosed:
                raise
            except EtcdError as error:
                self.keepalive_failures += 1
                if retry.attempt == 0:
                    log.warning(
                        "etcd lease keep-alive failed",
                        lease=self.incarnation,
                        error=str(error),
                        valid_for_s=round(self.remaining(), 3),
                    )
                next_at = self._clock.now() + retry.next_delay()
                continue
            if ttl is None:
                self._lose("no keep-alive acknowledged before the lease's validity ran out")
                return
            if ttl <= 0:
                self._lose("etcd refused the keep-alive: the lease expired or was revoked")
                return
            self.keepalives += 1
            self._valid_until = max(self._valid_until, sent_at + min(self._ttl, float(ttl)))
            if retry.attempt:
                log.info("etcd lease keep-alive restored", lease=self.incarnation)
                retry.reset()
            next_at = sent_at + self._interval

    async def _before_expiry(self, request: Coroutine[Any, Any, T]) -> T | None:
        """The request's result, or None when the lease's validity ran out first (the request
        is then cancelled)."""
        loop = asyncio.get_running_loop()
        attempt = loop.create_task(request, name="lease-keepalive")
        expiry = loop.create_task(self._clock.sleep_until(self._valid_until), name="lease-validity")
        try:
            await asyncio.wait({attempt, expiry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Both tasks are ours: cancel what is left and wait until it ended.
            for task in (attempt, expiry):
                task.cancel()
            await asyncio.wait({attempt, expiry})
        if attempt.cancelled():
            return None
        return attempt.result()

    def _lose(self, reason: str) -> None:
        if self._lost_reason is not None or self._revoked:
            return
        self._lost_reason = reason
        log.error("etcd lease lost", lease=self.incarnation, reason=reason)
        self._on_lost()

    async def revoke(self) -> bool:
        """Ends the lease now: it is no longer valid here, :meth:`run` returns at its next
        step without calling `on_lost` (cancel it first to stop it at once), and etcd is asked
        to revoke it, deleting every key on it. Best effort and bounded by the client's
        timeout: when etcd cannot be reached, the lease expires by itself within its TTL.
        Returns whether etcd revoked it (False too before :meth:`grant` and on a second
        call). Never raises an etcd error; idempotent."""
        if self._id is None or self._revoked:
            return False
        self._revoked = True
        try:
            await self._client.revoke(self._id)
        except EtcdError as error:
            log.warning(
                "etcd lease revoke failed; it expires by itself",
                lease=self.incarnation,
                error=str(error),
            )
            return False
        log.info("etcd lease revoked", lease=self.incarnation)
        return True
