"""Value kinds of settings: how the text of a flag or ``GOVERSE_*`` variable parses, and shows."""

from __future__ import annotations

import argparse
import enum
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

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
UNIX_PREFIX = "unix:"
"""gRPC's target scheme of a Unix domain socket: ``unix:/absolute/path``."""


def parse_duration(text: str) -> timedelta:
    """Parses ``500ms``, ``5s``, ``1.5`` (seconds) or ``2m``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 500ms, 5s, 2m)")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    try:
        if unit == "ms":
            return timedelta(milliseconds=value)
        return timedelta(seconds=value * (60 if unit == "m" else 1))
    except OverflowError:  # past timedelta's range (999,999,999 days), or inf
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration") from None


def format_duration(value: timedelta) -> str:
    """The shortest text :func:`parse_duration` reads back as `value` (to the millisecond)."""
    ms = round(value.total_seconds() * 1000)
    if ms and ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def parse_byte_size(text: str) -> int:
    """Parses a positive byte size: ``65536``, ``512KiB``, ``4MiB``, ``1MB``, ``1GiB``."""
    match = _BYTE_SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte size (e.g. 65536, 512KiB, 4MiB)")
    value = int(match.group(1)) * _BYTE_UNITS[(match.group(2) or "b").lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte")
    return value


def format_byte_size(value: int) -> str:
    """``4MiB`` rather than ``4194304``, where a binary unit divides `value`."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def is_unix_address(address: str) -> bool:
    return address.startswith(UNIX_PREFIX)


def ascii_digits(text: str) -> bool:
    """Whether `text` is a number in ASCII digits: ``str.isdigit()`` also takes ``"²"``,
    which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


def parse_address(text: str) -> str:
    """Checks ``host:port`` (IPv6 hosts in brackets) or ``unix:/absolute/path``; returns it."""
    if is_unix_address(text):
        if not text.startswith(UNIX_PREFIX + "/") or len(text) <= len(UNIX_PREFIX) + 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not unix:/absolute/path")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not ascii_digits(port) or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port (or unix:/absolute/path)")
    return text


def port_of(address: str) -> int:
    """The port of a ``host:port`` address (not of a ``unix:`` one)."""
    return int(address.rpartition(":")[2])


def parse_list(text: str, parse_item: Callable[[str], str]) -> tuple[str, ...]:
    """Parses a comma-separated list with `parse_item`; rejects empty lists and repeats."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("the list is empty")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(repeated)} appears more than once")
    return tuple(parse_item(item) for item in items)


def parse_address_list(text: str) -> tuple[str, ...]:
    """Parses a comma-separated list of addresses (see :func:`parse_address`)."""
    return parse_list(text, parse_address)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})\Z")


def parse_host(text: str) -> str:
    """Parses a host to listen on: an IPv4 or IPv6 address, or a name (``localhost``)."""
    host = text.strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST_NAME.match(host):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or a host name")
    return host


def parse_port(text: str) -> int | None:
    """Parses a TCP port number, 0 (any free port) to 65535, or ``off`` (None)."""
    if text.strip() == "off":
        return None
    if not ascii_digits(text.strip()) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535) or off")
    return int(text)


def parse_etcd_endpoint(text: str) -> str:
    """Checks an etcd client endpoint, ``host:port`` or ``http://host:port``; returns
    ``host:port``. TLS endpoints (``https://``) are not supported yet."""
    text = text.strip()
    if text.startswith("https://"):
        raise argparse.ArgumentTypeError(f"{text!r}: TLS to etcd is not supported yet")
    address = text.removeprefix("http://").rstrip("/")
    if "://" in address or is_unix_address(address):
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port or http://host:port")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not ascii_digits(port) or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port or http://host:port")
    return address


def parse_etcd_endpoints(text: str) -> tuple[str, ...]:
    """A comma-separated list of etcd endpoints (see :func:`parse_etcd_endpoint`)."""
    return parse_list(text, parse_etcd_endpoint)


_PREFIX = re.compile(r"(/[A-Za-z0-9._-]+)+\Z")


def parse_etcd_prefix(text: str) -> str:
    """A key prefix like ``/goverse`` or ``/apps/chat``: segments of letters, digits and
    ``._-``, each after a ``/``, no trailing ``/``."""
    if not _PREFIX.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a key prefix like /goverse (segments of letters, digits, '.', "
            "'_', '-', each after a '/')"
        )
    return text


def parse_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text)


@dataclass(frozen=True)
class Kind:
    """A kind of setting value: how a flag's text parses into it, and how it shows in ``--help``
    and the docs. A value is valid for its kind when the text it shows as parses again: the
    check a config built in code gets is the one its flag gets."""

    parse: Callable[[str], Any]
    """Text to value; raises :class:`argparse.ArgumentTypeError` saying what is wrong."""

    metavar: str
    """The placeholder of the value in ``--help``."""

    show: Callable[[Any], str] = str
    """Value to the text that parses back to it."""


def choice(options: Sequence[str] | type[enum.StrEnum]) -> Kind:
    """One of `options`, given as is; for a StrEnum, one of its values, parsed to its member."""
    values = [str(option) for option in options]
    to_value: Callable[[str], Any] = options if isinstance(options, type) else str

    def parse(text: str) -> Any:
        if text not in values:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(values)})"
            )
        return to_value(text)

    return Kind(parse, "{" + ",".join(values) + "}", str)


def _show_port(value: int | None) -> str:
    return "off" if value is None else str(value)


DURATION = Kind(parse_duration, "DURATION", format_duration)
BYTE_SIZE = Kind(parse_byte_size, "SIZE", format_byte_size)
COUNT = Kind(positive_int, "N")
ADDRESS = Kind(parse_address, "HOST:PORT")
ADDRESS_LIST = Kind(parse_address_list, "HOST:PORT,...", ",".join)
PORT = Kind(parse_port, "PORT|off", _show_port)
HOST = Kind(parse_host, "HOST")
PATH = Kind(parse_path, "PATH")
ETCD_ENDPOINTS = Kind(parse_etcd_endpoints, "HOST:PORT,...", ",".join)
ETCD_PREFIX = Kind(parse_etcd_prefix, "PREFIX")
