"""Membership metrics both services expose: the live nodes they see and their etcd watch."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from goverse.server._etcd_view import EtcdView
from goverse.server._membership import ClusterView


def membership_metrics(meter: metrics.Meter, service: str, view: ClusterView) -> None:
    """``goverse.<service>.membership.nodes`` (live nodes in the view, leaving ones
    included), ``….leaving_nodes`` (of those, the ones handing their shards off before they
    stop), ``….ready`` (1 while the view can route) and, with etcd, ``….watch_reconnects``
    (times the etcd watch broke and the view read etcd again)."""

    def nodes(_: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(view.nodes()))

    def leaving(_: CallbackOptions) -> Iterable[Observation]:
        yield Observation(sum(node.leaving for node in view.nodes().values()))

    def ready(_: CallbackOptions) -> Iterable[Observation]:
        yield Observation(int(view.ready))

    prefix = f"goverse.{service}.membership"
    meter.create_observable_gauge(
        f"{prefix}.nodes", callbacks=[nodes], unit="{node}", description="Live nodes seen"
    )
    meter.create_observable_gauge(
        f"{prefix}.leaving_nodes",
        callbacks=[leaving],
        unit="{node}",
        description="Live nodes seen that are leaving (handing their shards off)",
    )
    meter.create_observable_gauge(
        f"{prefix}.ready",
        callbacks=[ready],
        unit="1",
        description="1 while the cluster view can route (static: always)",
    )
    if isinstance(view, EtcdView):
        stats = view.stats

        def reconnects(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(stats.watch_reconnects)

        meter.create_observable_counter(
            f"{prefix}.watch_reconnects",
            callbacks=[reconnects],
            unit="{reconnect}",
            description="Times the etcd watch broke and the view read etcd again",
        )


__all__ = ["membership_metrics"]
