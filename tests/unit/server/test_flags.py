"""Flags: environment fallbacks, parsing and clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from goverse.server import (
    Kind,
    ServiceSettings,
    SettingsParser,
    parse_address_list,
    parse_duration,
    setting,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), ("1.5", 1.5)],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == timedelta(seconds=expected)


@dataclass(frozen=True, kw_only=True)
class Sample(ServiceSettings, program="goverse-node", description="a test"):
    """The shared settings (shutdown-timeout, log-level, log-format, ...) and a node list."""

    nodes: tuple[str, ...] = setting(
        ("127.0.0.1:7000",), help="nodes", kind=Kind(parse_address_list, "NODES", ",".join)
    )


def make_parser(environ: dict[str, str]) -> SettingsParser[Sample]:
    return Sample.parser(environ)


def test_environment_fills_defaults_and_flags_win() -> None:
    parser = make_parser({"GOVERSE_SHUTDOWN_TIMEOUT": "2s", "GOVERSE_NODES": "a:1,b:2"})
    args = parser.parse([])
    assert args.shutdown_timeout == timedelta(seconds=2)
    assert args.nodes == ("a:1", "b:2")
    args = parser.parse(["--shutdown-timeout=3s"])
    assert args.shutdown_timeout == timedelta(seconds=3)


@pytest.mark.parametrize(
    "environ",
    [
        {"GOVERSE_SHUTDOWN_TIMEOUT": "soon"},
        {"GOVERSE_NODES": "a:1,a:1"},
        {"GOVERSE_NODES": "nohost"},
        {"GOVERSE_LOG_LEVEL": "loud"},
        {"GOVERSE_SHUTDOWN_TIMEOUT": "99999999999999999999s"},
        {"GOVERSE_CALL_TIMEOUT": "1" * 400},
    ],
)
def test_bad_environment_values_exit_2_with_a_message(
    environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_parser(environ).parse([])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_names_the_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        make_parser({}).parse(["--help"])
    out = capsys.readouterr().out
    assert "GOVERSE_SHUTDOWN_TIMEOUT" in out
    assert "GOVERSE_LOG_FORMAT" in out
