"""Settings: one declaration per setting, from which flags, --help and checks are derived."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import timedelta

import pytest

from goverse.gate import GateConfig
from goverse.node import NodeConfig
from goverse.server import (
    DURATION,
    ServiceSettings,
    declared,
    format_byte_size,
    format_duration,
    parse_address,
    parse_byte_size,
    parse_duration,
    parse_port,
    positive,
    setting,
)


@pytest.mark.parametrize("config_class", [GateConfig, NodeConfig])
def test_a_shared_setting_is_the_same_declaration_in_both_services(
    config_class: type[ServiceSettings],
) -> None:
    """listen, shutdown-timeout, keepalive, metrics-port, ... are declared once, in the base."""
    own = {item.name: item.setting for item in declared(config_class)}
    for item in declared(ServiceSettings):
        assert own[item.name] is item.setting, item.flag


def test_a_per_service_default_is_one_declaration_with_a_default_per_program() -> None:
    assert (NodeConfig().listen, GateConfig().listen) == ("0.0.0.0:7000", "0.0.0.0:7100")
    assert (NodeConfig().metrics_port, GateConfig().metrics_port) == (9464, 9465)


def test_a_service_without_its_per_service_default_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="--listen has no default for goverse-elsewhere"):

        @dataclass(frozen=True, kw_only=True)
        class Elsewhere(ServiceSettings, program="goverse-elsewhere"):
            pass


@pytest.mark.parametrize("columns", ["40", "80", "200"])
@pytest.mark.parametrize("config_class", [GateConfig, NodeConfig])
def test_help_shows_every_flag_with_its_variable_and_default(
    config_class: type[ServiceSettings], columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At any terminal width: help is wrapped between words, never inside a flag's name
    (argparse's default cut ``--max-message-bytes`` at a hyphen, at some widths)."""
    monkeypatch.setenv("COLUMNS", columns)
    text = " ".join(config_class.parser({}).format_help().split())
    for item in declared(config_class):
        assert f"{item.flag} " in text
        assert f"[env {item.env}; default: {item.default_text()}]" in text, item.flag


def test_a_value_shows_as_the_text_that_parses_back_to_it() -> None:
    """--help and the docs print defaults in the flags' own syntax."""
    for value in (timedelta(milliseconds=100), timedelta(seconds=5), timedelta(minutes=2)):
        assert parse_duration(format_duration(value)) == value
    assert [format_duration(timedelta(seconds=s)) for s in (0.1, 30, 120)] == ["100ms", "30s", "2m"]
    assert [format_byte_size(n) for n in (64 * 1024**2, 65536, 1000)] == ["64MiB", "64KiB", "1000"]
    assert parse_byte_size(format_byte_size(4 * 1024**2)) == 4 * 1024**2


@pytest.mark.parametrize("text", ["127.0.0.1:7000", "[::1]:0", "node-0.svc:7000", "unix:/a/b"])
def test_addresses_are_host_port_or_an_absolute_unix_socket_path(text: str) -> None:
    assert parse_address(text) == text


@pytest.mark.parametrize(
    "text", ["7000", "host", "host:99999", "host:\u00b2", "unix:rel.sock", "unix:/"]
)
def test_anything_else_is_not_an_address(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_address(text)


def test_a_port_is_0_to_65535_or_off() -> None:
    assert [parse_port(text) for text in ("off", "0", "9464")] == [None, 0, 9464]
    for text in ("none", "\u00b2"):  # a digit to str.isdigit(), not to int()
        with pytest.raises(argparse.ArgumentTypeError, match="or off"):
            parse_port(text)


def test_an_invalid_default_fails_like_an_invalid_value() -> None:
    """A default passes the same checks as a flag: a wrong one fails on first use."""

    @dataclass(frozen=True, kw_only=True)
    class Broken(ServiceSettings, program="goverse-node"):
        drain_timeout: timedelta = setting(
            timedelta(0), help="drain", kind=DURATION, check=positive
        )

    with pytest.raises(ValueError, match="--drain-timeout must be positive"):
        Broken()


@pytest.mark.parametrize("config_class", [GateConfig, NodeConfig])
def test_a_message_limit_past_what_grpc_takes_is_refused(
    config_class: type[ServiceSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    """gRPC takes a message limit as a C int, and links between services 64 KiB more: 4GiB
    exits 2 with a message, not an OverflowError once the server is made."""
    with pytest.raises(SystemExit) as exit_info:
        config_class.parser({}).parse(["--max-message-bytes=4GiB"])
    assert exit_info.value.code == 2
    assert "--max-message-bytes must be at most" in capsys.readouterr().err
    largest = config_class.parser({}).parse(["--max-message-bytes=2147418111"])
    assert largest.max_message_bytes + 64 * 1024 == 2**31 - 1
