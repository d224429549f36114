"""ServiceApp: port 0, the ready file, the stop sequence and its budget, on both services."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf.wrappers_pb2 import Int64Value
from grpc_health.v1 import health_pb2, health_pb2_grpc

from goverse.gate import GateApp, GateConfig
from goverse.node import NodeApp
from goverse.server import BoundAddress, ServiceApp, ShutdownBudget
from goverse.v1 import node_pb2, node_pb2_grpc
from goverse.wire import pack, unpack
from tests.helpers.waiting import eventually
from tests.unit.node.conftest import node_config

COMMON_LISTENING_KEYS = {"service", "pid", "address", "listen", "port", "metrics_port"}
STOPPED_KEYS = {
    "elapsed_s",
    "timeout_s",
    "streams",
    "streams_left",
    "calls",
    "calls_left",
    "tasks_pending",
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_is_spent_in_order_and_never_goes_negative() -> None:
    """Each step gets at most what is left; a share is of the whole budget, capped by what is
    left; a reserve is kept back for later steps."""
    clock = FakeClock()
    budget = ShutdownBudget(timedelta(seconds=5), clock)
    assert budget.remaining() == 5.0
    assert budget.share(0.5) == 2.5
    clock.now += 4.0
    assert budget.elapsed() == 4.0
    assert budget.share(0.5) == pytest.approx(1.0)
    assert budget.keeping(0.4) == pytest.approx(0.6)
    assert budget.keeping(2.0) == 0.0
    clock.now += 10.0
    assert budget.remaining() == 0.0


@pytest.mark.parametrize(
    ("listen", "port", "expected"),
    [
        ("0.0.0.0:0", 4242, BoundAddress("0.0.0.0:4242", "127.0.0.1:4242", 4242)),
        ("127.0.0.1:0", 4242, BoundAddress("127.0.0.1:4242", "127.0.0.1:4242", 4242)),
        ("[::]:0", 4242, BoundAddress("[::]:4242", "[::1]:4242", 4242)),
        ("10.1.2.3:7000", 7000, BoundAddress("10.1.2.3:7000", "10.1.2.3:7000", 7000)),
        ("unix:/run/n.sock", 0, BoundAddress("unix:/run/n.sock", "unix:/run/n.sock", 0)),
    ],
)
def test_the_bound_address_says_where_a_local_process_dials(
    listen: str, port: int, expected: BoundAddress
) -> None:
    assert BoundAddress.of(listen, port) == expected


def gate_config(tmp_path: Path, **overrides: Any) -> GateConfig:
    settings: dict[str, Any] = {
        "gate_id": "g1",
        "nodes": ("127.0.0.1:1",),
        "listen": "127.0.0.1:0",
        "reconnect_initial": timedelta(milliseconds=50),
        "reconnect_max": timedelta(milliseconds=500),
        "ready_file": tmp_path / "gate.json",
    }
    settings.update(overrides)
    return GateConfig(**settings)


@pytest.fixture(params=["gate", "node"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ServiceApp[Any]]:
    """A gate or a node built on ServiceApp, listening on port 0 with a ready file."""
    built: ServiceApp[Any]
    if request.param == "gate":
        built = GateApp(gate_config(tmp_path))
    else:
        built = NodeApp(node_config(ready_file=tmp_path / "node.json"))
    try:
        yield built
    finally:
        await built.stop()


async def test_port_0_binds_a_free_port_reported_in_the_log_and_the_ready_file(
    app: ServiceApp[Any],
) -> None:
    """With --listen 127.0.0.1:0 the service binds a free port, logs it in `listening` and
    writes it to the ready file once it serves (health SERVING); the file goes on stop."""
    ready = app.config.ready_file
    assert ready is not None
    assert not ready.exists()
    with structlog.testing.capture_logs() as logs:
        await app.start()
    assert app.port > 0
    listening = [line for line in logs if line["event"] == "listening"]
    assert len(listening) == 1
    assert listening[0].keys() >= COMMON_LISTENING_KEYS
    assert listening[0]["address"] == f"127.0.0.1:{app.port}"
    written = json.loads(ready.read_text())
    assert written["address"] == app.address == f"127.0.0.1:{app.port}"
    assert written["service"] == app.service
    assert {key: listening[0][key] for key in written} == written
    async with grpc.aio.insecure_channel(written["address"]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await app.stop()
    assert not ready.exists()


async def test_a_vital_task_that_crashes_fails_the_service(app: ServiceApp[Any]) -> None:
    """The service's own loops (its view, store, upkeep …) are vital: when one raises, the
    service fails with that error (the process stops and exits with it), instead of serving
    on, healthy by every probe, without that loop."""
    await app.start()

    async def broken_loop() -> None:
        raise RuntimeError("the loop broke")

    app.supervisor.spawn("a-loop", broken_loop(), vital=True)
    async with asyncio.timeout(5):
        error = await app.failed()
    assert isinstance(error, RuntimeError)
    assert str(error) == "the loop broke"


async def test_both_services_log_stopping_and_stopped_with_the_same_fields(
    app: ServiceApp[Any],
) -> None:
    await app.start()
    with structlog.testing.capture_logs() as logs:
        await app.stop()
    events = {line["event"]: line for line in logs}
    assert set(events["stopping"]) >= {"timeout_s"}
    assert set(events["stopped"]) - {"event", "log_level"} == STOPPED_KEYS
    assert events["stopped"]["elapsed_s"] < events["stopped"]["timeout_s"]


async def test_stop_is_idempotent_concurrent_safe_and_final(app: ServiceApp[Any]) -> None:
    """stop() before start does nothing; concurrent and repeated stops return once the first
    has finished; a stopped app cannot start again."""
    await app.stop()
    with pytest.raises(RuntimeError):
        await app.start()


async def test_a_started_app_stops_concurrently_and_twice(app: ServiceApp[Any]) -> None:
    await app.start()
    await asyncio.gather(app.stop(), app.stop())
    await app.stop()
    assert not app.running
    assert len(app.supervisor) == 0


async def test_the_stop_waits_for_calls_in_flight_within_the_budget() -> None:
    """A unary call in flight when the stop begins completes (step 3) instead of being cut
    off by the server's grace."""
    app = NodeApp(node_config(shutdown_timeout=timedelta(seconds=5)))
    async with app, grpc.aio.insecure_channel(app.address) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        call = stub.CallObject(
            node_pb2.NodeCallObjectRequest(
                object_type="Sleeper",
                object_id="s",
                method="Sleep",
                request=pack(Int64Value(value=1500)),
            ),
            timeout=10,
        )
        await eventually(lambda: len(app.calls) == 1, what="the call to reach its handler")
        stopping = asyncio.ensure_future(app.stop())
        reply = await call
        assert unpack(reply.response, Int64Value).value == 1
        async with asyncio.timeout(10):
            await stopping
