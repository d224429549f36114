"""Processes of a benchmark run: start, wait for health, read RSS, signal, and always stop.

Every process is started in a session of its own (the terminal's Ctrl-C reaches only the
harness) and, where ``setpriv`` exists, with a parent-death signal, so none outlives a harness
that was killed. :class:`Procs` stops whatever is still running on the way out: SIGTERM, then
SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from goverse.server import Ready, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
UVLOOP_DIR = Path(PYTHON).parent.parent / "bench-uvloop"
"""Where ``make bench`` installs uvloop for the services' uvloop runs (outside the venv's
site-packages, so nothing else picks it up)."""
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_SETPRIV = shutil.which("setpriv")


def uvloop_available() -> bool:
    return (UVLOOP_DIR / "uvloop").is_dir()


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(*pids: int) -> float:
    """User + system CPU time the processes `pids` used so far (those that exist), in seconds,
    from /proc/<pid>/stat: unlike a rate, CPU per unit of work hardly moves with other load
    on the machine."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces; utime and stime are fields 14, 15.
        fields = text.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """One process of the run, its output captured to a log file.

    A server is started with ``--listen ...:0`` and ``--ready-file``: :meth:`wait_ready` reads
    the address it bound (:attr:`address`) from the ready file, so no port is picked here.
    """

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    ready: Ready | None = None

    @property
    def address(self) -> str:
        """Where the server listens (known once :meth:`wait_ready` returned)."""
        if self.ready is None:
            raise RuntimeError(f"{self.name} has not reported ready")
        return self.ready.address

    def start(self) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        paths = [str(ROOT), self.env.get("PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        args = list(self.args)
        if self.ready_path is not None:
            self.ready_path.unlink(missing_ok=True)
            args.append(f"--ready-file={self.ready_path}")
        if _SETPRIV is not None:
            args = [_SETPRIV, "--pdeathsig", "KILL", "--", *args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def output_tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Waits until the process serves (its ready file is written); returns the seconds
        waited. Raises RuntimeError when it exits first or does not serve in time."""
        assert self.ready_path is not None, f"{self.name} was started without a ready file"
        started = time.monotonic()
        try:
            self.ready = await asyncio.to_thread(
                wait_ready, self.ready_path, timeout, pid=self.pid, alive=self.alive
            )
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(
                f"{self.name} did not serve ({error}; see {self.log_path}):\n{self.output_tail()}"
            ) from None
        return time.monotonic() - started

    def same_address_args(self) -> list[str]:
        """The arguments again, listening where this process listened: a restart comes back
        on the address its peers know (the port is free again once this process is gone)."""
        listen = f"--listen={self.address if self.ready is None else self.ready.listen}"
        return [listen if arg.startswith("--listen=") else arg for arg in self.args]

    async def wait_exit(self, timeout: float) -> bool:
        """Waits (without polling, on a pidfd) until the process exits; False on timeout."""
        assert self.popen is not None
        if self.popen.poll() is not None:
            return True
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self.popen.wait(5)
            return True
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_exit)
        try:
            async with asyncio.timeout(timeout):  # wait_for could drop our cancellation (3.11)
                await exited
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        self.popen.wait(5)
        return True

    def send(self, signum: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signum)

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> float | None:
        """SIGTERM, then waits; returns the seconds to exit, or None when it had to be killed."""
        if not self.alive():
            return 0.0
        started = time.monotonic()
        self.send(signal.SIGTERM)
        if await self.wait_exit(timeout):
            return time.monotonic() - started
        self.kill()
        return None

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)

    def stop_sync(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to `timeout`, SIGKILL: for cleanup paths without an event loop."""
        if not self.alive():
            return
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class Procs:
    """Owns every process a run starts; :meth:`stop_all` ends those still running."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []
        self._count = 0

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        ready: bool = False,
    ) -> Proc:
        """Starts a process; with `ready` it gets ``--ready-file`` (see :meth:`Proc.wait_ready`)."""
        self._count += 1
        base = self.log_dir / f"{self._count:03d}-{name}"
        proc = Proc(
            name,
            list(args),
            base.with_suffix(".log"),
            dict(env or {}),
            base.with_suffix(".ready") if ready else None,
        )
        self.started.append(proc.start())
        return proc

    async def stop(self, *procs: Proc) -> None:
        """Stops `procs` (SIGTERM, then SIGKILL after the timeout), all at once."""
        await asyncio.gather(*(proc.terminate() for proc in procs))

    def stop_all(self) -> None:
        """SIGTERM to everything still running, then waits; kills what outlives the timeout."""
        alive = [proc for proc in self.started if proc.alive()]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                proc.send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in alive:
            assert proc.popen is not None
            try:
                proc.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
