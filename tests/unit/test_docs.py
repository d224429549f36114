"""The configuration page documents every flag of both services, as their declarations say;
the Python examples of README.md and docs/ import only what goverse has."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
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


ROOT = DOC.parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_the_goverse_names_the_python_examples_import_exist(page: Path) -> None:
    """Every ``from goverse… import name`` in a Python example of the page (README.md and
    docs/) names a module and an attribute that exist, and every example parses."""
    for snippet in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
        for node in ast.walk(ast.parse(snippet)):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.module.partition(".")[0] != "goverse":
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{page.name}: {node.module}.{alias.name}"


def _free_names(tree: ast.AST) -> set[str]:
    """The names `tree` reads that it neither imports nor binds, builtins aside."""
    bound: set[str] = set(dir(builtins))
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
    return read - bound


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_a_python_example_that_imports_imports_every_name_it_uses(page: Path) -> None:
    """An example with imports is meant to be complete: it reads no name it does not import
    or define (a fragment without imports, one class to show a point, may lean on the text).
    README's Room used CounterValue and docs/state.md's Counter its messages, unimported."""
    for snippet in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
        tree = ast.parse(snippet)
        if any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(tree)):
            assert not _free_names(tree), f"{page.name}: {snippet.splitlines()[0]}"
