"""TLS between real processes: mutual TLS to nodes, roles from certificates, gate ids owned by
one identity, --max-gates, the plaintext health port, the SDK over TLS, and rotation."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc

from goverse import wire
from goverse.client import Client, ClientTLS
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.certs import CertFiles, SecretDir, TestCA
from tests.helpers.processes import BIN, ProcessGroup, ServiceProcess, serving
from tests.helpers.waiting import wait_until

RPC_TIMEOUT = 10.0


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def tls_flags(ca: TestCA, files: CertFiles) -> list[str]:
    return [*files.flags(), "--tls-ca", str(ca.path), "--health-port=0"]


def node_with_tls(processes: ProcessGroup, ca: TestCA, *extra: str) -> ServiceProcess:
    return processes.node(extra=[*tls_flags(ca, ca.issue("node", "n1")), *extra])


@contextlib.contextmanager
def node_stub(proc: ServiceProcess, ca: TestCA | None, files: CertFiles | None) -> Iterator[Any]:
    """A NodeService stub to `proc`: plaintext without `ca`, else TLS verifying `ca` and
    presenting `files` (None: no client certificate)."""
    if ca is None:
        channel = grpc.insecure_channel(proc.address)
    else:
        credentials = grpc.ssl_channel_credentials(
            ca.pem,
            None if files is None else files.key.read_bytes(),
            None if files is None else files.cert.read_bytes(),
        )
        channel = grpc.secure_channel(proc.address, credentials)
    with channel:
        yield node_pb2_grpc.NodeServiceStub(channel)


def status_code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    code: grpc.StatusCode = raised.value.code()
    return code


def register(stub: Any, gate_id: str, instance: str = "") -> Any:
    """Opens RegisterGate as `gate_id` (from the gate process `instance`) and reads its
    acknowledgement (or its error)."""
    request = node_pb2.RegisterGateRequest(gate_id=gate_id, instance=instance)
    stream = stub.RegisterGate(request, timeout=30)
    first = next(stream)
    assert first.WhichOneof("event") == "ack"
    return stream


def who_am_i(stub: Any, client_id: str) -> str:
    reply = stub.CallObject(
        node_pb2.NodeCallObjectRequest(
            object_type="Pusher",
            object_id="p",
            method="WhoAmI",
            request=wire.pack(Empty()),
            caller=node_pb2.Caller(client_id=client_id),
        ),
        timeout=RPC_TIMEOUT,
    )
    return wire.unpack(reply.response, StringValue).value


def test_node_with_tls_refuses_plaintext(processes: ProcessGroup, ca: TestCA) -> None:
    """A node given --tls-cert takes no plaintext connection on its listen address."""
    node = node_with_tls(processes, ca)
    with node_stub(node, None, None) as stub:
        code = status_code(lambda: stub.Status(node_pb2.StatusRequest(), timeout=3))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert node.alive()


def test_health_port_answers_in_plaintext_and_serves_nothing_else(
    processes: ProcessGroup, ca: TestCA
) -> None:
    """--health-port serves grpc.health.v1 without TLS (a kubelet probe), and only that."""
    node = node_with_tls(processes, ca)
    with grpc.insecure_channel(node.health_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", wire.NODE_SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = node_pb2_grpc.NodeServiceStub(channel)
        code = status_code(lambda: stub.Status(node_pb2.StatusRequest(), timeout=5))
    assert code is grpc.StatusCode.UNIMPLEMENTED


def test_gate_certificate_of_the_cluster_ca_is_served(processes: ProcessGroup, ca: TestCA) -> None:
    """A gate certificate of the cluster CA may register a gate and call objects, and the
    client id it sends reaches the object."""
    node = node_with_tls(processes, ca)
    with node_stub(node, ca, ca.issue("gate", "g1")) as stub:
        stream = register(stub, "gate-a")
        assert who_am_i(stub, "gate-a-1") == "gate-a-1"
        assert stub.Status(node_pb2.StatusRequest(), timeout=5).gates == ["gate-a"]
        stream.cancel()


@pytest.mark.parametrize("which", ["wrong CA", "expired", "no client certificate"])
def test_node_refuses_peers_without_a_valid_client_certificate(
    processes: ProcessGroup, ca: TestCA, tmp_path: Path, which: str
) -> None:
    """The handshake fails (UNAVAILABLE) for a certificate of another CA, an expired one, or
    none; the node keeps serving."""
    node = node_with_tls(processes, ca)
    files: CertFiles | None
    if which == "wrong CA":
        files = TestCA(tmp_path / "other", name="other CA").issue("gate", "g1")
    elif which == "expired":
        files = ca.issue("gate", "old", expired=True)
    else:
        files = None
    with node_stub(node, ca, files) as stub:
        code = status_code(lambda: stub.Status(node_pb2.StatusRequest(), timeout=3))
    assert code is grpc.StatusCode.UNAVAILABLE
    with node_stub(node, ca, ca.issue("gate", "g1")) as stub:
        assert stub.Status(node_pb2.StatusRequest(), timeout=5).node


@pytest.mark.parametrize(
    ("role", "uri"),
    [("client", None), ("", None), ("gate", "spiffe://elsewhere/gate/g1")],
    ids=["client role", "no URI SAN", "other trust domain"],
)
def test_node_refuses_certificates_of_no_goverse_role(
    processes: ProcessGroup, ca: TestCA, role: str, uri: str | None
) -> None:
    """A certificate of the cluster CA that says neither gate nor node of goverse may not
    register a gate nor call: PERMISSION_DENIED."""
    node = node_with_tls(processes, ca)
    with node_stub(node, ca, ca.issue(role, "x", uri=uri)) as stub:
        assert status_code(lambda: register(stub, "gate-x")) is grpc.StatusCode.PERMISSION_DENIED
        assert status_code(lambda: who_am_i(stub, "")) is grpc.StatusCode.PERMISSION_DENIED
        code = status_code(lambda: stub.ListObjects(node_pb2.ListObjectsRequest(), timeout=5))
        assert code is grpc.StatusCode.PERMISSION_DENIED


def test_node_certificate_may_call_but_not_register_a_gate_nor_name_a_client(
    processes: ProcessGroup, ca: TestCA
) -> None:
    """A node's certificate calls objects (node to node), but RegisterGate is refused and
    the client id it sends is ignored: only a gate vouches for a client."""
    node = node_with_tls(processes, ca)
    with node_stub(node, ca, ca.issue("node", "n2")) as stub:
        assert status_code(lambda: register(stub, "gate-x")) is grpc.StatusCode.PERMISSION_DENIED
        assert who_am_i(stub, "gate-a-1") == ""


def test_gate_id_taken_by_another_identity_is_refused(processes: ProcessGroup, ca: TestCA) -> None:
    """While a gate id is registered, RegisterGate for it from another gate certificate is
    refused (PERMISSION_DENIED) and the owner's stream stays; the same identity replaces it."""
    node = node_with_tls(processes, ca)
    with (
        node_stub(node, ca, ca.issue("gate", "g1")) as owner,
        node_stub(node, ca, ca.issue("gate", "g2")) as other,
        node_stub(node, ca, ca.issue("gate", "g1", file_stem="gate-g1-again")) as same,
    ):
        first = register(owner, "gate-a")
        assert status_code(lambda: register(other, "gate-a")) is grpc.StatusCode.PERMISSION_DENIED
        assert owner.Status(node_pb2.StatusRequest(), timeout=5).gates == ["gate-a"]
        second = register(same, "gate-a")
        for message in first:  # the replaced stream ends with OK, reason "replaced"
            assert message.WhichOneof("event") != "envelopes"
        assert wire.close_reason_of(first.trailing_metadata()) is wire.CloseReason.REPLACED
        second.cancel()


def test_gate_id_taken_by_another_process_of_the_same_identity_is_refused(
    processes: ProcessGroup, ca: TestCA
) -> None:
    """Gates sharing one certificate identity (the chart's one Secret for every gate pod):
    while a gate id is registered, RegisterGate for it from another gate process (another
    instance) is refused with ALREADY_EXISTS and the owner's stream stays; the owner's own
    reconnection (its instance) still replaces it."""
    node = node_with_tls(processes, ca)
    with (
        node_stub(node, ca, ca.issue("gate", "gates")) as owner,
        node_stub(node, ca, ca.issue("gate", "gates", file_stem="gates-other-pod")) as other,
    ):
        first = register(owner, "gate-a", instance="pod-1")
        with pytest.raises(grpc.RpcError) as raised:
            register(other, "gate-a", instance="pod-2")
        assert raised.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "another gate process" in raised.value.details()
        assert owner.Status(node_pb2.StatusRequest(), timeout=5).gates == ["gate-a"]
        second = register(other, "gate-a", instance="pod-1")
        for message in first:  # the replaced stream ends with OK, reason "replaced"
            assert message.WhichOneof("event") != "envelopes"
        assert wire.close_reason_of(first.trailing_metadata()) is wire.CloseReason.REPLACED
        second.cancel()


def link_events(gate: ServiceProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in gate.log_lines() if line.get("event", "").startswith(event)]


@pytest.mark.parametrize("tls", [True, False], ids=["one shared certificate", "plaintext"])
def test_two_gate_processes_given_one_gate_id_do_not_take_each_others_stream(
    processes: ProcessGroup, ca: TestCA, tls: bool
) -> None:
    """Two real gates with the same --gate-id and the same identity (one certificate for
    every gate, or plaintext): the node refuses the second with ALREADY_EXISTS and the first
    keeps its link and its readiness. Before, each registration replaced the other's
    stream in turn: both flapped, and each took the pushes of the other's clients."""
    node = node_with_tls(processes, ca) if tls else processes.node()
    flags = tls_flags(ca, ca.issue("gate", "gates")) if tls else []
    first = processes.gate("gate-x", [node.address], extra=flags)
    wait_until(lambda: serving(first.health_address, wire.GATE_SERVICE), 30, what="first ready")
    second = processes.gate("gate-x", [node.address], extra=flags)

    def refused() -> list[dict[str, Any]]:
        failed = link_events(second, "node link failed")
        return [line for line in failed if "ALREADY_EXISTS" in line.get("reason", "")]

    wait_until(
        lambda: refused() or link_events(first, "node link replaced"),
        30,
        what="the second gate refused, or the first one's link replaced",
    )
    assert not link_events(first, "node link replaced"), "the second gate took the stream"
    assert "another gate process" in refused()[0]["reason"]
    assert serving(first.health_address, wire.GATE_SERVICE)
    assert not serving(second.health_address, wire.GATE_SERVICE)
    with node_stub(node, ca if tls else None, ca.issue("gate", "probe")) as stub:
        assert stub.Status(node_pb2.StatusRequest(), timeout=5).gates == ["gate-x"]
    assert not link_events(first, "node link replaced")


def test_max_gates_bounds_the_registered_gates(processes: ProcessGroup, ca: TestCA) -> None:
    """Past --max-gates, a new gate id is refused with RESOURCE_EXHAUSTED; a registered one
    may still replace its stream, and the node keeps serving."""
    node = node_with_tls(processes, ca, "--max-gates=2")
    with node_stub(node, ca, ca.issue("gate", "g1")) as stub:
        streams = [register(stub, "gate-a"), register(stub, "gate-b")]
        assert status_code(lambda: register(stub, "gate-c")) is grpc.StatusCode.RESOURCE_EXHAUSTED
        streams.append(register(stub, "gate-b"))
        assert stub.Status(node_pb2.StatusRequest(), timeout=5).gates == ["gate-a", "gate-b"]
        for stream in streams:
            stream.cancel()


def test_max_gates_holds_in_plaintext(processes: ProcessGroup) -> None:
    """--max-gates bounds registrations without TLS too."""
    node = processes.node(extra=["--max-gates=1"])
    with node_stub(node, None, None) as stub:
        stream = register(stub, "gate-a")
        assert status_code(lambda: register(stub, "gate-b")) is grpc.StatusCode.RESOURCE_EXHAUSTED
        stream.cancel()


async def test_client_calls_through_a_gate_over_tls(processes: ProcessGroup, ca: TestCA) -> None:
    """Client -> gate over TLS (the gate's own client-facing certificate), gate -> node over
    mutual TLS: a call goes through; a plaintext client gets nowhere."""
    node = node_with_tls(processes, ca)
    client_cert = ca.issue("", "gate-public", file_stem="gate-public")
    gate = processes.gate(
        "gate-a",
        [node.address],
        extra=[
            *tls_flags(ca, ca.issue("gate", "gate-a")),
            "--client-tls-cert",
            str(client_cert.cert),
            "--client-tls-key",
            str(client_cert.key),
        ],
    )
    wait_until(lambda: serving(gate.health_address, wire.GATE_SERVICE), 30, what="gate ready")
    tls = ClientTLS(ca=ca.path)
    async with Client([gate.address], tls=tls, connect_timeout=timedelta(seconds=20)) as client:
        value = await client.call(
            "Counter", "c1", "Increment", IncrementRequest(by=2), CounterValue
        )
        assert value.value == 2
    with grpc.insecure_channel(gate.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        code = status_code(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=3))
    assert code is grpc.StatusCode.UNAVAILABLE


def test_a_missing_tls_file_stops_the_start_with_exit_2(tmp_path: Path, ca: TestCA) -> None:
    """A TLS file that cannot be read is an operator's error: exit 2, naming the file."""
    missing = tmp_path / "nowhere.crt"
    done = subprocess.run(
        [
            str(BIN / "goverse-node"),
            "--listen=127.0.0.1:0",
            "--metrics-port=off",
            f"--tls-cert={missing}",
            f"--tls-key={missing}",
            f"--tls-ca={ca.path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(missing) in done.stderr


def log_has(proc: ServiceProcess, event: str, **fields: Any) -> bool:
    """Whether `proc` logged `event` with `fields`. Lines that are not JSON are skipped:
    grpc's core writes its own to stderr when a handshake fails, as these tests make some."""
    for raw in proc.output().splitlines():
        if not raw.startswith("{"):
            continue
        line = json.loads(raw)
        if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
            return True
    return False


def test_a_rotated_server_certificate_is_presented_without_a_restart(
    processes: ProcessGroup, ca: TestCA, tmp_path: Path
) -> None:
    """The node's certificate files swapped as a Secret update swaps them: the next
    connection gets the new certificate (it alone names "rotated.test"), with no restart."""
    secret = SecretDir(tmp_path / "secret")
    secret.publish(ca.issue("node", "n1"))
    node = processes.node(extra=[*tls_flags(ca, secret.files), "--tls-reload-interval=100ms"])
    pid = node.pid
    options = [("grpc.ssl_target_name_override", "rotated.test")]
    gate = ca.issue("gate", "g1")
    credentials = grpc.ssl_channel_credentials(
        ca.pem, gate.key.read_bytes(), gate.cert.read_bytes()
    )

    def status_as_rotated() -> Any:
        with grpc.secure_channel(node.address, credentials, options) as channel:
            return node_pb2_grpc.NodeServiceStub(channel).Status(
                node_pb2.StatusRequest(), timeout=5
            )

    assert status_code(status_as_rotated) is grpc.StatusCode.UNAVAILABLE
    secret.publish(ca.issue("node", "n1", dns=["rotated.test"], file_stem="node-n1-rotated"))
    wait_until(lambda: log_has(node, "tls files reloaded"), 30, what="the node reloads")
    assert status_as_rotated().node
    assert node.pid == pid
    assert node.alive()


def test_a_rotated_client_certificate_reaches_new_connections(
    processes: ProcessGroup, ca: TestCA, tmp_path: Path
) -> None:
    """A gate whose certificate was rotated presents the new one on its next connection to
    a node (here: once the node restarted), with no restart of the gate."""
    node = node_with_tls(processes, ca)
    secret = SecretDir(tmp_path / "gate-secret")
    secret.publish(ca.issue("gate", "before"))
    gate = processes.gate(
        "gate-a",
        [node.address],
        extra=[*tls_flags(ca, secret.files), "--tls-reload-interval=100ms"],
    )
    before, after = spiffe_id("gate", "before"), spiffe_id("gate", "after")
    wait_until(lambda: log_has(node, "gate registered", identity=before), 30, what="link up")
    secret.publish(ca.issue("gate", "after"))
    wait_until(lambda: log_has(gate, "tls files reloaded"), 30, what="the gate reloads")
    node.terminate()
    node.start()
    wait_until(lambda: log_has(node, "gate registered", identity=after), 30, what="new identity")
    assert gate.alive()


def test_a_rotated_client_facing_certificate_is_presented_without_a_restart(
    processes: ProcessGroup, ca: TestCA, tmp_path: Path
) -> None:
    """The gate's own client-facing certificate (--client-tls-cert), rotated, reaches the
    next client connection, while its certificate towards nodes stays as it was."""
    node = node_with_tls(processes, ca)
    secret = SecretDir(tmp_path / "public")
    secret.publish(ca.issue("", "public"))
    gate = processes.gate(
        "gate-a",
        [node.address],
        extra=[
            *tls_flags(ca, ca.issue("gate", "gate-a")),
            f"--client-tls-cert={secret.files.cert}",
            f"--client-tls-key={secret.files.key}",
            "--tls-reload-interval=100ms",
        ],
    )
    options = [("grpc.ssl_target_name_override", "rotated.test")]

    def health_as_rotated() -> Any:
        with grpc.secure_channel(
            gate.address, grpc.ssl_channel_credentials(ca.pem), options
        ) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )

    assert status_code(health_as_rotated) is grpc.StatusCode.UNAVAILABLE
    secret.publish(ca.issue("", "public", dns=["rotated.test"], file_stem="public-rotated"))
    wait_until(lambda: log_has(gate, "tls files reloaded"), 30, what="the gate reloads")
    assert health_as_rotated().status == health_pb2.HealthCheckResponse.SERVING


def spiffe_id(role: str, name: str) -> str:
    return f"spiffe://goverse/{role}/{name}"
