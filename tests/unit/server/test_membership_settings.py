"""Membership settings: etcd endpoints and prefix, lease timing, and what excludes what."""

from __future__ import annotations

from datetime import timedelta

import pytest

from goverse.gate._config import GateConfig
from goverse.gate._config import parse_config as parse_gate
from goverse.node._config import NodeConfig
from goverse.node._config import parse_config as parse_node


def test_without_etcd_membership_is_static_and_the_gate_has_its_default_node() -> None:
    gate = parse_gate([], {})
    assert (gate.membership, gate.static_nodes) == ("static", ("127.0.0.1:7000",))
    assert parse_node([], {}).membership == "static"


def test_etcd_endpoints_take_host_port_or_http_urls_and_the_environment() -> None:
    """Endpoints come back as host:port; the variable works like the flag."""
    gate = parse_gate([], {"GOVERSE_ETCD_ENDPOINTS": "http://10.0.0.1:2379,etcd-1:2379"})
    assert gate.etcd_endpoints == ("10.0.0.1:2379", "etcd-1:2379")
    assert gate.membership == "etcd"
    node = parse_node(["--etcd-endpoints=127.0.0.1:2379", "--etcd-prefix=/apps/chat"], {})
    assert (node.etcd_endpoints, node.etcd_prefix) == (("127.0.0.1:2379",), "/apps/chat")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--etcd-endpoints=https://etcd:2379"], "TLS to etcd is not supported"),
        (["--etcd-endpoints=etcd"], "is not host:port or http://host:port"),
        (["--etcd-endpoints=etcd:0"], "is not host:port or http://host:port"),
        (["--etcd-endpoints=a:1,a:1"], "appears more than once"),
        (["--etcd-prefix=goverse"], "is not a key prefix"),
        (["--etcd-prefix=/goverse/"], "is not a key prefix"),
        (["--lease-ttl=1s"], "--lease-ttl must be at least 2s"),
        (["--lease-ttl=4s", "--etcd-timeout=2s"], "must be under half of --lease-ttl"),
        (["--etcd-endpoints=e:2379", "--nodes=127.0.0.1:7000"], "exclude each other"),
    ],
)
def test_bad_membership_settings_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for parse in (parse_gate, parse_node):
        with pytest.raises(SystemExit) as exited:
            parse(args, {})
        assert exited.value.code == 2
        error = capsys.readouterr().err.strip()
        assert message in error
        assert len(error.splitlines()) == 1, error


def test_the_node_fence_margin_must_leave_most_of_the_lease() -> None:
    short = timedelta(seconds=1)
    with pytest.raises(ValueError, match=r"--fence-margin \(2s\) must be under half"):
        NodeConfig(lease_ttl=timedelta(seconds=4), etcd_timeout=short)
    assert NodeConfig(lease_ttl=timedelta(seconds=5), etcd_timeout=short)


def test_a_config_built_in_code_is_checked_like_flags() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        GateConfig(gate_id="g", nodes=("a:1",), etcd_endpoints=("e:2379",))
