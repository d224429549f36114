"""Tests of the node's flags: defaults, environment fallbacks and validation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from goverse.node import NodeConfig, build_parser, parse_config
from goverse.node._config import module_list, redact_store, store_passwords
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
    # --advertise and --nodes are unset: the name and the list follow from the bound address.
    advertise, nodes = config.identity("0.0.0.0:7000")
    assert advertise == "127.0.0.1:7000"
    assert nodes == ("127.0.0.1:7000",)
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
    advertise, _ = config.identity("0.0.0.0:7005")
    assert advertise == "127.0.0.1:7005"


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
        (["--advertise=127.0.0.1:7001", "--nodes=127.0.0.1:7000"], "is not in --nodes"),
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
        (["--max-gates=0"], "--max-gates"),
        (["--tls-cert=n.crt", "--tls-key=n.key"], "given without --tls-ca"),
        (["--tls-key=n.key"], "--tls-key given without --tls-cert, --tls-ca"),
        (["--tls-reload-interval=0s"], "--tls-reload-interval"),
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


@pytest.mark.parametrize(
    ("config", "bound", "expected"),
    [
        (NodeConfig(listen="127.0.0.1:0"), "127.0.0.1:43210", "127.0.0.1:43210"),
        (NodeConfig(listen="[::]:7000"), "[::]:7000", "127.0.0.1:7000"),
        (NodeConfig(listen="unix:/run/n.sock"), "unix:/run/n.sock", "unix:/run/n.sock"),
        (NodeConfig(listen="0.0.0.0:0", advertise="n1:7000"), "0.0.0.0:43210", "n1:7000"),
    ],
)
def test_identity_fills_in_an_unset_advertise_and_node_list_once_bound(
    config: NodeConfig, bound: str, expected: str
) -> None:
    """Unset --advertise: 127.0.0.1 and the bound port (a unix: address names itself); unset
    --nodes: this node alone."""
    assert config.identity(bound) == (expected, (expected,))


def test_identity_keeps_what_was_given() -> None:
    config = NodeConfig(listen="0.0.0.0:0", advertise="n1:7000", nodes=("n0:7000", "n1:7000"))
    assert config.identity("0.0.0.0:43210") == ("n1:7000", ("n0:7000", "n1:7000"))


def test_unix_socket_addresses_are_accepted_for_listen_advertise_and_nodes() -> None:
    config = parse_config(
        [
            "--listen=unix:/run/goverse/n0.sock",
            "--advertise=unix:/run/goverse/n0.sock",
            "--nodes=unix:/run/goverse/n0.sock,10.0.0.2:7000",
        ],
        {},
    )
    assert config.listen == "unix:/run/goverse/n0.sock"
    assert config.nodes == ("unix:/run/goverse/n0.sock", "10.0.0.2:7000")
    # A unix: --listen is its own name when --advertise is unset.
    assert parse_config(["--listen=unix:/tmp/n.sock", "--nodes=unix:/tmp/n.sock"], {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--listen=0.0.0.0:7005", "--nodes=127.0.0.1:7000"],
            "--advertise 127.0.0.1:7005 (from --listen) is not in --nodes",
        ),
        (
            ["--listen=127.0.0.1:0", "--nodes=127.0.0.1:7000"],
            "the node's own address is unknown until it binds",
        ),
        (["--advertise=127.0.0.1:0"], "--advertise must not have port 0"),
        (["--listen=unix:relative.sock"], "is not unix:/absolute/path"),
        (["--metrics-port=never"], "argument --metrics-port"),
        (["--ready-file="], "argument --ready-file: the path is empty"),
    ],
)
def test_identity_and_new_settings_are_checked_at_parse_time(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What can be known before binding is checked before anything starts."""
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_advertise_missing_from_nodes_is_one_line_naming_the_program(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not an argparse usage dump: one line, the program's name, the problem, exit 2."""
    with pytest.raises(SystemExit) as exited:
        parse_config(["--advertise=10.0.0.9:7000", "--nodes=10.0.0.1:7000,10.0.0.2:7000"], {})
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "goverse-node: error: --advertise 10.0.0.9:7000 is not in --nodes "
        "(10.0.0.1:7000,10.0.0.2:7000); a node must be named in the node list it serves\n"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"advertise": "10.0.0.9:7000", "nodes": ("10.0.0.1:7000",)}, "is not in --nodes"),
        ({"nodes": ()}, "argument --nodes: the list is empty"),
        ({"heartbeat_interval": timedelta(milliseconds=10)}, "--heartbeat-interval"),
        ({"objects": ("not a module",)}, "argument --objects"),
        ({"metrics_port": 70_000}, "argument --metrics-port"),
        ({"keepalive_time": timedelta(0)}, "--keepalive-time must be positive"),
    ],
)
def test_a_config_built_in_code_is_checked_like_flags(
    settings: dict[str, object], message: str
) -> None:
    """Tests and embedders get the same checks, as a ValueError naming the flag."""
    with pytest.raises(ValueError, match=message):
        NodeConfig(**settings)  # type: ignore[arg-type]


def test_metrics_port_off_disables_and_0_means_any_free_port() -> None:
    assert parse_config(["--metrics-port=off"], {}).metrics_port is None
    assert parse_config([], {"GOVERSE_METRICS_PORT": "0"}).metrics_port == 0
    assert parse_config([], {}).metrics_port == 9464


def test_ready_file_from_flag_or_environment() -> None:
    assert parse_config([], {}).ready_file is None
    assert parse_config([], {"GOVERSE_READY_FILE": "/tmp/n.json"}).ready_file == Path("/tmp/n.json")


def test_a_store_url_never_shows_its_password() -> None:
    """Passwords in the user part or the query string of a PostgreSQL URL are hidden
    wherever the setting is shown (logs, --help defaults, errors)."""
    shown = redact_store("postgresql://app:s3cret@db:5432/x?sslmode=require&password=s3cret")
    assert "s3cret" not in shown
    assert shown == "postgresql://app:***@db:5432/x?sslmode=require&password=***"
    assert redact_store("postgresql://db/x?PassWord=s3cret") == "postgresql://db/x?PassWord=***"
    assert redact_store("sqlite:/data/state.db") == "sqlite:/data/state.db"


def test_the_passwords_a_store_url_holds_are_the_ones_it_hides() -> None:
    url = "postgresql://app:se/cret@db/x?password=q%2Fr&Password=tt9"
    assert store_passwords(url) == ["se/cret", "q%2Fr", "tt9"]
    assert not any(password in redact_store(url) for password in store_passwords(url))
    assert store_passwords("postgresql://app@db/x") == []


def test_sqlite_serves_one_node_only() -> None:
    with pytest.raises(ValueError, match="sqlite: serves one node only"):
        NodeConfig(store="sqlite:/tmp/x.db", nodes=("a:1", "b:2"), advertise="a:1")
    with pytest.raises(ValueError, match="sqlite: serves one node only"):
        NodeConfig(store="sqlite:/tmp/x.db", etcd_endpoints=("127.0.0.1:2379",))
    assert parse_config(["--store=sqlite:/tmp/x.db"]).store == "sqlite:/tmp/x.db"
