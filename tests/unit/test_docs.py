"""The configuration page documents every flag of both services."""

from __future__ import annotations

from pathlib import Path

import pytest

from goverse.gate._config import build_parser as gate_parser
from goverse.node._config import build_parser as node_parser
from goverse.server import FlagParser

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize("parser", [node_parser({}), gate_parser({})], ids=["node", "gate"])
def test_every_flag_and_variable_is_documented(parser: FlagParser) -> None:
    text = DOC.read_text()
    for action in parser._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0]
        env = "GOVERSE_" + flag[2:].upper().replace("-", "_")
        assert f"`{flag}`" in text, f"{flag} is missing from {DOC.name}"
        assert f"`{env}`" in text, f"{env} is missing from {DOC.name}"
