"""A service's connection to its cluster in etcd: the client and the watched view, opened and
closed with the service, and foreign data turned into the one error line an operator needs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import structlog

from goverse.server._cluster_keys import ForeignData, encode_gate
from goverse.server._etcd import EtcdClient, EtcdClosed, EtcdError
from goverse.server._etcd_view import EtcdView
from goverse.server._lease import Lease
from goverse.server._lifecycle import StartupError
from goverse.server._service_settings import ServiceSettings
from goverse.transport import Backoff

log = structlog.get_logger(__name__)


def _foreign(error: ForeignData, prefix: str) -> StartupError:
    return StartupError(
        f"etcd prefix {prefix} holds data that is not this cluster's ({error}): give "
        "--etcd-prefix a prefix of its own"
    )


class EtcdMembership:
    """The etcd client and view of one gate or node (``--etcd-endpoints``).

    :meth:`open` reads the prefix once while the service starts: foreign data there is a
    :class:`~goverse.server.StartupError` (exit code 2); etcd not answering is not an error
    (the service says so once and stays not ready while :meth:`watch` keeps trying).
    :meth:`watch` (a task the service's supervisor owns) keeps the view current; foreign data
    found when the first read only succeeds later ends the service through `on_fatal`.
    """

    def __init__(self, config: ServiceSettings) -> None:
        assert config.etcd_endpoints is not None, "etcd membership needs --etcd-endpoints"
        self._prefix = config.etcd_prefix
        self._endpoints = ",".join(config.etcd_endpoints)
        self._ttl = config.lease_ttl
        self._gate_lease: Lease | None = None
        self.client = EtcdClient(config.etcd_endpoints, config.etcd_timeout)
        self.view = EtcdView(self.client, config.etcd_prefix, lease_ttl=config.lease_ttl)

    async def open(self) -> None:
        try:
            await self.view.start()
        except ForeignData as error:
            raise _foreign(error, self._prefix) from None
        except EtcdError as error:
            log.warning(
                "etcd does not answer: not ready until it does",
                endpoints=self._endpoints,
                error=str(error),
            )
        else:
            log.info("cluster view loaded from etcd", endpoints=self._endpoints)

    async def watch(self, on_fatal: Callable[[BaseException], None]) -> None:
        try:
            await self.view.run()
        except ForeignData as error:
            log.error("foreign data under the etcd prefix", prefix=self._prefix, error=str(error))
            on_fatal(_foreign(error, self._prefix))

    async def register_gate(self, gate_id: str, address: str) -> None:
        """Keeps ``gates/<gate-id>`` on a lease of this gate while it runs (for operators:
        nothing routes by it), registering again with a new lease whenever one is lost.
        Runs until cancelled (a task the gate's supervisor owns); :meth:`close` revokes."""
        retry = Backoff(timedelta(milliseconds=200), timedelta(seconds=2))
        while True:
            lost = asyncio.Event()
            lease = Lease(self.client, self._ttl, on_lost=lost.set)
            try:
                await lease.grant()
                self._gate_lease = lease
                key = self.view.keys.gate(gate_id)
                await self.client.put(key, encode_gate(address), lease.id)
                retry.reset()
                await lease.run()
            except EtcdClosed:
                raise
            except EtcdError as error:
                if retry.attempt == 0:
                    log.info("gate not registered in etcd yet", error=str(error))
                await asyncio.sleep(retry.next_delay())

    async def close(self) -> None:
        """Revokes the gate's registration lease (if any), then closes the client."""
        if self._gate_lease is not None:
            await self._gate_lease.revoke()
        await self.client.close()


__all__ = ["EtcdMembership"]
