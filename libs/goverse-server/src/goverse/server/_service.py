"""ServiceApp: the one lifecycle gate and node share — bind, serve, report ready, stop in budget.

A service is a :class:`ServiceApp` subclass that supplies only what is its own: the servicers
it serves (:meth:`ServiceApp.assemble`), what runs once it serves (:meth:`ServiceApp.on_serving`),
how its long-lived streams are told to end (:meth:`ServiceApp.close_streams`) and what it
releases after its tasks are gone (:meth:`ServiceApp.release`). Start, the stop sequence, its
budget, and the log lines ``listening``, ``stopping`` and ``stopped`` are written here once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import grpc
import structlog
from opentelemetry import metrics

from goverse.server._calls import CallsInFlight
from goverse.server._grpc import GrpcHost
from goverse.server._limits import hop_message_bytes
from goverse.server._metrics import CallDurations, CallMetricsInterceptor, KnownNames
from goverse.server._node_calls import Metadata, NodeCalls
from goverse.server._ready import Ready, write_ready
from goverse.server._supervisor import Supervisor
from goverse.server._telemetry import Telemetry
from goverse.server._tls import ServiceTls, TlsFiles, TlsIdentity
from goverse.transport import ChannelPool, Keepalive, channel_options

log = structlog.get_logger(__name__)

LEAVE_SHARE = 0.6
"""Share of the shutdown budget a service gets to leave its cluster (a node hands off its
shards) while it still serves and streams still carry what its objects push."""
DRAIN_SHARE = 0.5
"""Share of the shutdown budget long-lived streams get to flush and end by themselves."""
RESERVE_SHARE = 0.2
MAX_RESERVE = 1.0
"""What the steps after the wait for calls in flight keep of the budget: a fifth, at most 1 s."""
SERVER_GRACE = 1.0
"""Longest grace the gRPC server gets for unary calls still running when it stops."""
MIN_TELEMETRY_FLUSH = 0.2
"""Least time buffered spans get to be exported, even when the budget is spent."""


class ServiceConfig(Protocol):
    """The settings every service has (declared once in the settings both configs share)."""

    @property
    def listen(self) -> str: ...
    @property
    def shutdown_timeout(self) -> timedelta: ...
    @property
    def max_message_bytes(self) -> int: ...
    @property
    def keepalive(self) -> Keepalive: ...
    @property
    def ready_file(self) -> Path | None: ...
    @property
    def health_port(self) -> int | None: ...
    @property
    def tls(self) -> TlsFiles | None: ...
    @property
    def tls_reload_interval(self) -> timedelta: ...
    @property
    def max_stream_calls(self) -> int: ...


C = TypeVar("C", bound=ServiceConfig)


class ShutdownBudget:
    """The time one stop may take, spent by its steps in order.

    Every step asks how long it may wait (:meth:`remaining`, :meth:`share`, :meth:`keeping`);
    none gets more than what is left, so the whole stop ends within the budget however the
    steps go (telemetry's flush floor excepted, see :data:`MIN_TELEMETRY_FLUSH`).
    """

    def __init__(self, total: timedelta, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total.total_seconds()
        self._clock = clock
        self._started = clock()

    def elapsed(self) -> float:
        return self._clock() - self._started

    def remaining(self) -> float:
        """Seconds left of the budget (never negative)."""
        return max(self.total - self.elapsed(), 0.0)

    def share(self, fraction: float) -> float:
        """`fraction` of the whole budget, or what is left when that is less."""
        return min(self.total * fraction, self.remaining())

    def keeping(self, reserve: float) -> float:
        """What is left once `reserve` seconds are kept for later steps."""
        return max(self.remaining() - reserve, 0.0)


@dataclass(frozen=True)
class BoundAddress:
    """Where a service listens once bound: `listen` with the bound port, and `local`, the
    address a process on this machine dials (a wildcard host becomes loopback)."""

    listen: str
    local: str
    port: int
    """The bound TCP port; 0 for a unix socket."""

    @classmethod
    def of(cls, listen: str, port: int) -> BoundAddress:
        if listen.startswith("unix:"):
            return cls(listen, listen, 0)
        host = listen.rpartition(":")[0]
        local_host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
        return cls(f"{host}:{port}", f"{local_host}:{port}", port)


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ServiceApp(abc.ABC, Generic[C]):
    """One service process's gRPC server, tasks, channels and telemetry, as a unit.

    :meth:`start` binds ``config.listen`` (port 0: a free port; raises
    :class:`~goverse.server.ListenError` when it cannot bind), lets the service
    :meth:`assemble` its servicers, serves with health SERVING (its service name: at once
    when :attr:`starts_ready`, else once it says so with :meth:`report_ready`), serves metrics
    when `telemetry` has a port, runs :meth:`on_serving`, logs ``listening`` with the bound
    addresses and writes them to ``config.ready_file`` when one is set.

    :meth:`stop` follows the shutdown contract within ``config.shutdown_timeout``:

    1. health reports NOT_SERVING at once, for every service name, permanently;
    2. the service leaves its cluster while it still serves (:meth:`leave`, up to 60 % of the
       budget; the node hands off its shards);
    3. the service closes its long-lived streams (:meth:`close_streams`: each flushes what is
       queued and ends by itself) and they get up to half the budget to end;
    4. unary calls in flight get the rest of the budget but a reserve (a fifth, at most 1 s)
       to finish;
    5. the supervisor cancels every task left and awaits them for the rest of the budget, then
       the names of any still pending are logged;
    6. the service releases what it holds (:meth:`release`; the node deactivates its objects);
    7. the gRPC server stops, giving unary calls still running at most 1 s;
    8. what the service keeps open to other processes is closed (:meth:`close_outbound`: the
       Calls streams to nodes), then its channels; buffered spans are exported (at least
       0.2 s), the metrics endpoint stopped and the ready file removed; ``stopped`` is logged
       with the elapsed time.

    Safe before :meth:`start` (nothing to stop), idempotent, and safe to call concurrently:
    later callers return once the first stop has finished. After a stop the app cannot be
    started again. ``async with`` starts and stops it.
    """

    service: ClassVar[str]
    """``gate`` or ``node``: the instruments' and task names' prefix, the log's ``service``."""
    grpc_service: ClassVar[str]
    """The full name of the gRPC service it serves (``goverse.v1.GateService`` …)."""
    stream_task_prefix: ClassVar[str]
    """The supervisor's name prefix of the tasks that run this service's long-lived streams."""

    def __init__(self, config: C, telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.telemetry = telemetry
        self.meter = (
            telemetry.meter(f"goverse.{self.service}")
            if telemetry is not None
            else metrics.get_meter(f"goverse.{self.service}")
        )
        self.supervisor = Supervisor(self.service, on_vital_crash=self._vital_crashed)
        self.tls = self.make_tls()
        """This process's TLS (None: plaintext); its files are read here (a missing one is a
        :class:`~goverse.server.StartupError`) and watched once serving."""
        # Channels to other services carry forwarded messages: a client's, plus an envelope.
        self.pool = ChannelPool(
            channel_options(hop_message_bytes(config.max_message_bytes), config.keepalive),
            credentials=None if self.tls is None else self.tls.channel_credentials(),
        )
        self.outbound = Supervisor(f"{self.service}-node-calls")
        """Owns the Calls streams this service sends calls to nodes on (:meth:`open_node_calls`);
        shut down only once the server has stopped (step 8 of :meth:`stop`): the calls the
        gate serves until then, and those a node's objects make while it deactivates them,
        need them after the main supervisor has shut down (step 5)."""
        self.calls = CallsInFlight([self.grpc_service])
        durations = CallDurations(
            f"goverse.{self.service}.call.duration", f"calls the {self.service} served"
        )
        if telemetry is not None:
            telemetry.registry.register(durations)
        self.known_names = KnownNames()
        """The object types and methods this service serves: its metrics' only type and method
        labels (the node adds the types it loads, the gate those its nodes describe)."""
        self.call_metrics = CallMetricsInterceptor(
            durations, [self.grpc_service], names=self.known_names
        )
        """The served calls' duration histogram: unary calls record in it as an interceptor,
        calls from a call stream by :meth:`~CallMetricsInterceptor.record` (same labels)."""
        self._host: GrpcHost | None = None
        self._bound: BoundAddress | None = None
        self._assembled = False
        self._ready_written = False
        """Whether this process wrote --ready-file (stop() removes only that)."""
        self._state = _State.NEW
        self._stop_lock = asyncio.Lock()
        self._failure: asyncio.Future[BaseException] | None = None  # made in the loop

    # -- what a service supplies ----------------------------------------------------------

    @property
    def served_message_bytes(self) -> int:
        """The largest message the gRPC server takes and sends: by default a hop's limit (its
        peers are services forwarding what clients sent); a client-facing service overrides
        it with ``config.max_message_bytes``."""
        return hop_message_bytes(self.config.max_message_bytes)

    @abc.abstractmethod
    def assemble(self, server: grpc.aio.Server, bound: BoundAddress) -> None:
        """Builds what needs the bound address and adds the service's servicers to `server`
        (called once, after binding, before serving)."""

    async def on_serving(self) -> None:
        """Starts what runs once the server serves (background tasks, through the supervisor)."""

    @abc.abstractmethod
    def close_streams(self) -> int:
        """Tells every long-lived stream to flush and end by itself, refuses new ones, and
        returns how many were open."""

    async def leave(self, budget: ShutdownBudget) -> None:
        """Leaves the cluster while still serving, within `budget` (the node hands off its
        shards: their objects deactivate while the gate streams still carry their pushes)."""

    async def release(self, budget: ShutdownBudget) -> None:
        """Frees what the service holds once its tasks are gone, within `budget`."""

    def open_node_calls(self, sender: str, metadata: Metadata) -> NodeCalls:
        """Calls to nodes over one Calls stream per node (a gate's for its clients, a node's
        for its objects), the streams tasks of :attr:`outbound`; `sender` and `metadata` say
        who sends (:class:`~goverse.server.NodeCalls`)."""
        return NodeCalls(
            sender,
            metadata,
            self.pool,
            self.outbound,
            max_calls=self.config.max_stream_calls,
            max_message_bytes=hop_message_bytes(self.config.max_message_bytes),
        )

    async def close_outbound(self, budget: ShutdownBudget) -> None:
        """Ends, within `budget`, what the service keeps open to other processes beside its
        channels, once its server has stopped and nothing can call through it any more: the
        Calls streams to nodes (:attr:`outbound`)."""
        pending = await self.outbound.shutdown(budget.remaining())
        if pending:
            log.warning(
                "call streams to nodes still open after the shutdown timeout", tasks=pending
            )

    def make_tls(self) -> ServiceTls | None:
        """The TLS of this service from its config: by default (a node) its server presents
        ``--tls-cert`` and requires a client certificate of ``--tls-ca``."""
        files = self.config.tls
        if files is None:
            return None
        return ServiceTls(TlsIdentity(files), require_client_cert=True)

    async def on_tls_rotated(self) -> None:
        """Called once the channel pool makes channels with a rotated client certificate
        (a service drops what holds channels of its own)."""

    async def _tls_rotated(self, credentials: grpc.ChannelCredentials) -> None:
        await self.pool.rotate(credentials)
        await self.on_tls_rotated()

    def identity(self) -> dict[str, Any]:
        """Fields naming this instance in the ``listening`` line and the ready file."""
        return {}

    def fail(self, error: BaseException) -> None:
        """Ends the service by itself: the process stops it as on SIGTERM, then exits with
        the error (a :class:`~goverse.server.StartupError`: exit code 2 and one line)."""
        failure = self._failure_future()
        if not failure.done():
            failure.set_result(error)

    def _vital_crashed(self, name: str, error: BaseException) -> None:
        """A vital task raised: the service stops and the process exits with that error, so
        that what runs it (Kubernetes) starts it afresh instead of it serving on without."""
        log.error("a vital task crashed: the service stops", task=name)
        self.fail(error)

    async def failed(self) -> BaseException:
        """The error passed to :meth:`fail`, once there is one."""
        return await asyncio.shield(self._failure_future())

    def _failure_future(self) -> asyncio.Future[BaseException]:
        if self._failure is None:
            self._failure = asyncio.get_running_loop().create_future()
        return self._failure

    @property
    def starts_ready(self) -> bool:
        """Whether :attr:`grpc_service` reports SERVING as soon as the server serves; a service
        that is ready only once something holds (the gate: a node link is up; a node in etcd
        membership: it has joined) says False and reports it with :meth:`report_ready`."""
        return True

    async def report_ready(self, ready: bool) -> None:
        """Reports :attr:`grpc_service` SERVING or NOT_SERVING in health (readiness); the
        overall ``""`` status (liveness) stays SERVING. Ignored before :meth:`start` and once
        a stop has begun (health is NOT_SERVING for good then)."""
        if self._host is not None and self._state in (_State.STARTING, _State.RUNNING):
            await self._host.set_ready(ready)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (0 before :meth:`start`, and for a unix socket)."""
        return self._bound.port if self._bound is not None else 0

    @property
    def address(self) -> str:
        """Where a process on this machine reaches the server (valid once started)."""
        if self._bound is None:
            raise RuntimeError(f"the {self.service} has not started")
        return self._bound.local

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING

    async def start(self) -> None:
        """Binds, assembles, serves and reports ready (see the class docstring).

        Raises ListenError when the address cannot be bound, RuntimeError when called twice
        or after :meth:`stop`.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"the {self.service} cannot start: it is {self._state.value}")
        self._state = _State.STARTING
        host = GrpcHost(
            self.config.listen,
            [self.grpc_service],
            self.served_message_bytes,
            interceptors=[self.calls.interceptor, self.call_metrics],
            keepalive=self.config.keepalive,
            credentials=None if self.tls is None else self.tls.server_credentials(),
            health_port=self.config.health_port,
        )
        self._host = host
        self._bound = BoundAddress.of(self.config.listen, host.bind())
        self.assemble(host.server, self._bound)
        self._assembled = True
        await host.serve(ready=self.starts_ready)
        metrics_port = None
        if self.telemetry is not None:
            metrics_port = await self.telemetry.start_metrics_server() or None
        if self.tls is not None:
            self.supervisor.spawn("tls-reload", self._watch_tls(self.tls), vital=True)
        await self.on_serving()
        self._state = _State.RUNNING
        ready = Ready(
            service=self.service,
            pid=os.getpid(),
            address=self._bound.local,
            listen=self._bound.listen,
            port=self._bound.port,
            metrics_port=metrics_port,
            identity=self._ready_identity(host),
        )
        log.info("listening", **ready.fields())
        if self.config.ready_file is not None:
            write_ready(self.config.ready_file, ready)
            self._ready_written = True

    def _ready_identity(self, host: GrpcHost) -> dict[str, Any]:
        fields = self.identity()
        if host.bound_health_port is not None:
            fields["health_port"] = host.bound_health_port
        fields["tls"] = self.tls is not None
        return fields

    async def _watch_tls(self, tls: ServiceTls) -> None:
        """The "tls-reload" task: reloads changed TLS files until the supervisor cancels it."""
        await tls.watch(self.config.tls_reload_interval, self._tls_rotated)

    async def stop(self) -> None:
        """Stops the service within ``config.shutdown_timeout`` (see the class docstring)."""
        async with self._stop_lock:
            if self._state is _State.STOPPED:
                return
            started = self._state is not _State.NEW
            self._state = _State.STOPPING
            try:
                if started:
                    await self._shutdown()
            finally:
                self._state = _State.STOPPED

    async def _shutdown(self) -> None:
        budget = ShutdownBudget(self.config.shutdown_timeout)
        log.info("stopping", timeout_s=budget.total)
        host = self._host
        if host is not None:
            await host.enter_shutdown()  # 1
        if self._assembled:
            await self.leave(ShutdownBudget(timedelta(seconds=budget.share(LEAVE_SHARE))))  # 2
        streams = self.close_streams() if self._assembled else 0  # 3
        open_streams = self.supervisor.tasks_named(self.stream_task_prefix)
        await self.supervisor.wait(open_streams, budget.share(DRAIN_SHARE))
        streams_left = sum(not task.done() for task in open_streams)
        calls = len(self.calls)  # 4
        calls_left = await self.calls.wait(
            budget.keeping(min(budget.total * RESERVE_SHARE, MAX_RESERVE))
        )
        pending = await self.supervisor.shutdown(budget.remaining())  # 5
        if pending:
            log.warning(
                "tasks still pending after the shutdown timeout",
                tasks=pending,
                timeout_s=budget.total,
            )
        if self._assembled:
            await self.release(budget)  # 6
        if host is not None:
            await host.stop(grace=min(SERVER_GRACE, budget.remaining()))  # 7
        if self._assembled:
            await self.close_outbound(budget)  # 8
        await self.pool.close()
        if self.telemetry is not None:
            await self.telemetry.shutdown(max(budget.remaining(), MIN_TELEMETRY_FLUSH))
        if self.config.ready_file is not None and self._ready_written:
            with contextlib.suppress(FileNotFoundError):
                self.config.ready_file.unlink()
        log.info(
            "stopped",
            elapsed_s=round(budget.elapsed(), 3),
            timeout_s=budget.total,
            streams=streams,
            streams_left=streams_left,
            calls=calls,
            calls_left=calls_left,
            tasks_pending=len(pending),
        )

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


__all__ = ["DRAIN_SHARE", "BoundAddress", "ServiceApp", "ServiceConfig", "ShutdownBudget"]
