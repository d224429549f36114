"""Real goverse-node processes on loopback: routing, object calls across nodes, gate streams,
SIGTERM, flags."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.placement import Placement
from goverse.v1 import node_pb2, node_pb2_grpc
from goverse.wire import pack, unpack
from tests.helpers.processes import ANY_PORT, BIN, ProcessGroup, ServiceProcess
from tests.helpers.waiting import wait_until

EXIT_BOUND_SECONDS = 8.0


class NodeClient:
    """A raw NodeService stub to one node process."""

    def __init__(self, proc: ServiceProcess) -> None:
        self.proc = proc
        self.channel = grpc.insecure_channel(proc.address)
        self.stub: Any = node_pb2_grpc.NodeServiceStub(self.channel)

    def call(
        self,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[Message],
        client_id: str = "",
    ) -> Any:
        reply = self.stub.CallObject(
            node_pb2.NodeCallObjectRequest(
                object_type=object_type,
                object_id=object_id,
                method=method,
                request=pack(request),
                caller=node_pb2.Caller(client_id=client_id),
            ),
            timeout=15,
        )
        return unpack(reply.response, response_type)

    def listed(self, object_type: str = "") -> list[str]:
        reply = self.stub.ListObjects(
            node_pb2.ListObjectsRequest(object_type=object_type), timeout=10
        )
        return sorted(ref.object_id for ref in reply.objects)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def cluster(processes: ProcessGroup) -> Iterator[tuple[NodeClient, NodeClient, Placement]]:
    """Two node processes that know each other (on unix sockets), with a client for each."""
    nodes = processes.node_addresses(2)
    procs = [processes.node(address, nodes, wait=False) for address in nodes]
    for proc in procs:
        proc.wait_ready()
    clients = [NodeClient(proc) for proc in procs]
    yield clients[0], clients[1], Placement(nodes)
    for client in clients:
        client.close()


def owned(placement: Placement, object_type: str, node: str, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(1000)]
    return [i for i in ids if placement.node_for(object_type, i) == node][:count]


def test_calls_land_on_the_owner_and_the_wrong_node_refuses(
    cluster: tuple[NodeClient, NodeClient, Placement],
) -> None:
    """Each counter is served by the node placement names; the other node answers
    FAILED_PRECONDITION naming the owner, and activates nothing."""
    first, second, placement = cluster
    mine = {
        client: owned(placement, "Counter", client.proc.address, "c", 3)
        for client in (first, second)
    }
    for client, ids in mine.items():
        for object_id in ids:
            value = client.call(
                "Counter", object_id, "Increment", IncrementRequest(by=4), CounterValue
            )
            assert value.value == 4
    assert first.listed("Counter") == sorted(mine[first])
    assert second.listed("Counter") == sorted(mine[second])

    with pytest.raises(grpc.RpcError) as raised:
        first.call("Counter", mine[second][0], "Get", GetRequest(), CounterValue)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert second.proc.address in raised.value.details()
    assert first.listed("Counter") == sorted(mine[first])


def test_bad_input_gets_the_right_status_and_the_node_keeps_serving(
    cluster: tuple[NodeClient, NodeClient, Placement],
) -> None:
    first, _, placement = cluster
    good = owned(placement, "Counter", first.proc.address, "good", 1)[0]
    long_id = "x" * 300
    cases = [
        ("Nope", good, "Get", GetRequest(), grpc.StatusCode.NOT_FOUND),
        ("Counter", good, "Nope", GetRequest(), grpc.StatusCode.UNIMPLEMENTED),
        ("Counter", good, "Increment", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        ("Counter", "", "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        ("Counter", long_id, "Get", GetRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for object_type, object_id, method, request, code in cases:
        with pytest.raises(grpc.RpcError) as raised:
            first.call(object_type, object_id, method, request, CounterValue)
        assert raised.value.code() == code, (object_type, object_id[:20], method)
    assert first.call("Counter", good, "Increment", IncrementRequest(by=1), CounterValue).value == 1
    assert first.proc.alive()


def test_an_object_calls_an_object_on_the_other_node(
    cluster: tuple[NodeClient, NodeClient, Placement],
) -> None:
    """Relay on the first node increments a Counter owned by the second node."""
    first, second, placement = cluster
    relay = owned(placement, "Relay", first.proc.address, "relay", 1)[0]
    counter = owned(placement, "Counter", second.proc.address, "counter", 1)[0]
    for expected in (1, 2, 3):
        reply = first.call(
            "Relay", relay, "IncrementCounter", StringValue(value=counter), CounterValue
        )
        assert reply.value == expected
    assert second.listed("Counter") == [counter]
    assert first.listed("Counter") == []
    assert second.call("Counter", counter, "Get", GetRequest(), CounterValue).value == 3


def test_a_gate_stream_gets_the_ack_then_pushes(
    cluster: tuple[NodeClient, NodeClient, Placement],
) -> None:
    """A RegisterGate stream carries the ack first, then what a Pusher pushes to its clients."""
    first, _, placement = cluster
    pusher = owned(placement, "Pusher", first.proc.address, "pusher", 1)[0]
    stream = first.stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id="gate-a"), timeout=30)
    ack = next(stream)
    assert ack.WhichOneof("event") == "ack"
    assert ack.ack.node == first.proc.address
    count = first.call(
        "Pusher", pusher, "PushTo", StringValue(value="gate-a/1,gate-a/2"), Int64Value
    )
    assert count.value == 2
    message = next(stream)
    while message.WhichOneof("event") == "heartbeat":
        message = next(stream)
    envelope = message.envelopes.envelopes[0]
    assert list(envelope.client_message.client_ids) == ["gate-a/1", "gate-a/2"]
    value = StringValue()
    assert envelope.client_message.message.Unpack(value)
    assert value.value == pusher
    status = first.stub.Status(node_pb2.StatusRequest(), timeout=10)
    assert list(status.gates) == ["gate-a"]
    stream.cancel()


def test_sigterm_with_a_gate_stream_attached_exits_0_in_time(processes: ProcessGroup) -> None:
    """SIGTERM while a gate holds a stream: the stream ends with OK, the process exits 0
    well within the 5 s budget (asserted: 8 s)."""
    proc = processes.node()
    client = NodeClient(proc)
    stream = client.stub.RegisterGate(node_pb2.RegisterGateRequest(gate_id="gate-a"), timeout=60)
    assert next(stream).WhichOneof("event") == "ack"
    ended: dict[str, Any] = {}

    def drain() -> None:
        try:
            for _ in stream:
                pass
            ended["code"] = stream.code()
        except grpc.RpcError as error:
            ended["code"] = error.code()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    code = proc.terminate(timeout=30)
    reader.join(timeout=10)
    client.close()
    print(f"node SIGTERM exit_seconds={proc.exit_seconds:.3f}")
    assert code == 0, proc.output()
    assert proc.exit_seconds is not None
    assert proc.exit_seconds < EXIT_BOUND_SECONDS
    assert ended.get("code") == grpc.StatusCode.OK
    events = [line["event"] for line in proc.log_lines()]
    assert "stopped" in events
    assert "tasks still running after the shutdown timeout" not in events


def test_help_lists_every_flag() -> None:
    result = subprocess.run(
        [str(BIN / "goverse-node"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for flag in (
        "--listen",
        "--advertise",
        "--nodes",
        "--objects",
        "--shutdown-timeout",
        "--gate-queue-size",
        "--heartbeat-interval",
        "--max-message-bytes",
        "--call-timeout",
        "--log-level",
        "--log-format",
    ):
        assert flag in result.stdout
        assert "GOVERSE_" + flag[2:].upper().replace("-", "_") in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--listen=127.0.0.1:7000", "--advertise=127.0.0.1:7001", "--nodes=127.0.0.1:7000"],
            "is not in --nodes",
        ),
        (["--shutdown-timeout=forever"], "--shutdown-timeout"),
        (["--nodes=not-an-address"], "--nodes"),
        (["--gate-queue-size=-1"], "--gate-queue-size"),
    ],
)
def test_invalid_flags_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run(
        [str(BIN / "goverse-node"), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_an_object_module_that_cannot_load_exits_2() -> None:
    """The node refuses to start, naming the module it could not import."""
    result = subprocess.run(
        [
            str(BIN / "goverse-node"),
            f"--listen={ANY_PORT}",
            "--objects=goverse.examples.counter,no.such.module",
            "--log-format=json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no.such.module" in result.stdout


def test_a_busy_port_exits_1_with_a_clear_error(processes: ProcessGroup) -> None:
    """A second node told to listen on the port the first one bound exits 1 at once."""
    first = processes.node()
    assert first.ready is not None
    started = time.monotonic()
    proc = processes.node(first.ready.listen, wait=False)
    assert proc.process is not None
    code = proc.process.wait(60)
    assert code == 1
    assert "cannot listen on 127.0.0.1:" in proc.output()
    assert time.monotonic() - started < 60


def test_sigint_stops_like_sigterm(processes: ProcessGroup) -> None:
    proc = processes.node()
    proc.signal(signal.SIGINT)
    assert proc.process is not None
    assert proc.process.wait(30) == 0
    wait_until(lambda: not proc.alive(), 5)
