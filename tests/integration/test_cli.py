"""The ``goverse`` command line as a user runs it: a subprocess against real node and gate
processes, its output, its one-line errors and its exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from goverse import _cli_environment
from goverse.cli import Exit
from tests.helpers.certs import TestCA
from tests.helpers.cluster import ClusterTLS, start_cluster
from tests.helpers.processes import BIN, ProcessGroup, process_group
from tests.helpers.tokens import TokenIssuer
from tests.helpers.waiting import eventually

RUN_TIMEOUT = 60.0
"""Bound of one command (a loaded 2-core machine starts Python slowly)."""
LINE_TIMEOUT = 30.0
"""Bound of the wait for one line of `goverse watch`."""
GOVERSE = str(BIN / "goverse")


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One node and one gate without authentication, shared by the module's tests; the
    gate's address."""
    with process_group(tmp_path_factory.mktemp("cli") / "logs") as group:
        node = group.node()
        yield group.gate("g0", [node.address]).address


def goverse(
    *args: str, gate: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``goverse [--gate GATE] ARGS`` as a user does: without GOVERSE_* variables but
    those in `env`, and without GRPC_VERBOSITY."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GOVERSE_") and k != _cli_environment.VARIABLE
    }
    return subprocess.run(
        [GOVERSE, *([f"--gate={gate}"] if gate else []), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**environ, **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("goverse: ")
    return lines[0]


def test_help_describes_every_command_and_the_exit_codes() -> None:
    """``--help`` lists the commands, the gate and TLS options and the exit codes; each
    command has its own ``--help``."""
    result = goverse("--help")
    assert result.returncode == Exit.OK
    for word in ("describe", "call", "create", "delete", "watch", "--gate", "--tls-ca", "exit"):
        assert word in result.stdout
    for command in ("describe", "call", "create", "delete", "watch"):
        assert goverse(command, "--help").returncode == Exit.OK


def test_describe_lists_types_methods_and_message_types(gate: str) -> None:
    """Text: a type per line, its methods with request and response types, what it pushes;
    ``--json``: the same as one JSON object."""
    result = goverse("describe", gate=gate)
    assert result.returncode == Exit.OK, result.stderr
    lines = result.stdout.splitlines()
    assert "Counter" in lines
    assert (
        "  Increment(goverse.examples.v1.IncrementRequest) -> goverse.examples.v1.CounterValue"
        in lines
    )
    assert "  pushes goverse.examples.v1.ChatMessage" in lines
    listed = json.loads(goverse("describe", "--json", gate=gate).stdout)
    counter = next(t for t in listed["types"] if t["name"] == "Counter")
    assert {"name": "Get", "requestType": "goverse.examples.v1.GetRequest",
            "responseType": "goverse.examples.v1.CounterValue"} in counter["methods"]  # fmt: skip


def test_call_converts_the_json_request_and_prints_the_reply_as_json(gate: str) -> None:
    """``call Counter ID Increment '{"by": 5}'`` twice: the replies, as protobuf JSON."""
    first = goverse("call", "Counter", "cli-calls", "Increment", '{"by": 5}', gate=gate)
    assert first.returncode == Exit.OK, first.stderr
    assert json.loads(first.stdout) == {"value": "5"}
    second = goverse("call", "Counter", "cli-calls", "Increment", '{"by": 2}', gate=gate)
    assert json.loads(second.stdout) == {"value": "7"}


def test_the_gate_comes_from_the_environment(gate: str) -> None:
    result = goverse("call", "Counter", "cli-env", "Get", env={"GOVERSE_GATE": gate})
    assert result.returncode == Exit.OK, result.stderr
    assert json.loads(result.stdout) == {"value": "0"}


def test_create_and_delete_say_whether_they_did_anything(gate: str) -> None:
    created = [goverse("create", "Counter", "cli-life", gate=gate) for _ in range(2)]
    assert [json.loads(r.stdout) for r in created] == [{"created": True}, {"created": False}]
    deleted = goverse("delete", "Counter", "cli-life", gate=gate)
    assert json.loads(deleted.stdout) == {"deleted": True}


def test_a_bad_json_argument_exits_2_with_one_line_and_sends_nothing(gate: str) -> None:
    """Not JSON, an unknown field, a value of the wrong type: exit 2, INVALID_ARGUMENT."""
    for bad in ('{"by": ', '{"by": 1, "nope": 2}', '{"by": "many"}'):
        result = goverse("call", "Counter", "cli-bad", "Increment", bad, gate=gate)
        assert result.returncode == Exit.USAGE, (bad, result.stderr)
        assert one_line_error(result).startswith("goverse: INVALID_ARGUMENT: "), bad
        assert result.stdout == ""
    assert json.loads(goverse("call", "Counter", "cli-bad", "Get", gate=gate).stdout) == {
        "value": "0"
    }


def test_an_unknown_method_or_type_exits_2_naming_it(gate: str) -> None:
    method = goverse("call", "Counter", "c", "Decrement", gate=gate)
    assert method.returncode == Exit.USAGE
    assert one_line_error(method) == "goverse: UNIMPLEMENTED: Counter has no method 'Decrement'"
    unknown = goverse("call", "Abacus", "c", "Add", gate=gate)
    assert unknown.returncode == Exit.USAGE
    assert one_line_error(unknown) == "goverse: NOT_FOUND: unknown object type 'Abacus'"


def test_a_type_that_is_not_a_name_exits_2_with_invalid_argument(gate: str) -> None:
    """As the call would answer (it was NOT_FOUND, an unknown type, here and over HTTP)."""
    malformed = goverse("call", "Coun ter", "c", "Get", gate=gate)
    assert malformed.returncode == Exit.USAGE
    assert one_line_error(malformed).startswith("goverse: INVALID_ARGUMENT: object_type 'Coun ter'")


def test_a_call_the_gate_refuses_exits_1_naming_the_status(gate: str) -> None:
    """An error the gate answers (an invalid object id, checked by the gate) exits 1."""
    result = goverse("create", "Counter", "bad\nid", gate=gate)
    assert result.returncode == Exit.FAILED
    assert one_line_error(result).startswith("goverse: INVALID_ARGUMENT: ")


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "1e15", "soon"])
def test_a_timeout_that_is_not_a_bounded_positive_number_is_a_usage_error(
    unreachable: str, timeout: str
) -> None:
    result = goverse(f"--timeout={timeout}", "describe", gate=unreachable)
    assert result.returncode == Exit.USAGE, result.stderr
    assert "--timeout" in one_line_error(result)


@pytest.mark.parametrize("token", ["t\u00e9", "a\nb"])
def test_a_token_that_is_not_printable_ascii_is_a_usage_error(unreachable: str, token: str) -> None:
    """gRPC refuses it as metadata on every registration: it exited 1 with UNAVAILABLE after
    --timeout, naming no token."""
    result = goverse("--timeout=1", f"--token={token}", "describe", gate=unreachable)
    assert result.returncode == Exit.USAGE, result.stderr
    assert "token" in one_line_error(result)


def test_grpc_adds_no_lines_of_its_own_to_the_one_line_error(gate: str) -> None:
    """``--tls`` to a gate that speaks plaintext: exit 1 and one line on stderr, without
    grpc's INFO line about each failed handshake (it writes them where GRPC_VERBOSITY is
    unset); a GRPC_VERBOSITY the user sets still rules."""
    result = goverse("--tls", "--timeout=1", "describe", gate=gate)
    assert result.returncode == Exit.FAILED
    assert one_line_error(result).startswith("goverse: UNAVAILABLE: ")
    chatty = goverse("--tls", "--timeout=1", "describe", gate=gate, env={"GRPC_VERBOSITY": "INFO"})
    assert "Handshake failed" in chatty.stderr


def test_no_gate_is_a_usage_error_and_an_unreachable_gate_exits_1(unreachable: str) -> None:
    assert goverse("describe").returncode == Exit.USAGE
    result = goverse("--timeout=1", "describe", gate=unreachable)
    assert result.returncode == Exit.FAILED
    assert one_line_error(result).startswith("goverse: UNAVAILABLE: ")


@pytest.mark.parametrize(
    "address",
    ["localhost", "host:notaport", ":99999", ":7100", "127.0.0.1:0", "127.0.0.1:65536",
     "[::1", "::1]:7100", "gate host:7100", "unix:relative.sock", "unix:"],
)  # fmt: skip
def test_a_gate_that_is_not_host_port_is_a_usage_error(address: str) -> None:
    """--gate (or $GOVERSE_GATE) that is not HOST:PORT or unix:/absolute/path exits 2 at once
    with one line naming it, and dials nothing: it waited out --timeout and exited 1 with
    UNAVAILABLE (gRPC took ``localhost`` as port 443, ``:99999`` as a name to resolve)."""
    for result in (
        goverse("--timeout=5", "describe", gate=address),
        goverse("--timeout=5", "describe", env={"GOVERSE_GATE": address}),
    ):
        assert result.returncode == Exit.USAGE, result.stderr
        line = one_line_error(result)
        assert repr(address) in line
        assert "HOST:PORT" in line


def test_an_empty_gate_from_the_environment_is_no_gate() -> None:
    result = goverse("describe", env={"GOVERSE_GATE": ""})
    assert result.returncode == Exit.USAGE
    assert one_line_error(result) == "goverse: no gate: give --gate HOST:PORT or set GOVERSE_GATE"


@pytest.mark.parametrize("address", ["[::1]:{port}", "unix:/nonexistent/goverse-cli.sock"])
def test_an_ipv6_or_unix_gate_address_is_dialed(unreachable: str, address: str) -> None:
    """The forms gates listen on besides host:port pass the check: nothing answers there, so
    the command exits 1 with UNAVAILABLE after --timeout, not 2, saying why the last dial
    failed (grpc's own log lines, which said it, are hidden)."""
    gate = address.format(port=unreachable.rpartition(":")[2])
    result = goverse("--timeout=2", "describe", gate=gate)
    assert result.returncode == Exit.FAILED, result.stderr
    assert one_line_error(result).startswith("goverse: UNAVAILABLE: ")
    assert f"(last failure: {gate}: UNAVAILABLE: " in one_line_error(result), result.stderr


async def test_watch_prints_each_push_as_a_json_line_with_its_type(gate: str) -> None:
    """``watch`` says its client id on stderr, prints a push sent to it as one JSON line
    with its type name, and exits 0 on Ctrl-C."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVERSE_")}
    # Twice, in full `make test` runs, watch did not exit within 30 s of Ctrl-C (before the CLI
    # took Ctrl-C with the loop's own handler): should it hang again, its stacks say where.
    environ["PYTHONFAULTHANDLER"] = "1"
    watcher = await asyncio.create_subprocess_exec(
        GOVERSE, f"--gate={gate}", "watch",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ,
    )  # fmt: skip
    try:
        assert watcher.stderr is not None
        assert watcher.stdout is not None
        said = (await asyncio.wait_for(watcher.stderr.readline(), LINE_TIMEOUT)).decode()
        assert said.startswith("goverse: watching as g0/"), said
        client_id = said.split()[-1]
        pushed = await asyncio.to_thread(
            goverse, "call", "Pusher", "cli-pusher", "PushTo", json.dumps(client_id), gate=gate
        )
        assert json.loads(pushed.stdout) == "1", pushed.stderr
        line = await asyncio.wait_for(watcher.stdout.readline(), LINE_TIMEOUT)
        assert json.loads(line) == {"type": "google.protobuf.StringValue", "message": "cli-pusher"}
        watcher.send_signal(signal.SIGINT)
        try:
            exited = await asyncio.wait_for(watcher.wait(), LINE_TIMEOUT)
        except TimeoutError:
            watcher.send_signal(signal.SIGABRT)  # the fault handler writes every thread's stack
            stacks = await asyncio.wait_for(watcher.stderr.read(), LINE_TIMEOUT)
            pytest.fail(f"watch did not exit on Ctrl-C; its stacks:\n{stacks.decode()}")
        assert exited == Exit.OK
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()


def test_a_jwt_gate_takes_the_token_from_the_environment(tmp_path: Path) -> None:
    """With ``--authenticator jwt``: without a token the registration is refused (exit 1,
    UNAVAILABLE naming the refusal); with GOVERSE_TOKEN the call goes through."""
    issuer = TokenIssuer()
    with process_group(tmp_path / "logs") as group:
        processes: ProcessGroup = group
        node = processes.node()
        gate = processes.gate("g1", [node.address], issuer.gate_flags(tmp_path / "jwt")).address
        refused = goverse("--timeout=2", "describe", gate=gate)
        assert refused.returncode == Exit.FAILED
        assert "UNAUTHENTICATED" in one_line_error(refused)
        allowed = goverse("describe", gate=gate, env={"GOVERSE_TOKEN": issuer.token()})
        assert allowed.returncode == Exit.OK, allowed.stderr
        assert "Counter" in allowed.stdout.splitlines()


async def test_output_whose_reader_went_away_ends_the_command_quietly(gate: str) -> None:
    """``goverse describe | head -1`` and ``goverse watch | head -1``: once the reader of its
    output is gone, the next line it writes ends the command with exit 141 (a shell's status
    for a program SIGPIPE ends) and nothing on stderr but what it said before: no traceback."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVERSE_")}
    for command in ("describe", "watch"):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first line
        try:
            proc = await asyncio.create_subprocess_exec(
                GOVERSE, f"--gate={gate}", command,
                stdout=write_end, stderr=asyncio.subprocess.PIPE, env=environ,
            )  # fmt: skip
        finally:
            os.close(write_end)
        try:
            assert proc.stderr is not None
            said = b""
            if command == "watch":
                said = await asyncio.wait_for(proc.stderr.readline(), LINE_TIMEOUT)
                client_id = said.decode().split()[-1]
                pushed = await asyncio.to_thread(
                    goverse, "call", "Pusher", "cli-pipe", "PushTo", json.dumps(client_id),
                    gate=gate,
                )  # fmt: skip
                assert json.loads(pushed.stdout) == "1", pushed.stderr
            rest = await asyncio.wait_for(proc.stderr.read(), RUN_TIMEOUT)
            assert await asyncio.wait_for(proc.wait(), RUN_TIMEOUT) == Exit.OUTPUT_CLOSED
            assert rest == b"", (command, said + rest)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_the_tls_options_reach_a_gate_that_serves_tls(tmp_path: Path) -> None:
    """``--tls-ca`` verifies the gate against that CA and ``--tls`` with the system's roots
    (here ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``: the test CA); ``--tls-server-name`` checks
    another name of its certificate and, given alone, turns TLS on as the others do (it was
    ignored: plaintext); ``--tls-cert``/``--tls-key`` present a certificate the gate does not
    ask for. Plaintext, or a name the certificate does not hold, gets nowhere (exit 1)."""
    name = "gate.goverse.test"
    tls = ClusterTLS.make(tmp_path / "ca", gate_dns=[name])
    ca = str(tls.ca.path)
    roots = {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": ca}
    admitted: list[tuple[list[str], dict[str, str]]] = [
        (["--tls-ca", ca], {}),
        (["--tls-ca", ca, "--tls-server-name", name], {}),
        (["--tls"], roots),
        (["--tls-server-name", name], roots),
        (["--tls-ca", ca, "--tls-cert", str(tls.operator.cert), "--tls-key", str(tls.operator.key)],
         {}),
    ]  # fmt: skip
    refused: list[list[str]] = [[], ["--tls-ca", ca, "--tls-server-name", "elsewhere.test"]]
    with process_group(tmp_path / "logs") as group:
        [gate] = start_cluster(group, nodes=1, tls=tls).gate_addresses
        for options, env in admitted:
            result = goverse(*options, "create", "Counter", "cli-tls", gate=gate, env=env)
            assert result.returncode == Exit.OK, (options, result.stderr)
            assert json.loads(result.stdout) in ({"created": True}, {"created": False})
        for options in refused:
            result = goverse(*options, "--timeout=2", "describe", gate=gate)
            assert result.returncode == Exit.FAILED, (options, result.stderr)
            assert one_line_error(result).startswith("goverse: UNAVAILABLE: "), options
            assert f"(last failure: {gate}: UNAVAILABLE: " in one_line_error(result), options


def test_a_tls_file_that_cannot_serve_is_a_usage_error(unreachable: str, tmp_path: Path) -> None:
    """A file that cannot be read, a CA file without a certificate (a key given as
    ``--tls-ca``), a certificate with another's key: exit 2 at once, one line naming the
    file, nothing sent (the last two waited out --timeout and exited 1 as UNAVAILABLE, under
    grpc's own ERROR lines)."""
    ca = TestCA(tmp_path)
    one, other = ca.issue("", "one"), ca.issue("", "other")
    for options in (
        ["--tls-ca", str(tmp_path / "missing.pem")],
        ["--tls-ca", str(one.key)],
        ["--tls-cert", str(one.cert), "--tls-key", str(other.key)],
    ):
        result = goverse(*options, "describe", gate=unreachable)
        assert result.returncode == Exit.USAGE, (options, result.stderr)
        assert options[1] in one_line_error(result), options


def test_a_call_reads_its_json_from_stdin_given_as_a_dash(gate: str) -> None:
    """``call TYPE ID METHOD -`` takes the request from stdin."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVERSE_")}
    result = subprocess.run(
        [GOVERSE, f"--gate={gate}", "call", "Counter", "cli-stdin", "Increment", "-"],
        input='{"by": 4}',
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=environ,
    )
    assert result.returncode == Exit.OK, result.stderr
    assert json.loads(result.stdout) == {"value": "4"}


def test_create_of_an_unknown_type_is_the_nodes_not_found_and_exits_1(gate: str) -> None:
    """``create`` and ``delete`` need no Describe: the node answers the unknown type."""
    for command in ("create", "delete"):
        result = goverse(command, "Abacus", "c", gate=gate)
        assert result.returncode == Exit.FAILED, result.stderr
        assert one_line_error(result) == "goverse: NOT_FOUND: unknown object type 'Abacus'"


def test_the_token_option_wins_over_the_environment(tmp_path: Path) -> None:
    """``--token`` is sent with the registration; given with GOVERSE_TOKEN, the option is the
    one used."""
    issuer = TokenIssuer()
    with process_group(tmp_path / "logs") as group:
        node = group.node()
        gate = group.gate("g1", [node.address], issuer.gate_flags(tmp_path / "jwt")).address
        allowed = goverse(f"--token={issuer.token()}", "describe", gate=gate)
        assert allowed.returncode == Exit.OK, allowed.stderr
        refused = goverse(
            "--token=not-a-jwt", "--timeout=2", "describe",
            gate=gate, env={"GOVERSE_TOKEN": issuer.token()},
        )  # fmt: skip
        assert refused.returncode == Exit.FAILED
        assert "the token is not a well-formed JWT" in one_line_error(refused)


async def test_ctrl_c_during_a_call_exits_130(tmp_path: Path) -> None:
    """Ctrl-C while a call runs on the node (a Witness holding it for 60 s): the command ends
    at once with 130, printing nothing and no traceback."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVERSE_")}
    witness = tmp_path / "witness"
    witness.mkdir()
    with process_group(tmp_path / "logs") as group:
        node = await asyncio.to_thread(group.node, env={"GOVERSE_TEST_WITNESS_DIR": str(witness)})
        gate = await asyncio.to_thread(group.gate, "g3", [node.address])
        caller = await asyncio.create_subprocess_exec(
            GOVERSE, f"--gate={gate.address}", "call", "Witness", "cli-ctrl-c", "Hold", '"60000"',
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ,
        )  # fmt: skip
        try:
            await eventually(
                lambda: any('"call"' in f.read_text() for f in witness.glob("*.jsonl")),
                LINE_TIMEOUT,
                "the call to reach the object",
            )
            caller.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(caller.communicate(), LINE_TIMEOUT)
            assert caller.returncode == Exit.INTERRUPTED, err
            assert out == b""
            assert b"Traceback" not in err
        finally:
            if caller.returncode is None:
                caller.kill()
                await caller.wait()


async def test_watch_says_on_stderr_when_it_registered_again(tmp_path: Path) -> None:
    """The gate restarts under ``watch``: it registers again and says so on stderr with its
    new id and the old one (pushes in between are lost), then prints pushes to the new id."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOVERSE_")}
    with process_group(tmp_path / "logs") as group:
        node = await asyncio.to_thread(group.node)
        gate = await asyncio.to_thread(group.gate, "g2", [node.address])
        watcher = await asyncio.create_subprocess_exec(
            GOVERSE, f"--gate={gate.address}", "watch",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ,
        )  # fmt: skip
        try:
            assert watcher.stderr is not None
            assert watcher.stdout is not None
            said = (await asyncio.wait_for(watcher.stderr.readline(), LINE_TIMEOUT)).decode()
            old_id = said.split()[-1]

            async def push_to(client_id: str, text: str) -> str:
                """Pushes `text` to `client_id`; the line watch prints for it."""
                pushed = await asyncio.to_thread(
                    goverse, "call", "Pusher", text, "PushTo", json.dumps(client_id),
                    gate=gate.address,
                )  # fmt: skip
                assert json.loads(pushed.stdout) == "1", pushed.stderr
                assert watcher.stdout is not None
                line = await asyncio.wait_for(watcher.stdout.readline(), LINE_TIMEOUT)
                return str(json.loads(line)["message"])

            assert await push_to(old_id, "cli-before") == "cli-before"  # it reads its pushes
            assert await asyncio.to_thread(gate.terminate) == 0
            await asyncio.to_thread(gate.start)
            said = (await asyncio.wait_for(watcher.stderr.readline(), LINE_TIMEOUT)).decode()
            assert said.startswith("goverse: registered again as g2/"), said
            assert said.rstrip().endswith(f"(was {old_id})"), said
            assert await push_to(said.split()[4], "cli-again") == "cli-again"
            watcher.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(watcher.wait(), LINE_TIMEOUT) == Exit.OK
        finally:
            if watcher.returncode is None:
                watcher.kill()
                await watcher.wait()
