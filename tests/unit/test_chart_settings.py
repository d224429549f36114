"""The Helm chart's settings agree with their declarations: names, and the defaults it states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from goverse.gate import GateConfig
from goverse.node import NodeConfig
from goverse.server import Declared, ServiceSettings, declared
from goverse.server._service import LEAVE_SHARE

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "goverse"
SERVICES: dict[str, type[ServiceSettings]] = {"node": NodeConfig, "gate": GateConfig}

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):")
_DEFAULT = re.compile(r"\(default ([^)]+)\)")
# A ConfigMap key or an EnvVar name; comments that mention GOVERSE_* do not count.
_VARIABLE = re.compile(r"^\s*(?:- name: )?(GOVERSE_[A-Z0-9_]+)\s*(?::|$)")


def config_values(component: str) -> dict[str, str]:
    """The keys of ``<component>.config`` in values.yaml, each with its comment as one line."""
    keys: dict[str, str] = {}
    path: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip().removeprefix("-- "))
            continue
        match = _KEY.match(line)
        if match is None:
            comment = []
            continue
        indent = len(match["indent"])
        while path and path[-1][0] >= indent:
            path.pop()
        if [key for _, key in path] == [component, "config"]:
            keys[match["key"]] = " ".join(comment)
        path.append((indent, match["key"]))
        comment = []
    return keys


def variable_of(key: str) -> str:
    """What the chart's ``goverse.flagConfig`` makes of a key (helm's ``snakecase | upper``)."""
    return "GOVERSE_" + re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).upper()


def settings_by_variable(config_class: type[ServiceSettings]) -> dict[str, Declared]:
    return {item.env: item for item in declared(config_class)}


@pytest.mark.parametrize("component", sorted(SERVICES))
def test_every_config_value_is_a_declared_setting_with_its_declared_default(
    component: str,
) -> None:
    """A `config` key the chart passes as GOVERSE_* names a setting of that service; its
    comment names the flag, and a `(default ...)` in it is the declared default."""
    settings = settings_by_variable(SERVICES[component])
    values = config_values(component)
    assert values, f"no {component}.config values found in values.yaml"
    for key, comment in values.items():
        where = f"{component}.config.{key}"
        item = settings.get(variable_of(key))
        assert item is not None, f"{where}: {variable_of(key)} is no setting of {component}"
        assert f"`{item.flag}`" in comment, f"{where}: the comment does not name {item.flag}"
        stated = _DEFAULT.search(comment)
        if stated is not None:
            assert stated[1].strip("`") == item.default_text(), (
                f"{where}: the comment says default {stated[1]}, the declaration "
                f"{item.default_text()}"
            )


@pytest.mark.parametrize(
    ("templates", "components"),
    [("node/*.yaml", ["node"]), ("gate/*.yaml", ["gate"]), ("_helpers.tpl", ["node", "gate"])],
)
def test_every_variable_the_templates_set_is_a_declared_setting(
    templates: str, components: list[str]
) -> None:
    """GOVERSE_* keys of the ConfigMaps and env of the pods name settings of the service
    (the shared helpers' ones: of both)."""
    for path in sorted((CHART / "templates").glob(templates)):
        for line in path.read_text().splitlines():
            match = _VARIABLE.match(line)
            if match is None:
                continue
            for component in components:
                assert match[1] in settings_by_variable(SERVICES[component]), (
                    f"{path.name}: {match[1]} is no setting of {component}"
                )


def test_the_defaults_the_chart_computes_with_are_the_declared_ones() -> None:
    """The stop budget the chart derives (from the handoff timeout with etcd, the node's own
    budget with a static list) starts from the node's declared defaults, and so does
    wiring.py."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    chart_defaults = dict(
        re.findall(r'define "goverse\.nodeDefault\.([A-Za-z]+)" -}}([^{]*){{', helpers)
    )
    assert chart_defaults, "no goverse.nodeDefault.* in _helpers.tpl"
    settings = settings_by_variable(NodeConfig)
    for key, text in chart_defaults.items():
        item = settings[variable_of(key)]
        assert text == item.default_text(), (
            f"goverse.nodeDefault.{key} is {text}, the node declares {item.default_text()}"
        )
    wiring = (CHART.parents[2] / "scripts" / "chart" / "wiring.py").read_text()
    assert f'DEFAULT_HANDOFF_TIMEOUT = "{chart_defaults["handoffTimeout"]}"' in wiring


def test_the_chart_gives_the_handoff_the_share_of_the_budget_the_node_does() -> None:
    """A stopping node hands its shards off within LEAVE_SHARE of its shutdown budget; the
    chart's budget rule (and wiring.py's check of it) use the same share."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    share = re.search(r'define "goverse\.node\.leaveShare" -}}([^{]*){{', helpers)
    assert share is not None, "no goverse.node.leaveShare in _helpers.tpl"
    assert float(share[1]) == LEAVE_SHARE
    wiring = (CHART.parents[2] / "scripts" / "chart" / "wiring.py").read_text()
    assert f"LEAVE_SHARE = {LEAVE_SHARE}\n" in wiring


def test_the_etcd_prefix_value_is_the_declared_default() -> None:
    """`etcd.prefix`, passed to both services as GOVERSE_ETCD_PREFIX, defaults to what both
    declare, and its comment names the flag and that default."""
    values = (CHART / "values.yaml").read_text()
    block = re.search(r"^etcd:\n(?:(?:  .*|#.*|)\n)*", values, re.MULTILINE)
    assert block is not None, "no etcd: section in values.yaml"
    match = re.search(r"((?:^  #.*\n)+)^  prefix: (\S+)$", block[0], re.MULTILINE)
    assert match is not None, "no etcd.prefix in values.yaml"
    comment, value = match[1], match[2]
    for config in SERVICES.values():
        item = settings_by_variable(config)["GOVERSE_ETCD_PREFIX"]
        assert value == item.default_text()
        assert f"`{item.flag}`" in comment
        assert f"(default {item.default_text()})" in comment


def test_the_chart_turns_metrics_off_with_the_flags_own_word() -> None:
    """metrics.enabled=false renders --metrics-port off (0 would bind any free port)."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert '"off" $v.metrics.enabled' in helpers


def test_the_reader_finds_keys_and_their_comments() -> None:
    """The values.yaml reader this check relies on sees nested keys and multi-line comments."""
    gate = config_values("gate")
    assert "slowClientPolicy" in gate
    assert "(default disconnect)" in gate["slowClientPolicy"]
    assert variable_of("keepaliveMinTime") == "GOVERSE_KEEPALIVE_MIN_TIME"
