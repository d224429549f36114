"""What a node does with a store it cannot use at start: a malformed or refused ``--store``
stops it with one line; an unreachable one does not stop it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.node_client import NodeCaller
from tests.helpers.processes import ANY_PORT, BIN, ProcessGroup
from tests.helpers.waiting import eventually

PASSWORD = "s3cret-of-the-store"


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "goverse-node"), "--log-format=json", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [f"--listen={ANY_PORT}", "--store=foo://x"],
            "argument --store: 'foo://x' is not a store: use sqlite:PATH or postgresql://",
        ),
        (
            [
                "--listen=unix:/tmp/gv-no-such-dir/a.sock",
                "--nodes=unix:/tmp/gv-no-such-dir/a.sock,unix:/tmp/gv-no-such-dir/b.sock",
                "--store=sqlite:/tmp/gv-no-such-dir/state.db",
            ],
            "--store sqlite: serves one node only",
        ),
    ],
    ids=["malformed", "sqlite-with-two-nodes"],
)
def test_a_store_the_node_cannot_use_stops_it_with_one_line(args: list[str], message: str) -> None:
    """Exit code 2 and one line saying what is wrong, no traceback, nothing else."""
    result = run_node(*args)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2, result
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert "Traceback" not in lines[0]


@pytest.mark.parametrize(
    ("store", "password_file", "message"),
    [
        ("postgresql://goverse@127.0.0.1:1/db", "missing", "No such file or directory"),
        ("postgresql://goverse@127.0.0.1:1/db", "empty", "is empty"),
        ("sqlite:{tmp_path}/state.db", "password", "password file is for PostgreSQL"),
    ],
    ids=["missing", "empty", "with-sqlite"],
)
def test_a_store_password_file_the_node_cannot_use_stops_it_with_exit_code_2(
    tmp_path: Path, store: str, password_file: str, message: str
) -> None:
    """Regression: the file was read once the node served, and a missing one ended the
    node with a traceback and exit code 1. Now: exit code 2, the reason, no traceback."""
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "password").write_text(f"{PASSWORD}\n")
    result = run_node(
        f"--listen={ANY_PORT}",
        f"--store={store.format(tmp_path=tmp_path)}",
        f"--store-password-file={tmp_path / password_file}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert message in result.stderr
    assert "Traceback" not in output
    assert PASSWORD not in output


@pytest.mark.parametrize("password_in", ["file", "url"])
async def test_an_unreachable_store_at_start_is_retried_and_only_stateful_calls_fail(
    processes: ProcessGroup, unreachable: str, tmp_path: Path, password_in: str
) -> None:
    """PostgreSQL on a loopback port where nothing listens: the node serves anyway, and logs
    ``store not reachable`` at WARNING with the reason, again as it retries, never showing
    the password (from a file, or written into the URL). Calls to a Ledger answer
    UNAVAILABLE; calls to a stateless object are served; Status says the store is not
    available."""
    flags: tuple[str, ...]
    if password_in == "file":
        password_file = tmp_path / "password"
        password_file.write_text(f"{PASSWORD}\n")
        flags = (
            f"--store=postgresql://goverse@{unreachable}/goverse",
            f"--store-password-file={password_file}",
        )
    else:
        flags = (f"--store=postgresql://goverse:{PASSWORD}@{unreachable}/goverse",)
    node = await asyncio.to_thread(processes.node, extra=flags)

    def warnings() -> list[dict[str, object]]:
        return [line for line in node.log_lines() if line["event"] == "store not reachable"]

    async with NodeCaller(node.address) as caller:
        await eventually(lambda: len(warnings()) >= 2, 20, "two attempts to open the store")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await caller.call("Ledger", "l1", "Add", IncrementRequest(by=1), CounterValue)
        slept = await caller.call("Sleeper", "s1", "Sleep", Int64Value(value=1), Int64Value)
        status = await caller.status()
    logged = warnings()
    error = refused.value
    print(f"\n{logged[0]}\n{error.code().name}: {error.details()}")
    assert {line["level"] for line in logged} == {"warning"}
    assert {line["store"] for line in logged} == {status.store}
    # The reason: where it tried, and what the connection attempt got.
    assert all(
        f"{status.store}: cannot connect: " in str(line["error"])
        and "Connect call failed" in str(line["error"])
        for line in logged
    )
    assert PASSWORD not in node.output()
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "the state of Ledger/l1 cannot be reached: the store is not open yet"
    assert slept.value == 1
    assert not status.store_available
    assert PASSWORD not in status.store
    assert node.alive()
