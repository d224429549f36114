"""NodeLinks: the gate's node links, following the cluster view — one for each live node."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import structlog

from goverse.gate._node_link import LinkState, NodeLink
from goverse.server import ClusterView, NodeInfo, Supervisor, first_of

log = structlog.get_logger(__name__)

LINK_TASK_PREFIX = "node-link:"
"""The supervisor's name of a link's task is this prefix and the node id."""
FOLLOWER_TASK = "node-links"
"""The supervisor's name of the task that follows the view."""
RECHECK_INTERVAL = 1.0
"""The follower looks at the view at least this often, changed or not: a view's readiness
can lapse without a new version (an etcd watch down for longer than the lease TTL)."""

OpenLink = Callable[[NodeInfo, Callable[[NodeLink], None]], NodeLink]
"""Makes the link to a node: ``open_link(node, on_state)``, `on_state` to pass to the link."""


class NodeLinks:
    """Keeps one :class:`NodeLink` for each node of ``view.nodes()`` and says whether the gate
    can route.

    :meth:`start` opens a link for each node the view names now, each run by the supervisor as
    ``node-link:<node-id>``, and starts the follower (``node-links``). On every change of the
    view the follower opens a link to each node that joined and cancels the link of each node
    that left (a node whose address changed gets a new link). A link is in :attr:`links` from
    when it is opened until its node leaves; a stop cancels every task through the
    supervisor, and the links stay, STOPPED.

    The gate is *routable* while the view is ready and at least one link is connected.
    `on_routable` is awaited with it once the follower starts and then on every flip (the gate
    reports it as the readiness of ``goverse.v1.GateService``).
    """

    def __init__(
        self,
        view: ClusterView,
        supervisor: Supervisor,
        open_link: OpenLink,
        on_routable: Callable[[bool], Awaitable[None]],
        *,
        recheck: float = RECHECK_INTERVAL,
    ) -> None:
        self._view = view
        self._supervisor = supervisor
        self._open_link = open_link
        self._on_routable = on_routable
        self._recheck = recheck
        self._links: dict[str, NodeLink] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._routable: bool | None = None
        self._started = False

    @property
    def links(self) -> Mapping[str, NodeLink]:
        """The links by node id (the live dict: metrics read it at scrape time)."""
        return self._links

    @property
    def connected(self) -> int:
        """Links connected now."""
        return sum(link.state is LinkState.CONNECTED for link in self._links.values())

    @property
    def reported(self) -> bool | None:
        """What `on_routable` was last awaited with (None before the first report)."""
        return self._routable

    @property
    def routable(self) -> bool:
        """Whether the view is ready and at least one link is connected."""
        return self._view.ready and self.connected > 0

    def start(self) -> None:
        """Opens the links of the nodes the view names now and starts following the view.
        Called once, from the running loop, while the supervisor takes tasks."""
        if self._started:
            raise RuntimeError("NodeLinks.start() was called twice")
        self._started = True
        self._reconcile()
        self._supervisor.spawn(FOLLOWER_TASK, self._follow(), vital=True)

    async def _follow(self) -> None:
        while True:
            version = self._view.version
            self._wake.clear()
            self._reconcile()
            await self._report()
            await first_of([self._view.changed(version), self._wake.wait()], self._recheck)

    def _reconcile(self) -> None:
        """Opens and closes links so that there is one for each node of the view."""
        nodes = self._view.nodes()
        closed = []
        for node_id, link in list(self._links.items()):
            node = nodes.get(node_id)
            if node is None or node.address != link.address:
                self._close(node_id)
                closed.append(node_id)
        opened = [self._open(node) for node_id, node in nodes.items() if node_id not in self._links]
        if self._routable is not None and (opened or closed):
            log.info("node links follow the view", opened=opened, closed=closed)

    def _open(self, node: NodeInfo) -> str:
        link = self._open_link(node, self._on_link_state)
        self._links[node.node_id] = link
        self._tasks[node.node_id] = self._supervisor.spawn(
            LINK_TASK_PREFIX + node.node_id, link.run()
        )
        return node.node_id

    def _close(self, node_id: str) -> None:
        # The link's run() cancels its RegisterGate call on the way out; the supervisor
        # forgets the task once it has ended.
        del self._links[node_id]
        self._tasks.pop(node_id).cancel()

    def _on_link_state(self, link: NodeLink) -> None:
        self._wake.set()

    async def _report(self) -> None:
        routable, was = self.routable, self._routable
        if routable == was:
            return
        self._routable = routable
        await self._on_routable(routable)
        if routable:
            reason = ""
        elif not self._view.ready:
            reason = "no shard map"
        elif not self._links:
            reason = "no node is live"
        else:
            reason = "no node link is connected"
        # Losing readiness is worth a warning; not being ready yet at start is not.
        log.log(
            logging.WARNING if was else logging.INFO,
            "gate ready" if routable else "gate not ready",
            reason=reason or None,
            nodes=len(self._links),
            links_connected=self.connected,
        )


__all__ = ["FOLLOWER_TASK", "LINK_TASK_PREFIX", "NodeLinks"]
