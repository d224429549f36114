"""A local cluster for e2e tests: real goverse-node and goverse-gate processes, started ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from goverse import wire
from goverse.client import Client, ClientTLS
from goverse.placement import SHARD_COUNT, Placement
from goverse.transport import tls_name_options
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.call_load import object_ids
from tests.helpers.certs import CertFiles, TestCA
from tests.helpers.processes import START_TIMEOUT, ProcessGroup, ServiceProcess, serving
from tests.helpers.tokens import TokenIssuer
from tests.helpers.waiting import wait_until

STATUS_TIMEOUT = 5.0
"""The deadline of a Status call to a node."""


@dataclass(frozen=True)
class ClusterTLS:
    """Certificates of a cluster under TLS: every node has a node certificate and every gate
    a gate certificate of one CA (flags from :meth:`node_flags` / :meth:`gate_flags`, health
    on a plaintext port); the test itself asks nodes for their Status with a node
    certificate of its own, and its clients verify the gates with the CA."""

    ca: TestCA
    node: CertFiles
    gate: CertFiles
    operator: CertFiles

    @classmethod
    def make(
        cls, directory: Path, *, node_dns: Sequence[str] = (), gate_dns: Sequence[str] = ()
    ) -> ClusterTLS:
        """A CA in `directory` and its certificates, valid for localhost and 127.0.0.1 and
        for the DNS names peers dial the nodes (`node_dns`) and the gates (`gate_dns`) by."""
        ca = TestCA(directory)
        return cls(
            ca,
            ca.issue("node", "node", dns=node_dns),
            ca.issue("gate", "gate", dns=gate_dns),
            ca.issue("node", "test"),
        )

    def flags(self, files: CertFiles) -> tuple[str, ...]:
        return (*files.flags(), "--tls-ca", str(self.ca.path), "--health-port=0")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca.pem, self.operator.key.read_bytes(), self.operator.cert.read_bytes()
        )

    def client(self) -> ClientTLS:
        return ClientTLS(ca=self.ca.pem)


def client_options(tls: ClusterTLS | None, tokens: TokenIssuer | None) -> dict[str, Any]:
    """The SDK's keyword arguments a client of gates secured by `tls` and `tokens` needs:
    with TLS on, ``tls`` trusting the cluster's CA; with JWT on, ``token``, which signs a
    fresh token for every registration (empty in plaintext without JWT)."""
    options: dict[str, Any] = {}
    if tls is not None:
        options["tls"] = tls.client()
    if tokens is not None:
        options["token"] = tokens.token
    return options


@dataclass
class Cluster:
    """Nodes and gates, as real processes, on one membership: the static node list
    (`etcd_endpoint` None: every node and gate is given :attr:`node_addresses` in ``--nodes``)
    or etcd's (each node registers its unix address). Nodes get `node_extra`, gates
    `gate_extra`, both `env`. With `tls`, every hop is TLS (mutual between gates and nodes)
    and the helpers here speak it too.

    Processes start only through :meth:`start`, :meth:`start_nodes`, :meth:`start_gates` and
    :meth:`start_stopped`, which return once what they started serves (a node on etcd: once it
    has joined). They block the thread: from async code, run them in one
    (:func:`asyncio.to_thread`), so that the clients on the event loop keep calling.
    """

    group: ProcessGroup
    node_addresses: list[str]
    """Every node address handed out, in order: node *i* listens on the *i*-th. On the static
    list, exactly what every node and gate was given in ``--nodes`` (so placement's names for
    the nodes)."""
    etcd_endpoint: str | None = None
    node_extra: tuple[str, ...] = ()
    gate_extra: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    tls: ClusterTLS | None = None
    tokens: TokenIssuer | None = None
    """With JWT on (:func:`start_cluster` with `tokens`): what signs the clients' tokens."""
    nodes: list[ServiceProcess] = field(default_factory=list)
    """Every node started, in order (node *i* on ``node_addresses[i]``), running or not."""
    gates: list[ServiceProcess] = field(default_factory=list)
    """Every gate started, in order (gate *i* has id ``gate-i``), running or not."""

    @property
    def gate_addresses(self) -> list[str]:
        """Where the gates listen (each on a loopback port it bound, from its ready file)."""
        return [proc.address for proc in self.gates]

    @property
    def gate_ids(self) -> list[str]:
        return [f"gate-{index}" for index in range(len(self.gates))]

    @property
    def placement(self) -> Placement:
        return Placement(self.node_addresses)

    # -- processes ------------------------------------------------------------------------------

    def names(self, count: int) -> list[str]:
        """The first `count` node addresses; on etcd, more are handed out when needed (a node
        :meth:`start_nodes` starts later takes the next one)."""
        if count > len(self.node_addresses):
            if self.etcd_endpoint is None:
                raise AssertionError(f"the static node list is {self.node_addresses}")
            self.node_addresses += self.group.node_addresses(count - len(self.node_addresses))
        return self.node_addresses[:count]

    def start(self, nodes: int, gates: int) -> None:
        """Starts `nodes` nodes, then `gates` gates; returns once all of them serve and
        every gate's link to every node is up."""
        # Nodes first: a gate that starts before its nodes serve routes its first calls into a
        # channel still backing off from "connection refused", and those fail with UNAVAILABLE.
        self.start_nodes(nodes)
        self.start_gates(gates)
        self.wait_linked()

    def start_nodes(self, count: int) -> list[ServiceProcess]:
        """Starts `count` new nodes together on the next addresses; returns once each serves
        and, on etcd, has joined."""
        first = len(self.nodes)
        extra = (*self._membership, *self._tls_flags("node"), *self.node_extra)
        added = [
            self.group.node(address, self._listed, extra, wait=False, env=self.env)
            for address in self.names(first + count)[first:]
        ]
        self.nodes.extend(added)
        self._wait_serving(added)
        return added

    def start_gates(self, count: int) -> list[ServiceProcess]:
        """Starts `count` new gates together (ids numbered on from the gates started so far);
        returns once each serves (its links to the nodes come up in the background: see
        :meth:`wait_linked`)."""
        first = len(self.gates)
        extra = (*self._membership, *self._tls_flags("gate"), *self.gate_extra)
        added = [
            self.group.gate(f"gate-{first + n}", self._listed, extra, wait=False, env=self.env)
            for n in range(count)
        ]
        self.gates.extend(added)
        self._wait_serving(added)
        return added

    def start_stopped(self, *procs: ServiceProcess) -> None:
        """Starts stopped nodes or gates of this cluster again together, each on its address;
        returns once each serves (a node on etcd: has joined)."""
        for proc in procs:
            proc.start(wait=False)
        self._wait_serving(procs)

    def wait_linked(self) -> None:
        """Waits until every gate's link to every node is up (a gate serves before its links
        connect: they are its background tasks)."""
        wait_until(
            lambda: all(
                sorted(self.node_status(proc.address).gates) == self.gate_ids for proc in self.nodes
            ),
            START_TIMEOUT,
            what="every gate to link to every node",
        )

    def _tls_flags(self, role: str) -> tuple[str, ...]:
        if self.tls is None:
            return ()
        return self.tls.flags(self.tls.node if role == "node" else self.tls.gate)

    @property
    def credentials(self) -> grpc.ChannelCredentials | None:
        """What the test's own channels to nodes present (None: plaintext)."""
        return None if self.tls is None else self.tls.channel_credentials()

    def node_status(self, address: str, timeout: float = STATUS_TIMEOUT) -> node_pb2.StatusResponse:
        """:func:`node_status` over this cluster's TLS, if any."""
        return node_status(address, timeout, self.credentials)

    @property
    def _membership(self) -> tuple[str, ...]:
        return () if self.etcd_endpoint is None else (f"--etcd-endpoints={self.etcd_endpoint}",)

    @property
    def _listed(self) -> list[str] | None:
        return self.node_addresses if self.etcd_endpoint is None else None

    def _wait_serving(self, procs: Sequence[ServiceProcess]) -> None:
        for proc in procs:
            proc.wait_ready()
        joining = [proc for proc in procs if proc in self.nodes] if self.etcd_endpoint else []
        wait_until(
            lambda: all(joined(proc.health_address) for proc in joining),
            START_TIMEOUT,
            what=f"{', '.join(proc.name for proc in joining)} to join the cluster in etcd",
        )

    # -- what the nodes say ---------------------------------------------------------------------

    def ids_owned_by(self, node: str, object_type: str, count: int, prefix: str) -> list[str]:
        """`count` object ids of `object_type` that placement puts on `node`."""
        placement = self.placement
        return object_ids(prefix, count, lambda i: placement.node_for(object_type, i) == node)

    def client_options(self) -> dict[str, Any]:
        """:func:`client_options` of this cluster's TLS and tokens."""
        return client_options(self.tls, self.tokens)

    def client(self, gates: list[str] | None = None, **options: Any) -> Client:
        """A client of the gates with :meth:`client_options` (unless `options` give their
        own)."""
        return Client(gates or self.gate_addresses, **{**self.client_options(), **options})

    async def list_objects(self, node: str, object_type: str = "") -> set[str]:
        credentials = self.credentials
        channel = (
            grpc.aio.insecure_channel(node)
            if credentials is None
            else grpc.aio.secure_channel(node, credentials, tls_name_options(node))
        )
        async with channel:
            reply = await node_pb2_grpc.NodeServiceStub(channel).ListObjects(
                node_pb2.ListObjectsRequest(object_type=object_type), timeout=10
            )
        return {ref.object_id for ref in reply.objects}

    async def status(self, node: str, timeout: float = 10.0) -> node_pb2.StatusResponse:
        """The Status of the node at `node` (:func:`node_status`, in a thread)."""
        return await asyncio.to_thread(self.node_status, node, timeout)


def start_cluster(
    group: ProcessGroup,
    gates: int = 1,
    gate_extra: tuple[str, ...] = (),
    node_extra: tuple[str, ...] = (),
    *,
    nodes: int = 2,
    env: dict[str, str] | None = None,
    etcd: str | None = None,
    tls: ClusterTLS | None = None,
    tokens: TokenIssuer | None = None,
) -> Cluster:
    """`nodes` nodes on unix sockets named up front and `gates` gates (``gate-0`` …) on
    loopback ports they bind; returns once all of them serve and every gate's link to every
    node is up. With `etcd` (an endpoint), membership is etcd's; with `tls`, every hop is TLS
    (see :class:`Cluster`). With `tokens`, the gates require JWTs that it signs, and
    :meth:`Cluster.client` sends them."""
    if tokens is not None:
        gate_extra = (*gate_extra, *tokens.gate_flags(group.log_dir))
    cluster = Cluster(
        group,
        group.node_addresses(nodes),
        etcd,
        node_extra,
        gate_extra,
        dict(env or {}),
        tls,
        tokens,
    )
    cluster.start(nodes, gates)
    return cluster


def joined(node: str) -> bool:
    """Whether `node` is ready (health of its NodeService): in etcd membership, it joined."""
    return serving(node, wire.NODE_SERVICE)


# -- Status, and the shards settled ------------------------------------------------------------


def node_status(
    address: str,
    timeout: float = STATUS_TIMEOUT,
    credentials: grpc.ChannelCredentials | None = None,
) -> node_pb2.StatusResponse:
    """The node's answer to Status (blocks the thread: from async code, run it in one);
    over TLS with `credentials`."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials, tls_name_options(address))
    )
    with channel:
        reply: node_pb2.StatusResponse = node_pb2_grpc.NodeServiceStub(channel).Status(
            node_pb2.StatusRequest(), timeout=timeout
        )
    return reply


def unsettled(
    statuses: Sequence[node_pb2.StatusResponse],
    names: Sequence[str] | None = None,
    gates: Sequence[str] | None = None,
) -> list[str]:
    """What keeps the nodes that answered `statuses` from the state placement over them
    wants; empty when the shards have settled: each node sees exactly these nodes, is not
    fenced, drains nothing and owns exactly the shards whose target it is (so together they
    own each shard once). With `names` (in the order of `statuses`), each answers as its
    name; with `gates` (ids), each has those gates' streams."""
    names = [status.node for status in statuses] if names is None else list(names)
    placement = Placement(names)
    targets: dict[str, set[int]] = {name: set() for name in names}
    for shard in range(SHARD_COUNT):
        targets[placement.node_for_shard(shard)].add(shard)
    problems = []
    for name, status in zip(names, statuses, strict=True):
        if status.node != name:
            problems.append(f"{name} answers as {status.node}")
        if sorted(status.nodes) != sorted(names):
            problems.append(f"{name} sees nodes {sorted(status.nodes)}, not {sorted(names)}")
        if status.fenced:
            problems.append(f"{name} is fenced")
        owned = set(status.owned_shards)
        if owned != targets[name]:
            problems.append(
                f"{name} owns {len(owned)} shards, "
                f"{len(owned & targets[name])} of its {len(targets[name])}"
            )
        if status.draining_shards:
            problems.append(f"{name} drains {len(status.draining_shards)} shards")
        if gates is not None and sorted(status.gates) != sorted(gates):
            problems.append(f"{name} has streams of gates {sorted(status.gates)}")
    return problems


async def wait_settled(
    endpoints: Callable[[], Sequence[str]],
    timeout: float,
    *,
    names: Callable[[], Sequence[str]] | None = None,
    gates: Callable[[], Sequence[str]] | None = None,
    interval: float = 0.1,
    credentials: grpc.ChannelCredentials | None = None,
) -> float:
    """Waits (bounded) until the shards have settled (:func:`unsettled`), asking the nodes
    that should run for their Status every `interval` seconds, in a thread; returns the
    wall-clock time it saw them settled. `endpoints` says where those nodes answer, `names`
    what they call themselves and `gates` the ids of the gates they should have streams of;
    each is asked anew every time (nodes come and go). A node that does not answer is not
    settled yet. Over TLS with `credentials` (a node certificate of the cluster's CA)."""

    def problems() -> list[str]:
        try:
            statuses = [node_status(endpoint, credentials=credentials) for endpoint in endpoints()]
        except grpc.RpcError as error:
            return [f"Status failed: {error}"]
        return unsettled(
            statuses,
            None if names is None else names(),
            None if gates is None else gates(),
        )

    deadline = time.monotonic() + timeout
    while found := await asyncio.to_thread(problems):
        if time.monotonic() > deadline:
            raise AssertionError(f"the shards did not settle within {timeout:.0f}s: {found}")
        await asyncio.sleep(interval)
    return time.time()
