"""Tests of the node's flags: defaults, environment fallbacks and validation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from goverse.node import NodeConfig, build_parser, parse_config
from goverse.node._config import module_list
from goverse.server import parse_byte_size
from goverse.transport import Keepalive

FLAGS = [
    "--listen",
    "--advertise",
    "--nodes",
    "--objects",
    "--shutdown-timeout",
    "--gate-queue-size",
    "--gate-queue-bytes",
    "--heartbeat-interval",
    "--max-message-bytes",
    "--call-timeout",
    "--keepalive-time",
    "--keepalive-timeout",
    "--keepalive-min-time",
    "--log-level",
    "--log-format",
]


def test_defaults_match_the_documented_ones() -> None:
    """With no flags and no environment, the node listens on :7000 as the only node."""
    config = parse_config([], {})
    assert config == NodeConfig()
    assert config.listen == "0.0.0.0:7000"
    assert config.advertise == "127.0.0.1:7000"
    assert config.nodes == ("127.0.0.1:7000",)
    assert config.objects == ("goverse.examples.counter", "goverse.examples.chat")
    assert config.shutdown_timeout == timedelta(seconds=5)
    assert config.max_message_bytes == 4 * 1024 * 1024
    assert config.keepalive == Keepalive(
        time=timedelta(seconds=10), timeout=timedelta(seconds=5), min_time=timedelta(seconds=5)
    )


def test_keepalive_flags_set_the_keepalive() -> None:
    config = parse_config(
        ["--keepalive-time=2s", "--keepalive-min-time=500ms"], {"GOVERSE_KEEPALIVE_TIMEOUT": "1s"}
    )
    assert config.keepalive == Keepalive(
        time=timedelta(seconds=2), timeout=timedelta(seconds=1), min_time=timedelta(seconds=0.5)
    )


def test_advertise_defaults_to_loopback_and_the_listen_port() -> None:
    """Without --advertise, the node's name is 127.0.0.1 and the port of --listen."""
    config = parse_config(["--listen=0.0.0.0:7005", "--nodes=127.0.0.1:7005,127.0.0.1:7006"], {})
    assert config.advertise == "127.0.0.1:7005"


def test_environment_supplies_values_and_flags_win() -> None:
    """GOVERSE_* variables set values; a flag on the command line overrides its variable."""
    environ = {
        "GOVERSE_NODES": "n0:7000,n1:7000",
        "GOVERSE_ADVERTISE": "n1:7000",
        "GOVERSE_CALL_TIMEOUT": "750ms",
        "GOVERSE_GATE_QUEUE_SIZE": "42",
        "GOVERSE_MAX_MESSAGE_BYTES": "8MiB",
    }
    config = parse_config(["--gate-queue-size=7"], environ)
    assert config.nodes == ("n0:7000", "n1:7000")
    assert config.advertise == "n1:7000"
    assert config.call_timeout == timedelta(milliseconds=750)
    assert config.gate_queue_size == 7
    assert config.max_message_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--advertise=127.0.0.1:7001"], "is not in --nodes"),
        (["--listen=nowhere"], "--listen"),
        (["--nodes="], "--nodes"),
        (["--nodes=127.0.0.1:7000,127.0.0.1:7000"], "more than once"),
        (["--objects=not a module"], "--objects"),
        (["--shutdown-timeout=soon"], "--shutdown-timeout"),
        (["--shutdown-timeout=0s"], "--shutdown-timeout"),
        (["--call-timeout=0"], "--call-timeout"),
        (["--heartbeat-interval=10ms"], "--heartbeat-interval"),
        (["--gate-queue-size=0"], "--gate-queue-size"),
        (["--max-message-bytes=12"], "--max-message-bytes"),
        (["--max-message-bytes=lots"], "--max-message-bytes"),
        (["--log-level=chatty"], "--log-level"),
        (["--keepalive-time=0s"], "--keepalive-time must be positive"),
        (["--keepalive-min-time=never"], "--keepalive-min-time"),
    ],
)
def test_invalid_values_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every invalid value ends parsing with exit code 2 and a message naming the problem."""
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_environment_value_is_refused_like_a_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad GOVERSE_* value is an error too, not silently ignored."""
    with pytest.raises(SystemExit) as exited:
        parse_config([], {"GOVERSE_LOG_FORMAT": "xml"})
    assert exited.value.code == 2
    assert "--log-format" in capsys.readouterr().err


def test_help_documents_every_flag_and_its_variable() -> None:
    """--help names every flag with its GOVERSE_* variable."""
    text = build_parser({}).format_help()
    for flag in FLAGS:
        assert flag in text
        assert "GOVERSE_" + flag[2:].upper().replace("-", "_") in text


def test_byte_sizes_and_module_lists_parse() -> None:
    """Sizes take binary units; module lists are dotted names without repeats."""
    assert parse_byte_size("65536") == 65536
    assert parse_byte_size("512KiB") == 512 * 1024
    assert parse_byte_size("4mib") == 4 * 1024 * 1024
    assert module_list("a.b, c") == ("a.b", "c")
