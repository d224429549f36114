"""Flags: command-line options that fall back to GOVERSE_* environment variables, and parsers."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from goverse.server._logging import LOG_FORMATS, LOG_LEVELS

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)?\Z")
_BYTE_SIZE = re.compile(r"(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\Z", re.IGNORECASE)
_BYTE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(text: str) -> timedelta:
    """Parses ``500ms``, ``5s``, ``1.5`` (seconds) or ``2m``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 500ms, 5s, 2m)")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    if unit == "ms":
        return timedelta(milliseconds=value)
    return timedelta(seconds=value * (60 if unit == "m" else 1))


def parse_byte_size(text: str) -> int:
    """Parses a positive byte size: ``65536``, ``512KiB``, ``4MiB``, ``1MB``, ``1GiB``."""
    match = _BYTE_SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte size (e.g. 65536, 512KiB, 4MiB)")
    value = int(match.group(1)) * _BYTE_UNITS[(match.group(2) or "b").lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte")
    return value


def parse_address(text: str) -> str:
    """Checks ``host:port`` (IPv6 hosts in brackets) and returns it unchanged."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port")
    return text


def parse_address_list(text: str) -> tuple[str, ...]:
    """Parses a comma-separated list of ``host:port``; rejects empty lists and repeats."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("the list is empty")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} appears more than once")
    return tuple(parse_address(item) for item in items)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def parse_port(text: str) -> int:
    """Parses a TCP port number, 0 to 65535."""
    if not text.strip().isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


class FlagParser(argparse.ArgumentParser):
    """An argument parser whose every flag has a ``GOVERSE_*`` variable and a documented default."""

    def __init__(self, prog: str, description: str, environ: Mapping[str, str] | None = None):
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Every flag can also be set by the environment variable named beside it; "
            "a flag on the command line wins.",
        )
        self._environ = os.environ if environ is None else environ

    def flag(
        self,
        name: str,
        *,
        help: str,
        default: str,
        parse: Callable[[str], Any] = str,
        choices: Sequence[str] | None = None,
        metavar: str | None = None,
    ) -> None:
        """Adds ``--name``; its default comes from ``GOVERSE_NAME`` when set, else `default`."""
        env = "GOVERSE_" + name.upper().replace("-", "_")
        raw = self._environ.get(env, default)
        self.add_argument(
            f"--{name}",
            default=raw,
            type=parse,
            choices=choices,
            metavar=metavar or name.upper().replace("-", "_"),
            help=f"{help} [env {env}; default: {default or 'none'}]",
        )

    def logging_flags(self) -> None:
        self.flag("log-level", help="minimum level logged", default="info", choices=LOG_LEVELS)
        self.flag(
            "log-format",
            help="json lines, console, or auto (console on a TTY, json otherwise)",
            default="auto",
            choices=LOG_FORMATS,
        )

    def keepalive_flags(self) -> None:
        """``--keepalive-time``, ``--keepalive-timeout`` and ``--keepalive-min-time``."""
        self.flag(
            "keepalive-time",
            help="interval of keepalive pings on this process's connections; a peer that "
            "stopped answering is noticed within keepalive-time + keepalive-timeout",
            default="10s",
            parse=parse_duration,
            metavar="DURATION",
        )
        self.flag(
            "keepalive-timeout",
            help="close a connection whose keepalive ping stays unanswered this long",
            default="5s",
            parse=parse_duration,
            metavar="DURATION",
        )
        self.flag(
            "keepalive-min-time",
            help="shortest interval between a client's keepalive pings this server accepts; "
            "a client pinging faster gets GOAWAY too_many_pings",
            default="5s",
            parse=parse_duration,
            metavar="DURATION",
        )

    def metrics_flag(self, default: int) -> None:
        self.flag(
            "metrics-port",
            help="port of the Prometheus metrics endpoint (/metrics on all interfaces); 0 disables",
            default=str(default),
            parse=parse_port,
            metavar="PORT",
        )

    def parse_flags(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """Parses `argv`. argparse parses string defaults (our environment values) with the
        flag's type already; this also holds them to the flag's choices."""
        args = self.parse_args(argv)
        for action in self._actions:
            value = getattr(args, action.dest, None)
            if action.choices is not None and value not in action.choices:
                self.error(
                    f"argument {action.option_strings[0]}: invalid choice {value!r} "
                    f"(choose from {', '.join(map(str, action.choices))})"
                )
        return args
