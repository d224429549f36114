"""Gate flags: defaults, GOVERSE_* variables, validation with a clear message and exit 2."""

from __future__ import annotations

from datetime import timedelta

import pytest

from goverse.gate._config import GateConfig, default_gate_id, parse_config
from goverse.ids import gate_id_problem
from goverse.server import parse_byte_size
from goverse.transport import Keepalive


def test_defaults() -> None:
    """Without flags or variables, the documented defaults apply."""
    config = parse_config([], {})
    assert config.listen == "0.0.0.0:7100"
    assert config.static_nodes == ("127.0.0.1:7000",)
    assert config.shutdown_timeout == timedelta(seconds=5)
    assert config.reconnect_initial == timedelta(milliseconds=100)
    assert config.reconnect_max == timedelta(seconds=5)
    assert config.stable_after == timedelta(seconds=10)
    assert config.node_heartbeat_timeout == timedelta(seconds=15)
    assert config.client_queue_messages == 1000
    assert config.client_queue_bytes == 4 * 1024 * 1024
    assert config.max_clients == 10_000
    assert config.call_timeout == timedelta(seconds=30)
    assert config.max_message_bytes == 4 * 1024 * 1024
    assert (config.log_level, config.log_format) == ("info", "auto")
    assert config.slow_client_policy == "disconnect"
    assert config.keepalive == Keepalive()
    assert gate_id_problem(config.gate_id) is None


def test_slow_client_policy_and_keepalive_from_flags_and_environment() -> None:
    environ = {"GOVERSE_SLOW_CLIENT_POLICY": "drop-oldest", "GOVERSE_KEEPALIVE_TIME": "3s"}
    config = parse_config(["--keepalive-timeout=2s", "--keepalive-min-time=1s"], environ)
    assert config.slow_client_policy == "drop-oldest"
    assert config.keepalive == Keepalive(
        time=timedelta(seconds=3), timeout=timedelta(seconds=2), min_time=timedelta(seconds=1)
    )


def test_environment_sets_and_flags_win() -> None:
    """Each flag falls back to its GOVERSE_* variable; the command line wins over it."""
    environ = {
        "GOVERSE_GATE_ID": "from-env",
        "GOVERSE_NODES": "10.0.0.1:7000,10.0.0.2:7000",
        "GOVERSE_CLIENT_QUEUE_BYTES": "512KiB",
        "GOVERSE_NODE_HEARTBEAT_TIMEOUT": "2s",
    }
    config = parse_config(["--gate-id=from-flag"], environ)
    assert config.gate_id == "from-flag"
    assert config.nodes == ("10.0.0.1:7000", "10.0.0.2:7000")
    assert config.client_queue_bytes == 512 * 1024
    assert config.node_heartbeat_timeout == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gate-id=has space"], "--gate-id"),
        (["--gate-id=-leading-dash"], "--gate-id"),
        (["--nodes="], "--nodes"),
        (["--nodes=a:1,a:1"], "more than once"),
        (["--nodes=nohostport"], "host:port"),
        (["--listen=7100"], "host:port"),
        (["--shutdown-timeout=soon"], "not a duration"),
        (["--reconnect-initial=2s", "--reconnect-max=1s"], "--reconnect-max"),
        (["--call-timeout=0s"], "--call-timeout must be positive"),
        (["--max-clients=0"], "at least 1"),
        (["--client-queue-bytes=lots"], "not a byte size"),
        (["--max-message-bytes=1KiB"], "--max-message-bytes"),
        (["--log-level=loud"], "invalid choice"),
        (["--slow-client-policy=block"], "invalid choice"),
        (["--keepalive-timeout=0ms"], "--keepalive-timeout must be positive"),
        (["--tls-cert=a.crt"], "--tls-cert given without --tls-key, --tls-ca"),
        (["--tls-key=a.key", "--tls-ca=ca.pem"], "given without --tls-cert"),
        (["--tls-ca=ca.pem"], "--tls-ca given without --tls-cert, --tls-key"),
        (["--client-tls-cert=c.crt"], "--client-tls-cert given without --client-tls-key"),
        (["--client-tls-key=c.key"], "--client-tls-key given without --client-tls-cert"),
        (
            ["--client-tls-cert=c.crt", "--client-tls-key=c.key"],
            "--client-tls-cert needs --tls-cert, --tls-key and --tls-ca",
        ),
        (["--health-port=http"], "--health-port"),
        (["--authenticator=ldap"], "is not none, jwt or module:attribute"),
        (["--authenticator=jwt"], "needs exactly one of --jwt-secret-file"),
        (
            ["--authenticator=jwt", "--jwt-secret-file=a", "--jwt-public-key=b"],
            "given: --jwt-secret-file, --jwt-public-key",
        ),
        (["--jwt-secret-file=a"], "--jwt-secret-file is used only with --authenticator jwt"),
        (["--jwt-claims="], "the list is empty"),
        (["--jwt-audience= "], "the value is empty"),
        (["--registration-rate=0"], "must be a positive number per second"),
        (["--registration-rate=fast"], "is not a number per second"),
        (["--max-registrations-per-peer=0"], "at least 1"),
    ],
)
def test_invalid_values_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value stops the gate before anything starts, naming the flag or the problem."""
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, {})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_invalid_environment_value_is_refused() -> None:
    """A bad GOVERSE_* value is as fatal as a bad flag."""
    with pytest.raises(SystemExit) as exited:
        parse_config([], {"GOVERSE_GATE_ID": "no/slashes"})
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("gate-7d9f-abc", "gate-7d9f-abc"),
        ("my host.example", "my-host.example"),
        ("--weird__", "weird"),
        ("x" * 100, "x" * 63),
        ("", "gate"),
        ("ü", "gate"),
    ],
)
def test_default_gate_id_is_a_sanitised_host_name(hostname: str, expected: str) -> None:
    """The host name becomes a valid gate id; hopeless names fall back to "gate"."""
    assert default_gate_id(hostname) == expected
    assert gate_id_problem(default_gate_id(hostname)) is None


def test_parse_byte_size() -> None:
    assert parse_byte_size("65536") == 65536
    assert parse_byte_size("4MiB") == 4 * 1024 * 1024
    assert parse_byte_size("1mb") == 1_000_000


def test_config_rejects_an_invalid_gate_id_when_built_directly() -> None:
    """Tests and embedders building a GateConfig get the same validation as the flags."""
    with pytest.raises(ValueError, match="gate id"):
        GateConfig(gate_id="a/b", nodes=("127.0.0.1:1",))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"call_timeout": timedelta(0)}, "--call-timeout must be positive"),
        ({"max_clients": 0}, "argument --max-clients: 0 must be at least 1"),
        ({"nodes": ("a:1", "a:1")}, "more than once"),
        ({"nodes": ("nohost",)}, "host:port"),
        ({"listen": "7100"}, "argument --listen"),
        ({"slow_client_policy": "block"}, "invalid choice"),
        ({"max_message_bytes": 1024}, "--max-message-bytes must be at least 64KiB"),
        ({"reconnect_initial": timedelta(seconds=10)}, "--reconnect-max"),
    ],
)
def test_a_config_built_in_code_is_checked_like_flags(
    settings: dict[str, object], message: str
) -> None:
    """GateConfig(...) raises ValueError naming the flag, for the same checks as parse_config."""
    with pytest.raises(ValueError, match=message):
        GateConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--nodes=a:1,a:1"], {}),
        (["--call-timeout=0s"], {}),
        (["--reconnect-initial=2s", "--reconnect-max=1s"], {}),
        (["--no-such-flag"], {}),
        ([], {"GOVERSE_MAX_CLIENTS": "many"}),
    ],
)
def test_every_config_error_is_one_line_naming_the_program(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad values, bad combinations, unknown flags and bad variables: one line, no usage."""
    with pytest.raises(SystemExit) as exited:
        parse_config(argv, environ)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("goverse-gate: error: ")
    assert err.count("\n") == 1


def test_an_environment_error_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config([], {"GOVERSE_MAX_CLIENTS": "many"})
    assert capsys.readouterr().err == (
        "goverse-gate: error: argument --max-clients: 'many' is not a whole number "
        "(from GOVERSE_MAX_CLIENTS)\n"
    )


def test_listen_and_nodes_take_unix_socket_addresses() -> None:
    config = parse_config(["--listen=unix:/run/gate.sock", "--nodes=unix:/run/n0.sock"], {})
    assert (config.listen, config.nodes) == ("unix:/run/gate.sock", ("unix:/run/n0.sock",))


def test_gate_defaults_of_the_shared_settings() -> None:
    """listen and metrics-port are declared once, with a default per service."""
    config = GateConfig()
    assert (config.listen, config.metrics_port, config.ready_file) == ("0.0.0.0:7100", 9465, None)


def test_tls_flags_from_the_environment() -> None:
    """A full TLS configuration from GOVERSE_* variables; the client-facing listener presents
    the gate's own certificate unless --client-tls-cert says otherwise."""
    config = parse_config(
        [],
        {
            "GOVERSE_TLS_CERT": "/tls/tls.crt",
            "GOVERSE_TLS_KEY": "/tls/tls.key",
            "GOVERSE_TLS_CA": "/tls/ca.crt",
            "GOVERSE_HEALTH_PORT": "7101",
        },
    )
    assert config.tls is not None
    assert str(config.tls.ca) == "/tls/ca.crt"
    assert config.client_tls is None
    assert config.health_port == 7101


def test_without_tls_flags_the_gate_is_plaintext() -> None:
    config = parse_config([], {})
    assert config.tls is None
    assert config.health_port is None


def test_authentication_and_peer_bound_defaults() -> None:
    """Without flags nobody is authenticated (as before), the default claims are forwarded
    with a JWT, and per-peer bounds leave a single host room."""
    config = parse_config([], {})
    assert config.authenticator == "none"
    assert config.jwt_claims == ("scope", "roles")
    assert config.max_registrations_per_peer == 2000
    assert config.registration_rate == 200.0
    assert config.access_rules is None
    jwt = parse_config(
        ["--authenticator=jwt", "--jwt-jwks-file=/keys.json", "--jwt-claims=email,groups"], {}
    )
    assert jwt.jwt_claims == ("email", "groups")
