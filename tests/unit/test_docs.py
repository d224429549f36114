"""The configuration page documents every flag of both services, as their declarations say."""

from __future__ import annotations

from pathlib import Path

import pytest

from goverse.gate._config import build_parser as gate_parser
from goverse.node._config import build_parser as node_parser
from goverse.server import SettingsParser
from scripts.gen_config_docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize("parser", [node_parser({}), gate_parser({})], ids=["node", "gate"])
def test_every_flag_and_variable_is_documented(parser: SettingsParser[object]) -> None:
    text = DOC.read_text()
    for action in parser._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0]
        env = "GOVERSE_" + flag[2:].upper().replace("-", "_")
        assert f"`{flag}`" in text, f"{flag} is missing from {DOC.name}"
        assert f"`{env}`" in text, f"{env} is missing from {DOC.name}"


def test_the_settings_tables_are_what_the_declarations_render() -> None:
    """The tables are generated, so the page cannot drift from the code: after changing a
    setting, `make docs` rewrites them."""
    page = DOC.read_text()
    assert render(page) == page, f"{DOC.name} is stale: run `make docs`"
