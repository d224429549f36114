"""GateApp: one gate's server, node links and client registry, started and stopped as a unit."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import structlog

from goverse import wire
from goverse.gate._auth import build_authenticator
from goverse.gate._catalog import TASK_NAME as CATALOG_TASK
from goverse.gate._catalog import Catalog
from goverse.gate._clients import ClientRegistry
from goverse.gate._config import GateConfig
from goverse.gate._http import HttpGate
from goverse.gate._metrics import GateMetrics
from goverse.gate._node_link import NodeLink
from goverse.gate._node_links import NodeLinks
from goverse.gate._peer_limits import PeerLimits
from goverse.gate._router import Router
from goverse.gate._servicer import STREAM_TASK_PREFIX, GateService
from goverse.server import (
    AccessGuard,
    BoundAddress,
    ClusterView,
    EtcdMembership,
    NodeInfo,
    ServiceApp,
    ServiceTls,
    ShutdownBudget,
    StaticView,
    Telemetry,
    TlsIdentity,
    access_rules,
    membership_metrics,
    sweep_departed_channels,
)
from goverse.transport import Backoff
from goverse.v1 import gate_pb2_grpc

log = structlog.get_logger(__name__)

DRAIN_REASON = "the gate is shutting down"


class GateApp(ServiceApp[GateConfig]):
    """A gate: the GateService server with health, one NodeLink per live node, and the registry.

    Starts and stops as every service does (:class:`~goverse.server.ServiceApp`). Its own
    parts: it routes by `view` (:attr:`view`; the static view of ``--nodes`` unless one is
    given: the etcd view in etcd mode); once serving, it keeps one link to each node of the
    view (:class:`NodeLinks`) and forwards calls over one Calls stream per node
    (:meth:`~goverse.server.ServiceApp.open_node_calls`, whose streams are shut down only once
    the server has stopped: every call the gate serves while it drains can reach its node);
    its long-lived streams are the clients' Register streams,
    which a stop closes for draining — each flushes what is queued, sends ``Draining`` and
    ends, new registrations are refused with UNAVAILABLE, and a client may still call until
    its stream has ended (then its credential is void: UNAUTHENTICATED, which the SDK re-sends
    on its new registration).

    Readiness: ``goverse.v1.GateService`` reports SERVING only while the view is ready and at
    least one node link is connected, and flips as that changes; the overall ``""`` status
    (liveness) is SERVING while the gate runs. A gate that can route nowhere takes no new
    clients (``docs/membership.md``, "Gates and routing").

    With ``--http-listen`` it also serves HTTP/JSON (:class:`HttpGate`, docs/http.md), started
    once the gRPC server serves: its event streams are registered clients drained with the
    Register streams, its calls are calls in flight; it stops when the gate releases what it
    holds (step 6 of the stop), before the call streams to nodes close.

    With `telemetry`, its meter holds the gate's metrics and :meth:`start` serves them on its
    metrics port; without it, metrics go to the global meter provider and nothing is served.
    """

    service = "gate"
    grpc_service = wire.GATE_SERVICE
    stream_task_prefix = STREAM_TASK_PREFIX

    @property
    def starts_ready(self) -> bool:
        return False  # ready once it can route: reported by the node links

    @property
    def served_message_bytes(self) -> int:
        return self.config.max_message_bytes  # its peers are clients

    def __init__(
        self,
        config: GateConfig,
        telemetry: Telemetry | None = None,
        view: ClusterView | None = None,
    ) -> None:
        super().__init__(config, telemetry)
        self.instance = secrets.token_hex(8)
        """This gate process's random id, sent with each RegisterGate: a node lets this
        process's reconnection replace its stream, and refuses (ALREADY_EXISTS) another
        process given the same --gate-id while this one holds it."""
        self.etcd: EtcdMembership | None = None
        if view is None and config.membership == "etcd":
            self.etcd = EtcdMembership(config)
            view = self.etcd.view
        self.view: ClusterView = view if view is not None else StaticView(config.static_nodes)
        self.registry = ClientRegistry(
            config.gate_id,
            max_clients=config.max_clients,
            queue_messages=config.client_queue_messages,
            queue_bytes=config.client_queue_bytes,
            max_message_bytes=config.max_message_bytes,
            overflow=config.slow_client_policy,
            peers=PeerLimits(
                config.max_registrations_per_peer,
                config.registration_rate,
                max_per_connection=config.max_registrations_per_connection,
            ),
        )
        self.authenticator = build_authenticator(
            config.authenticator,
            secret_file=config.jwt_secret_file,
            public_key_file=config.jwt_public_key,
            jwks_file=config.jwt_jwks_file,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            claims=config.jwt_claims,
        )
        self.access = AccessGuard(
            access_rules(config.access_rules), self.meter, "gate", self.known_names
        )
        self.node_calls = self.open_node_calls(
            f"gate {config.gate_id}", ((wire.GATE_ID_KEY, config.gate_id),)
        )
        self.router = Router(
            self.view, self.pool, self.node_calls, config.call_timeout, self.access
        )
        self.catalog = Catalog(
            self.view,
            self.pool,
            refresh_interval=config.describe_refresh,
            names=self.known_names,
        )
        self.node_links = NodeLinks(self.view, self.supervisor, self._open_link, self.report_ready)
        self.metrics = GateMetrics(self.meter, self.registry, self.node_links.links)
        membership_metrics(self.meter, self.service, self.view)
        self.http: HttpGate | None = None
        """The HTTP/JSON interface, with --http-listen."""
        if config.http_listen is not None:
            self.http = HttpGate(
                config.http_listen,
                gate_id=config.gate_id,
                registry=self.registry,
                router=self.router,
                catalog=self.catalog,
                authenticator=self.authenticator,
                supervisor=self.supervisor,
                stream_prefix=STREAM_TASK_PREFIX,
                cors_origins=config.http_cors_origins or (),
                max_body_bytes=config.http_body_bytes,
                on_registration_refused=self.metrics.registration_refused,
                metrics=self.call_metrics,
                calls=self.calls,
            )

    @property
    def links(self) -> Mapping[str, NodeLink]:
        """The node links by node id."""
        return self.node_links.links

    def make_tls(self) -> ServiceTls | None:
        """Mutual TLS towards nodes with --tls-cert; the client-facing listener presents
        --client-tls-cert (else --tls-cert) and asks clients for no certificate."""
        files = self.config.tls
        if files is None:
            return None
        client = self.config.client_tls
        listener = None if client is None else TlsIdentity(client)
        return ServiceTls(TlsIdentity(files), listener, require_client_cert=False)

    def _open_link(self, node: NodeInfo, on_state: Callable[[NodeLink], None]) -> NodeLink:
        address = node.address
        return NodeLink(
            address,
            self.config.gate_id,
            lambda: self.pool.get(address),
            self.registry,
            backoff=Backoff(self.config.reconnect_initial, self.config.reconnect_max),
            stable_after=self.config.stable_after,
            heartbeat_timeout=self.config.node_heartbeat_timeout,
            on_state=on_state,
            instance=self.instance,
        )

    def assemble(self, server: grpc.aio.Server, bound: BoundAddress) -> None:
        servicer = GateService(
            self.config.gate_id,
            self.registry,
            self.router,
            self.supervisor,
            max_session_calls=self.config.max_session_calls,
            max_message_bytes=self.config.max_message_bytes,
            metrics=self.call_metrics,
            authenticator=self.authenticator,
            on_registration_refused=self.metrics.registration_refused,
            catalog=self.catalog,
            calls=self.calls,
        )
        gate_pb2_grpc.add_GateServiceServicer_to_server(servicer, server)

    async def on_serving(self) -> None:
        if self.etcd is not None:
            await self.etcd.open()
            self.supervisor.spawn("etcd-view", self.etcd.watch(self.fail), vital=True)
            self.supervisor.spawn(
                "etcd-registration",
                self.etcd.register_gate(self.config.gate_id, self.address),
                vital=True,
            )
        self.node_links.start()
        self.supervisor.spawn(CATALOG_TASK, self.catalog.run(), vital=True)
        self.supervisor.spawn(
            "channel-sweep",
            sweep_departed_channels(self.view, self.pool, self.node_calls.forget),
            vital=True,
        )
        if self.http is not None:
            await self.http.start()

    async def release(self, budget: ShutdownBudget) -> None:
        if self.http is not None:  # its event streams were drained with the Register streams
            await self.http.stop()
        if self.etcd is not None:
            await self.etcd.close()

    def close_streams(self) -> int:
        return self.registry.drain(DRAIN_REASON)

    def identity(self) -> dict[str, Any]:
        fields = {"gate_id": self.config.gate_id, "nodes": sorted(self.view.nodes())}
        if self.http is not None:
            fields["http"] = self.http.address
        return fields


__all__ = ["GateApp"]
