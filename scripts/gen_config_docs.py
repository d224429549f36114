"""Writes the settings tables of docs/configuration.md from their declarations, or checks them.

    python scripts/gen_config_docs.py           # rewrite the tables in place (`make docs`)
    python scripts/gen_config_docs.py --check   # exit 1 when the page is stale

A table sits between ``<!-- settings: NAME -->`` and ``<!-- end settings -->``: NAME ``shared``
is the settings every service has (goverse.server.ServiceSettings), a program name
(``goverse-node``, ``goverse-gate``) the settings only that program has. The unit test
tests/unit/test_docs.py fails when the page differs from what this renders.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from goverse.gate import GateConfig
from goverse.node import NodeConfig
from goverse.server import Declared, ServiceSettings, declared, markdown_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
_BLOCK = re.compile(r"(<!-- settings: (?P<name>[\w-]+) -->\n).*?(<!-- end settings -->)", re.S)


def _own(config_class: type[ServiceSettings]) -> list[Declared]:
    shared = {item.name for item in declared(ServiceSettings)}
    return [item for item in declared(config_class) if item.name not in shared]


TABLES: dict[str, list[Declared]] = {
    "shared": declared(ServiceSettings),
    NodeConfig.program: _own(NodeConfig),
    GateConfig.program: _own(GateConfig),
}


def render(page: str) -> str:
    """`page` with every settings table rendered afresh from the declarations."""
    found = {match["name"] for match in _BLOCK.finditer(page)}
    if found != set(TABLES):
        raise ValueError(
            f"{PAGE.name} must have one settings block for each of {', '.join(TABLES)}; "
            f"it has {', '.join(sorted(found)) or 'none'}"
        )
    return _BLOCK.sub(lambda m: m[1] + "\n" + markdown_table(TABLES[m["name"]]) + "\n" + m[3], page)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is stale")
    args = parser.parse_args()
    page = PAGE.read_text()
    rendered = render(page)
    if args.check:
        if rendered != page:
            print(f"{PAGE} is stale; run `make docs` and commit it", file=sys.stderr)
            return 1
        print(f"{PAGE.name} is current")
    elif rendered != page:
        PAGE.write_text(rendered)
        print(f"rewrote the settings tables of {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
