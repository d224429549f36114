"""Node metrics: the instruments a node exposes on its Prometheus endpoint.

Every instrument, its Prometheus name and its attributes are listed in
``docs/observability.md``. Observable instruments read the node's state at scrape time, on the
endpoint's thread: each callback takes an atomic snapshot and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from goverse.node._gate_streams import GateStreams
from goverse.node._object_host import ObjectHost
from goverse.node._object_state import ObjectState
from goverse.node._ownership import ShardOwnership
from goverse.node._shards import ShardState, ShardTable


class NodeMetrics:
    """Creates the node's instruments on `meter` (call durations: the service skeleton's)."""

    def __init__(
        self,
        meter: metrics.Meter,
        host: ObjectHost,
        gates: GateStreams,
        shards: ShardTable,
        ownership: ShardOwnership | None = None,
        state: ObjectState | None = None,
    ) -> None:
        self._host = host
        self._state = state
        self._store = None if state is None else state.store
        self._gates = gates
        self._shards = shards
        self._ownership = ownership
        meter.create_observable_gauge(
            "goverse.node.shards",
            callbacks=[self._shard_states],
            unit="{shard}",
            description="Shards this node owns and is handing off, by state (owned, draining)",
        )
        if ownership is not None:
            counters = {
                "goverse.node.shard_claims": (self._claims, "{shard}", "Shards claimed"),
                "goverse.node.handoffs": (
                    self._handoffs,
                    "{shard}",
                    "Shard handoffs, by outcome (started, finished, timed_out)",
                ),
                "goverse.node.fences": (
                    self._fences,
                    "{fence}",
                    "Times the node fenced itself (its lease could not be renewed in time)",
                ),
            }
            for name, (callback, unit, description) in counters.items():
                meter.create_observable_counter(
                    name, callbacks=[callback], unit=unit, description=description
                )
        if state is not None and state.store is not None:
            meter.create_observable_gauge(
                "goverse.node.store.available",
                callbacks=[self._store_available],
                description="1 while the state store is open and its last transaction "
                "succeeded, else 0",
            )
            meter.create_observable_counter(
                "goverse.node.store.transactions",
                callbacks=[self._store_transactions],
                unit="{transaction}",
                description="Store transactions attempted (each carries many operations)",
            )
            meter.create_observable_counter(
                "goverse.node.store.operations",
                callbacks=[self._store_operations],
                unit="{operation}",
                description="Loads, saves and deletes of object state sent to the store",
            )
        meter.create_observable_gauge(
            "goverse.node.objects.active",
            callbacks=[self._active_objects],
            unit="{object}",
            description="Objects active on this node, by type",
        )
        meter.create_observable_gauge(
            "goverse.node.gate_streams",
            callbacks=[self._gate_streams],
            unit="{stream}",
            description="Gates with an open RegisterGate stream to this node",
        )
        meter.create_observable_gauge(
            "goverse.node.gate_queue.depth",
            callbacks=[self._gate_queue_depth],
            unit="{envelope}",
            description="Envelopes queued for each gate's stream",
        )
        meter.create_observable_counter(
            "goverse.node.pushes.queued",
            callbacks=[self._pushes_queued],
            unit="{push}",
            description="Pushes queued for a gate (one per client id; one per gate for broadcasts)",
        )
        meter.create_observable_counter(
            "goverse.node.pushes.dropped",
            callbacks=[self._pushes_dropped],
            unit="{push}",
            description="Pushes dropped by the node, by reason and gate",
        )

    def _active_objects(self, _: CallbackOptions) -> Iterable[Observation]:
        counts = self._host.active_by_type()
        for object_type in self._host.types:
            yield Observation(counts.get(object_type, 0), {"object_type": object_type})

    def _shard_states(self, _: CallbackOptions) -> Iterable[Observation]:
        for state in (ShardState.OWNED, ShardState.DRAINING):
            yield Observation(self._shards.count(state), {"state": state.value})

    def _claims(self, _: CallbackOptions) -> Iterable[Observation]:
        assert self._ownership is not None
        yield Observation(self._ownership.stats.claims)

    def _handoffs(self, _: CallbackOptions) -> Iterable[Observation]:
        assert self._ownership is not None
        stats = self._ownership.stats
        yield Observation(stats.handoffs_started, {"outcome": "started"})
        yield Observation(stats.handoffs_finished, {"outcome": "finished"})
        yield Observation(stats.handoffs_timed_out, {"outcome": "timed_out"})

    def _fences(self, _: CallbackOptions) -> Iterable[Observation]:
        assert self._ownership is not None
        yield Observation(self._ownership.stats.fences)

    def _store_available(self, _: CallbackOptions) -> Iterable[Observation]:
        assert self._state is not None
        yield Observation(int(self._state.available))

    def _store_transactions(self, _: CallbackOptions) -> Iterable[Observation]:
        assert self._store is not None
        yield Observation(self._store.transactions)

    def _store_operations(self, _: CallbackOptions) -> Iterable[Observation]:
        assert self._store is not None
        yield Observation(self._store.ops)

    def _gate_streams(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._gates.gate_ids()))

    def _gate_queue_depth(self, _: CallbackOptions) -> Iterable[Observation]:
        # Registered gates only: at most --max-gates of them, each under its own id.
        for gate_id, depth in self._gates.queue_depths().items():
            yield Observation(depth, {"gate_id": gate_id})

    def _pushes_queued(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._gates.queued_total)

    def _pushes_dropped(self, _: CallbackOptions) -> Iterable[Observation]:
        # By registered gate (forgotten when it leaves: its series ends), or none ("").
        for (reason, gate_id), count in self._gates.dropped_by_gate().items():
            yield Observation(count, {"reason": reason, "gate_id": gate_id})


__all__ = ["NodeMetrics"]
