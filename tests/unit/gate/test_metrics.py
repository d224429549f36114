"""GateMetrics: the dropped-pushes counter speaks the shared drop vocabulary from the start."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from goverse.gate import ClientRegistry
from goverse.gate._metrics import GateMetrics
from goverse.server import DropReason
from tests.helpers.fake_node import to_clients


def dropped_by_reason(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        str(point.attributes["reason"]): int(point.value)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "goverse.gate.pushes.dropped"
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint) and point.attributes is not None
    }


def test_every_gate_drop_reason_is_reported_as_zero_then_counted() -> None:
    """Before any drop each reason the gate drops for is reported as 0, spelled as DropReason
    (message_too_large, not a gate-only spelling); a drop then counts under its reason."""
    reader = InMemoryMetricReader()
    registry = ClientRegistry(
        "g1", max_clients=10, queue_messages=10, queue_bytes=1 << 20, max_message_bytes=1 << 20
    )
    GateMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"), registry, {})
    assert dropped_by_reason(reader) == {
        "client_closed": 0,
        "message_too_large": 0,
        "queue_full": 0,
        "slow_consumer": 0,
        "unknown_client": 0,
    }
    registry.deliver(to_clients(["g1/nobody"], "lost"))
    assert dropped_by_reason(reader)[DropReason.UNKNOWN_CLIENT] == 1
