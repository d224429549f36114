"""Gate metrics: the instruments a gate exposes on its Prometheus endpoint.

Every instrument, its Prometheus name and its attributes are listed in
``docs/observability.md``. Observable instruments read the gate's state at scrape time, on the
endpoint's thread: each callback takes an atomic snapshot and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from goverse.gate._clients import ClientRegistry
from goverse.gate._node_link import LinkState, NodeLink
from goverse.server import DropReason

DROP_REASONS = (
    DropReason.CLIENT_CLOSED,
    DropReason.QUEUE_FULL,
    DropReason.SLOW_CONSUMER,
    DropReason.MESSAGE_TOO_LARGE,
    DropReason.UNKNOWN_CLIENT,
)
"""The reasons a gate drops pushes for, reported (as 0) before any push was dropped for them."""


class GateMetrics:
    """Creates the gate's instruments on `meter` (call durations: the service skeleton's).

    `links` is the gate's live map of node links (filled when the gate starts).
    """

    def __init__(
        self, meter: metrics.Meter, registry: ClientRegistry, links: Mapping[str, NodeLink]
    ) -> None:
        self._registry = registry
        self._links = links
        gauges = {
            "goverse.gate.clients": (self._clients, "{client}", "Clients registered now"),
            "goverse.gate.client_queue.depth": (
                self._queue_depth,
                "{message}",
                "Pushes queued for clients now, all clients together",
            ),
            "goverse.gate.client_queue.max_depth": (
                self._queue_max_depth,
                "{message}",
                "Pushes queued for the client with the longest queue",
            ),
            "goverse.gate.client_queue.size": (
                self._queue_bytes,
                "By",
                "Bytes of pushes queued for clients now, all clients together",
            ),
            "goverse.gate.node_links": (
                self._link_states,
                "{link}",
                "Node links by state (connecting, connected, backing_off, stopped)",
            ),
        }
        for name, (callback, unit, description) in gauges.items():
            meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )
        counters = {
            "goverse.gate.node_link.reconnects": (
                self._reconnects,
                "{reconnect}",
                "Connection attempts of a node link after its first, by node",
            ),
            "goverse.gate.pushes.delivered": (
                self._delivered,
                "{push}",
                "Pushes from nodes queued for a client of this gate",
            ),
            "goverse.gate.pushes.dropped": (
                self._dropped,
                "{push}",
                "Pushes from nodes the gate dropped, by reason",
            ),
            "goverse.gate.slow_consumer.disconnects": (
                self._slow_consumer_disconnects,
                "{client}",
                "Clients disconnected because they did not keep up with their pushes",
            ),
        }
        for name, (callback, unit, description) in counters.items():
            meter.create_observable_counter(
                name, callbacks=[callback], unit=unit, description=description
            )
        self._registrations_refused = meter.create_counter(
            "goverse.gate.registrations.refused",
            unit="{registration}",
            description="Registrations refused before a client was registered, by reason "
            "(the authenticator's: missing_token, expired, wrong_audience, ...; or "
            "registration_rate)",
        )

    def registration_refused(self, reason: str) -> None:
        """Counts one registration refused for `reason` (a fixed word)."""
        self._registrations_refused.add(1, {"reason": reason})

    def _proxies_queued(self) -> list[tuple[int, int]]:
        proxies = [self._registry.get(client_id) for client_id in self._registry.client_ids()]
        return [(proxy.queued, proxy.queued_bytes) for proxy in proxies if proxy is not None]

    def _clients(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._registry))

    def _queue_depth(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(sum(queued for queued, _ in self._proxies_queued()))

    def _queue_max_depth(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(max((queued for queued, _ in self._proxies_queued()), default=0))

    def _queue_bytes(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(sum(size for _, size in self._proxies_queued()))

    def _link_states(self, _: CallbackOptions) -> Iterable[Observation]:
        states = [link.state for link in list(self._links.values())]
        for state in LinkState:
            yield Observation(states.count(state), {"state": state.value})

    def _reconnects(self, _: CallbackOptions) -> Iterable[Observation]:
        for node, link in list(self._links.items()):
            yield Observation(link.reconnects, {"node": node})

    def _delivered(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._registry.delivered)

    def _dropped(self, _: CallbackOptions) -> Iterable[Observation]:
        dropped = dict.fromkeys(DROP_REASONS, 0) | dict(self._registry.dropped)
        for reason, count in dropped.items():
            yield Observation(count, {"reason": reason})

    def _slow_consumer_disconnects(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._registry.slow_consumer_disconnects)


__all__ = ["GateMetrics"]
