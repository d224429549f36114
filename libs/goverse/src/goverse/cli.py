"""The ``goverse`` command line: describe, call, create, delete and watch objects through a gate.

It talks gRPC to one gate with the SDK (:class:`goverse.client.Client`: a registration, then
calls on it) and maps JSON to messages with the gate's ``Describe``
(:class:`goverse.descriptions.Descriptions`), so it needs none of the objects' generated code.
``docs/cli.md`` is its manual; exit codes are :class:`Exit`.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TextIO

from google.protobuf import json_format

import goverse._cli_environment  # noqa: F401  # first: grpc reads it when it loads
from goverse.client import CallError, Client, ClientTLS
from goverse.descriptions import Descriptions
from goverse.errors import GoverseError
from goverse.v1 import describe_pb2

PROG = "goverse"
GATE_ENV = "GOVERSE_GATE"
TOKEN_ENV = "GOVERSE_TOKEN"
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 30 * 24 * 3600.0
"""The longest --timeout: 30 days (a call's deadline travels as a uint32 of milliseconds)."""


class Exit(enum.IntEnum):
    """The exit codes of ``goverse``."""

    OK = 0
    """Done (``watch``: until interrupted)."""
    FAILED = 1
    """The gate answered with an error, or could not be reached: the message names the gRPC
    status (``UNAVAILABLE: …``, ``NOT_FOUND: …``)."""
    USAGE = 2
    """Nothing was sent: bad arguments (a --gate that is not ``HOST:PORT``, say), a JSON
    argument that is not a valid request (not JSON, an unknown field, a value of the wrong
    type), an object type or method that is not a name or that the gate's Describe does not
    know, a TLS file that cannot be read or does not hold what its option says."""
    INTERRUPTED = 130
    """Ctrl-C during a command other than ``watch``."""
    OUTPUT_CLOSED = 141
    """The reader of the output went away (``goverse watch | head -1``): the command stops
    without a word, with the status a shell gives a program that SIGPIPE ends (128 + 13)."""


class UsageError(Exception):
    """A mistake of the command line's user: reported in one line, exit :attr:`Exit.USAGE`."""


def _seconds(text: str) -> float:
    """--timeout's value: a positive number of seconds up to :data:`MAX_TIMEOUT`."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN and inf fail this too
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0, at most {MAX_TIMEOUT:g}"
        )
    return seconds


def _is_gate_address(text: str) -> bool:
    """Whether `text` is an address a gate listens on: ``HOST:PORT`` (port 1-65535, an IPv6
    host in brackets) or ``unix:/absolute/path``. gRPC takes many mistakes as something to
    dial (``localhost`` as port 443, ``:99999`` as a name to resolve), and the command then
    waits out --timeout to say UNAVAILABLE."""
    if text.startswith("unix:"):
        return len(text) > len("unix:/") and text.startswith("unix:/")
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return False
    if host.startswith("["):  # [IPv6]
        host = host[1:-1] if host.endswith("]") else ""
    return bool(host) and host.isprintable() and not any(c in host for c in " []")


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line on stderr, pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(Exit.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Describe, call, create, delete and watch goverse objects through a gate.",
        epilog="exit codes: 0 ok; 1 the gate answered an error or was unreachable (the "
        "message names the gRPC status); 2 usage: bad arguments, invalid JSON, unknown type "
        "or method; 130 interrupted; 141 the reader of the output went away. Manual: docs/cli.md",
    )
    parser.add_argument(
        "--gate",
        default=os.environ.get(GATE_ENV),
        metavar="HOST:PORT",
        help=f"the gate to talk to (default: ${GATE_ENV})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for a gate with --authenticator (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"bound of the registration and of each call (default {DEFAULT_TIMEOUT:g})",
    )
    tls = parser.add_argument_group("TLS (plaintext unless one of these is given)")
    tls.add_argument("--tls", action="store_true", help="TLS, verifying with the system's roots")
    tls.add_argument("--tls-ca", metavar="FILE", help="TLS, verifying the gate against this CA")
    tls.add_argument("--tls-cert", metavar="FILE", help="client certificate (with --tls-key)")
    tls.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert")
    tls.add_argument("--tls-server-name", metavar="NAME", help="name to verify instead of HOST")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    describe = commands.add_parser(
        "describe", help="list object types, methods and their message types"
    )
    describe.add_argument("--json", action="store_true", help="print it as one JSON object")
    call = commands.add_parser("call", help="call a method; prints the reply as JSON")
    _object_args(call)
    call.add_argument("method", metavar="METHOD")
    call.add_argument(
        "request",
        metavar="JSON",
        nargs="?",
        default="{}",
        help="the request as protobuf JSON (default {}; - reads it from stdin)",
    )
    _object_args(commands.add_parser("create", help="activate an object"))
    _object_args(commands.add_parser("delete", help="deactivate an object"))
    commands.add_parser(
        "watch", help="register and print every push as a JSON line until interrupted"
    )
    for subparser in commands.choices.values():
        subparser.error = parser.error  # type: ignore[method-assign]
    return parser


def _object_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("object_type", metavar="TYPE")
    parser.add_argument("object_id", metavar="ID")


def _tls(args: argparse.Namespace) -> ClientTLS | None:
    """The client's TLS: plaintext unless one of the TLS options is given (``--help``)."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    try:
        tls = ClientTLS(
            ca=_read(args.tls_ca),
            cert=_read(args.tls_cert),
            key=_read(args.tls_key),
            server_name=args.tls_server_name,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    _check_pem(args)
    return tls


def _check_pem(args: argparse.Namespace) -> None:
    """Refuses TLS files grpc could not use: it would retry each connection until --timeout
    and end as UNAVAILABLE, after its own ERROR lines. Checked with the standard library's
    ``ssl``, which reads PEM as grpc's BoringSSL does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=args.tls_ca)
        except (ssl.SSLError, ValueError) as error:
            raise UsageError(f"--tls-ca {args.tls_ca} holds no PEM certificate ({error})") from None
    if args.tls_cert is not None:
        try:
            # A password callback, so that an encrypted key fails here instead of prompting.
            context.load_cert_chain(args.tls_cert, args.tls_key, password=lambda: b"")
        except (ssl.SSLError, ValueError) as error:
            raise UsageError(
                f"--tls-cert {args.tls_cert} and --tls-key {args.tls_key} are not a PEM "
                f"certificate and its unencrypted private key ({error})"
            ) from None


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None


def _client(args: argparse.Namespace, **options: Any) -> Client:
    if not args.gate:
        raise UsageError(f"no gate: give --gate HOST:PORT or set {GATE_ENV}")
    if not _is_gate_address(args.gate):
        raise UsageError(
            f"the gate {args.gate!r} is not HOST:PORT or unix:/absolute/path "
            f"(--gate or ${GATE_ENV})"
        )
    if args.token and not all(" " <= char <= "~" for char in args.token):
        # gRPC refuses such a metadata value on every registration: it would end as UNAVAILABLE.
        raise UsageError("the token is not printable ASCII (--token or $GOVERSE_TOKEN)")
    timeout = timedelta(seconds=args.timeout)
    return Client(
        [args.gate],
        connect_timeout=timeout,
        call_timeout=timeout,
        tls=_tls(args),
        token=args.token or None,
        **options,
    )


def _print_json(value: object, out: TextIO = sys.stdout) -> None:
    print(json.dumps(value, separators=(",", ":")), file=out, flush=True)


async def describe(args: argparse.Namespace) -> None:
    async with _client(args) as client:
        response = await client.describe()
    if args.json:
        listed = describe_pb2.DescribeResponse()
        listed.CopyFrom(response)
        listed.ClearField("files")  # descriptors are for programs, not for reading
        print(json.dumps(json_format.MessageToDict(listed), indent=2), flush=True)
        return
    for description in response.types:
        print(description.name)
        for method in description.methods:
            print(f"  {method.name}({method.request_type}) -> {method.response_type}")
        for pushed in description.push_types:
            print(f"  pushes {pushed}")
    sys.stdout.flush()


async def call(args: argparse.Namespace) -> None:
    text = sys.stdin.read() if args.request == "-" else args.request
    async with _client(args) as client:
        descriptions = Descriptions(await client.describe())
        method = descriptions.method(args.object_type, args.method)
        request = descriptions.from_json(method.request, text)
        reply = await client.call(
            args.object_type, args.object_id, args.method, request, method.response
        )
    _print_json(descriptions.to_dict(reply))


async def create(args: argparse.Namespace) -> None:
    async with _client(args) as client:
        created = await client.create(args.object_type, args.object_id)
    _print_json({"created": created})


async def delete(args: argparse.Namespace) -> None:
    async with _client(args) as client:
        deleted = await client.delete(args.object_type, args.object_id)
    _print_json({"deleted": deleted})


async def watch(args: argparse.Namespace) -> None:
    def reconnected(old: str, new: str) -> None:
        # Pushes sent to the old id in between are lost: say so where the user looks.
        print(f"{PROG}: registered again as {new} (was {old})", file=sys.stderr, flush=True)

    async with _client(args, on_reconnect=reconnected) as client:
        print(f"{PROG}: watching as {client.client_id}", file=sys.stderr, flush=True)
        descriptions = Descriptions(await client.describe())
        async for packed in client.messages():
            if not descriptions.has_message(packed.TypeName()):
                # A type a node gained since: ask once more before printing it undecoded.
                descriptions = Descriptions(await client.describe())
            _print_json(descriptions.push_dict(packed))


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "describe": describe,
    "call": call,
    "create": create,
    "delete": delete,
    "watch": watch,
}


class _Interrupted(Exception):
    """Ctrl-C stopped the command."""


async def _interruptible(command: Coroutine[Any, Any, None]) -> None:
    """Runs `command` until it ends or Ctrl-C cancels it (then raises :class:`_Interrupted`).

    The loop's own signal handler, not the one ``asyncio.run`` installs: Python runs a handler
    set with ``signal.signal`` only once the main thread wakes up, and a SIGINT the kernel
    hands to one of grpc's threads (none of them blocks it) can leave an idle loop asleep:
    ``watch`` did not exit on Ctrl-C in two full test runs, its loop asleep in ``select`` and
    its command never cancelled. The loop's handler is woken through its wake-up descriptor,
    whichever thread the signal lands on.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await command
    except asyncio.CancelledError:
        if not interrupted:
            raise
        task.uncancel()
        raise _Interrupted() from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _discard_stdout() -> None:
    """Points stdout at /dev/null: its reader is gone, and the interpreter's last flush of what
    is still buffered would fail once more ("Exception ignored ... BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _fail(code: Exit, message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its :class:`Exit` code."""
    args = build_parser().parse_args(argv)
    # The SDK logs reconnections and refusals as warnings: one line each, named as ours.
    logging.basicConfig(format=f"{PROG}: %(message)s", level=logging.WARNING)
    try:
        asyncio.run(_interruptible(COMMANDS[args.command](args)))
    except (KeyboardInterrupt, _Interrupted):
        return Exit.OK if args.command == "watch" else Exit.INTERRUPTED
    except BrokenPipeError:
        _discard_stdout()
        return Exit.OUTPUT_CLOSED
    except UsageError as error:
        return _fail(Exit.USAGE, str(error))
    except CallError as error:  # the gate's answer (before GoverseError: it is one)
        return _fail(Exit.FAILED, f"{error.status_code.name}: {error.message}")
    except GoverseError as error:  # decided here, from Describe: nothing was sent
        return _fail(Exit.USAGE, f"{error.status_code.name}: {error.message}")
    return Exit.OK


def run() -> NoReturn:
    """The console script's entry point."""
    sys.exit(main())


__all__ = ["Exit", "build_parser", "main", "run"]
