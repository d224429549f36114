"""The Helm chart's settings agree with their declarations: names, the defaults it states, and
what the node parses out of a rendering (the store's settings)."""

from __future__ import annotations

import argparse
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from goverse.gate import GateConfig
from goverse.node import NodeConfig
from goverse.server import Declared, ServiceSettings, declared, format_duration
from goverse.server._service import LEAVE_SHARE
from goverse.server._service_settings import MIN_LEASE_TTL
from goverse.server._tls import Role, role_of
from tests.e2e.targets.base import TargetError
from tests.e2e.targets.chart import HELM, TOOLS_PYTHON, render

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "goverse"
SERVICES: dict[str, type[ServiceSettings]] = {"node": NodeConfig, "gate": GateConfig}

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):")
_DEFAULT = re.compile(r"\(default ([^)]+)\)")
# A ConfigMap key or an EnvVar name; comments that mention GOVERSE_* do not count.
_VARIABLE = re.compile(r"^\s*(?:- name: )?(GOVERSE_[A-Z0-9_]+)\s*(?::|$)")


def config_values(component: str) -> dict[str, str]:
    """The keys of ``<component>.config`` in values.yaml, each with its comment as one line."""
    return section_values(component, "config")


def section_values(*section: str) -> dict[str, str]:
    """The keys right under `section` (a path of keys) in values.yaml, each with its comment
    as one line."""
    return {
        path[-1]: comment
        for path, comment in values_with_comments()
        if list(path[:-1]) == list(section)
    }


def values_with_comments() -> list[tuple[tuple[str, ...], str]]:
    """Every key of values.yaml as its path of keys (keys inside list items are not
    reached), with its comment as one line."""
    keys: list[tuple[tuple[str, ...], str]] = []
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
        path.append((indent, match["key"]))
        keys.append((tuple(key for _, key in path), " ".join(comment)))
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


# A dotted name in a comment that starts with a top-level value: another value it refers to.
_VALUE_REFERENCE = re.compile(r"(?<![\w./-])([a-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)+)")
# Dotted names of the comments that are no values: the files of a kubernetes.io/tls Secret.
_NOT_VALUES = {"tls.crt", "tls.key"}


def test_every_value_a_values_comment_names_exists() -> None:
    """A comment of values.yaml that names another value (`tls.enabled`,
    `gate.ingress.hosts`) names one the chart has: a user who follows it sets a key the
    chart reads, not one the schema refuses as unknown."""
    entries = values_with_comments()
    paths = {".".join(path) for path, _ in entries}
    tops = {path[0] for path, _ in entries}
    for path, comment in entries:
        for name in _VALUE_REFERENCE.findall(comment):
            if name.split(".")[0] in tops and name not in _NOT_VALUES:
                assert name in paths, f"the comment of {'.'.join(path)} names {name}: no value"


def test_the_reader_finds_keys_and_their_comments() -> None:
    """The values.yaml reader this check relies on sees nested keys and multi-line comments."""
    gate = config_values("gate")
    assert "slowClientPolicy" in gate
    assert "(default disconnect)" in gate["slowClientPolicy"]
    assert variable_of("keepaliveMinTime") == "GOVERSE_KEEPALIVE_MIN_TIME"
    paths = {path for path, _ in values_with_comments()}
    assert {("tls", "enabled"), ("gate", "ingress", "annotations")} <= paths
    assert _VALUE_REFERENCE.findall("(`GRPCS` with `tls.enabled`; its `tls.crt`)") == [
        "tls.enabled",
        "tls.crt",
    ]


# -- the store ------------------------------------------------------------------------------

# The `store` values that carry a node setting of their own, with its variable; the others name
# where a Secret keeps the URL or the password.
STORE_SETTINGS = {
    "url": "GOVERSE_STORE",
    "passwordSecret": "GOVERSE_STORE_PASSWORD_FILE",
    "poolSize": "GOVERSE_STORE_POOL_SIZE",
    "saveInterval": "GOVERSE_SAVE_INTERVAL",
    "idleTimeout": "GOVERSE_IDLE_TIMEOUT",
    "maxObjects": "GOVERSE_MAX_OBJECTS",
}
STORE_SECRET_KEYS = {"existingSecret", "urlKey", "passwordKey"}
STORE_VARIABLES = set(STORE_SETTINGS.values())

PG_URL = "postgresql://goverse@pg.example:5432/goverse?sslmode=require"

needs_chart_tools = pytest.mark.skipif(
    not (HELM.exists() and TOOLS_PYTHON.exists()),
    reason="the pinned helm is not installed: `make chart-tools` (make test installs it)",
)


def test_every_store_value_names_its_flag_and_the_declared_default() -> None:
    """Each `store` value that sets a node flag names it in its comment, and a `(default ...)`
    there is the declared default; no other key hides in the section."""
    settings = settings_by_variable(NodeConfig)
    values = section_values("store")
    assert set(values) == set(STORE_SETTINGS) | STORE_SECRET_KEYS
    for key, variable in STORE_SETTINGS.items():
        item = settings[variable]
        assert f"`{item.flag}`" in values[key], (
            f"store.{key}: the comment does not name {item.flag}"
        )
        stated = _DEFAULT.search(values[key])
        if stated is not None:
            assert stated[1].strip("`") == item.default_text(), (
                f"store.{key}: the comment says default {stated[1]}, the declaration "
                f"{item.default_text()}"
            )


class NodePod:
    """The node StatefulSet of one rendering: its ConfigMap data, pod spec and container."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        def one(kind: str) -> dict[str, Any]:
            (found,) = [
                r
                for r in resources
                if r["kind"] == kind
                and r["metadata"]["labels"].get("app.kubernetes.io/component") == "node"
            ]
            return found

        self.statefulset = one("StatefulSet")
        self.config: dict[str, str] = one("ConfigMap")["data"]
        self.spec: dict[str, Any] = self.statefulset["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        self.env: dict[str, dict[str, Any]] = {e["name"]: e for e in self.container["env"]}

    def environ(self, secrets: dict[tuple[str, str], str] | None = None) -> dict[str, str]:
        """The environment of the first pod as the kubelet builds it: the ConfigMap, then the
        env (the pod name filled in; `secrets` by (Secret, key) for secretKeyRef)."""
        pod = f"{self.statefulset['metadata']['name']}-0"
        environ = dict(self.config)
        for name, item in self.env.items():
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                environ[name] = (secrets or {})[(ref["name"], ref["key"])]
            elif "value" in item:
                environ[name] = item["value"].replace("$(POD_NAME)", pod)
        return environ


# What the chart cannot choose: which objects the nodes host.
OWN_OBJECTS = ["myapp.rooms"]


def render_values(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart rendered with `values` (JSON is YAML to helm), `node.objects` defaulting to
    OWN_OBJECTS and TLS off (no certificates to name)."""
    values = {
        "tls": {"enabled": False},
        **values,
        "node": {"objects": OWN_OBJECTS, **values.get("node", {})},
    }
    path = tmp_path / "values.yaml"
    path.write_text(json.dumps(values))
    return render("goverse", "goverse", ["--values", str(path)])


def node_pod(tmp_path: Path, values: dict[str, Any]) -> NodePod:
    """The node pod of the chart rendered with `values`."""
    return NodePod(render_values(tmp_path, values))


@needs_chart_tools
def test_without_store_values_the_node_pod_is_as_before(tmp_path: Path) -> None:
    """The defaults set no store setting, no Secret and no volume but /tmp: a release that
    does not use a store renders as it did before the store values existed."""
    pod = node_pod(tmp_path, {})
    assert not STORE_VARIABLES & set(pod.config)
    assert list(pod.env) == [
        "POD_NAME",
        "POD_NAMESPACE",
        "OTEL_RESOURCE_ATTRIBUTES",
        "GOVERSE_ADVERTISE",
    ]
    assert [v["name"] for v in pod.spec["volumes"]] == ["tmp"]
    assert [m["mountPath"] for m in pod.container["volumeMounts"]] == ["/tmp"]
    assert NodeConfig.parser(pod.environ()).parse([]).store is None


@needs_chart_tools
def test_a_postgresql_store_and_its_tuning_are_what_the_node_parses(tmp_path: Path) -> None:
    """store.url and the tuning values reach the node as its settings; a count stays a whole
    number (not 1e+06) and idleTimeout "0" is passed on as never, not dropped as a default."""
    pod = node_pod(
        tmp_path,
        {
            "store": {
                "url": PG_URL,
                "poolSize": 8,
                "saveInterval": "2s",
                "idleTimeout": "0",
                "maxObjects": 1000000,
            }
        },
    )
    assert pod.config["GOVERSE_MAX_OBJECTS"] == "1000000"
    config = NodeConfig.parser(pod.environ()).parse([])
    assert config.store == PG_URL
    assert config.store_pool_size == 8
    assert config.save_interval == timedelta(seconds=2)
    assert config.idle_timeout == timedelta(0)
    assert config.max_objects == 1_000_000
    assert config.store_password_file is None


@needs_chart_tools
def test_the_password_is_a_read_only_file_never_an_environment_variable(tmp_path: Path) -> None:
    """store.passwordSecret mounts that one key read-only where GOVERSE_STORE_PASSWORD_FILE
    points; no variable of the pod holds the password or refers to its Secret."""
    pod = node_pod(
        tmp_path,
        {"store": {"url": PG_URL, "passwordSecret": "goverse-pg", "passwordKey": "pg-password"}},
    )
    config = NodeConfig.parser(pod.environ()).parse([])
    assert config.store_password_file is not None
    (volume,) = [v for v in pod.spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "goverse-pg"
    (item,) = volume["secret"]["items"]
    assert item["key"] == "pg-password"
    (mount,) = [m for m in pod.container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert Path(mount["mountPath"]) / item["path"] == config.store_password_file
    for name, variable in pod.env.items():
        assert "PASSWORD" not in name, f"{name} is in the env"
        assert "secretKeyRef" not in variable.get("valueFrom", {}), f"{name} reads a Secret"
    assert not any("PASSWORD" in key and not key.endswith("_FILE") for key in pod.config)


@needs_chart_tools
def test_a_url_kept_in_a_secret_is_read_from_it_not_written_into_the_configmap(
    tmp_path: Path,
) -> None:
    """store.existingSecret sets GOVERSE_STORE from that Secret's key; the ConfigMap (whose
    contents anyone who can read the namespace's ConfigMaps sees) has no store URL."""
    pod = node_pod(tmp_path, {"store": {"existingSecret": "goverse-dsn", "urlKey": "dsn"}})
    assert "GOVERSE_STORE" not in pod.config
    assert "value" not in pod.env["GOVERSE_STORE"]
    secret_url = "postgresql://goverse:s3cret@pg.example:5432/goverse"
    config = NodeConfig.parser(pod.environ({("goverse-dsn", "dsn"): secret_url})).parse([])
    assert config.store == secret_url


@needs_chart_tools
def test_a_sqlite_store_serves_one_node_with_a_static_list(tmp_path: Path) -> None:
    """sqlite: renders with one node (and the node accepts it); more nodes are refused by the
    chart (scripts/chart/bad-values) as by the node."""
    pod = node_pod(tmp_path, {"node": {"replicaCount": 1}, "store": {"url": "sqlite:/tmp/g.db"}})
    assert NodeConfig.parser(pod.environ()).parse([]).store == "sqlite:/tmp/g.db"


# -- the call bounds -------------------------------------------------------------------------


def configmap_data(resources: list[dict[str, Any]], component: str) -> dict[str, str]:
    """The data of `component`'s ConfigMap in a rendering."""
    (found,) = [
        r
        for r in resources
        if r["kind"] == "ConfigMap"
        and r["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    data: dict[str, str] = found["data"]
    return data


@needs_chart_tools
def test_the_call_bounds_reach_both_services_as_their_settings(tmp_path: Path) -> None:
    """gate.config.maxSessionCalls and maxStreamCalls, node.config.maxStreamCalls: each
    service parses the bound the values give it from its ConfigMap."""
    resources = render_values(
        tmp_path,
        {
            "gate": {"config": {"maxSessionCalls": 500, "maxStreamCalls": 4000}},
            "node": {"config": {"maxStreamCalls": 20000}},
        },
    )
    gate = GateConfig.parser(configmap_data(resources, "gate")).parse([])
    node = NodeConfig.parser(NodePod(resources).environ()).parse([])
    assert (gate.max_session_calls, gate.max_stream_calls) == (500, 4000)
    assert node.max_stream_calls == 20000


# -- zeros ------------------------------------------------------------------------------------


def accepts_zero(item: Declared) -> bool:
    """Whether the service takes the text "0" for this setting (rather than refusing it)."""
    try:
        value = item.parse("0")
    except argparse.ArgumentTypeError:
        return False
    return item.problem(value) is None


@needs_chart_tools
def test_a_zero_the_services_take_reaches_them_as_zero(tmp_path: Path) -> None:
    """A `config` duration whose setting takes 0 (the node's --rebalance-delay: release shards
    to a joined node at once; the gate's --stable-after) given as "0" reaches the service as
    0, as "0s" does, instead of being dropped for the service's own default."""
    zeros = {
        component: {
            key: "0"
            for key in config_values(component)
            if accepts_zero(settings_by_variable(config)[variable_of(key)])
        }
        for component, config in SERVICES.items()
    }
    assert zeros == {"node": {"rebalanceDelay": "0"}, "gate": {"stableAfter": "0"}}
    resources = render_values(tmp_path, {c: {"config": keys} for c, keys in zeros.items()})
    parsed = {
        "node": NodeConfig.parser(NodePod(resources).environ()).parse([]),
        "gate": GateConfig.parser(configmap_data(resources, "gate")).parse([]),
    }
    for component, keys in zeros.items():
        for key in keys:
            item = settings_by_variable(SERVICES[component])[variable_of(key)]
            assert getattr(parsed[component], item.name) == item.parse("0"), (
                f"{component}.config.{key}: 0 did not reach the {component}"
            )


@needs_chart_tools
@pytest.mark.parametrize("component", sorted(SERVICES))
def test_a_zero_the_service_refuses_is_refused_by_the_chart(tmp_path: Path, component: str) -> None:
    """Every `config` value the schema lets be a string ("0", "0s", "0MiB"), whose setting
    refuses 0 at every start of the service, is refused by the chart when zero, with the value
    named; so is store.saveInterval."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    definitions = schema["definitions"]
    properties = schema["properties"][component]["properties"]["config"]["properties"]
    settings = settings_by_variable(SERVICES[component])
    refused = []
    for key, value in properties.items():
        kind = definitions[value["$ref"].split("/")[-1]] if "$ref" in value else value
        item = settings[variable_of(key)]
        if "string" in kind["type"] and "enum" not in kind and not accepts_zero(item):
            refused.append(key)
    assert refused, f"no {component}.config value refuses 0"
    for key in refused:
        with pytest.raises(TargetError, match=rf"{component}\.config\.{key} \(0\) is zero"):
            render_values(tmp_path, {component: {"config": {key: "0"}}})
    if component == "node":
        assert not accepts_zero(settings["GOVERSE_SAVE_INTERVAL"])
        with pytest.raises(TargetError, match=r"store\.saveInterval \(0s\) is zero"):
            render_values(tmp_path, {"store": {"url": PG_URL, "saveInterval": "0s"}})


def test_every_number_the_chart_drops_at_zero_is_refused_by_the_service_at_zero() -> None:
    """A number of 0 in `config` (and the store's counts) means the service's own default and
    is not passed on: that never hides a value the service would take, as every such setting
    refuses 0."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    numbers = {
        name for name, kind in schema["definitions"].items() if "integer" in kind.get("type", [])
    }

    def numeric_keys(*section: str) -> list[str]:
        node = schema
        for key in section:
            node = node["properties"][key]
        return [
            key
            for key, value in node["properties"].items()
            if value.get("$ref", "").removeprefix("#/definitions/") in numbers
        ]

    for component, config in SERVICES.items():
        settings = settings_by_variable(config)
        keys = numeric_keys(component, "config")
        assert keys, f"no numeric {component}.config values in the schema"
        for key in keys:
            assert not accepts_zero(settings[variable_of(key)]), f"{component}.config.{key}"
    node_settings = settings_by_variable(NodeConfig)
    for key in numeric_keys("store"):
        assert not accepts_zero(node_settings[STORE_SETTINGS[key]]), f"store.{key}"


# -- the objects ------------------------------------------------------------------------------


@needs_chart_tools
def test_the_demo_objects_are_off_unless_asked_for(tmp_path: Path) -> None:
    """With node.objects alone the nodes host those modules only (not the node's own default,
    the demo objects); node.demoObjects adds the demo modules once."""
    only_own = NodePod(render_values(tmp_path, {}))
    assert NodeConfig.parser(only_own.environ()).parse([]).objects == tuple(OWN_OBJECTS)
    with_demo = NodePod(
        render_values(
            tmp_path,
            {"node": {"objects": [*OWN_OBJECTS, "goverse.examples.counter"], "demoObjects": True}},
        )
    )
    assert NodeConfig.parser(with_demo.environ()).parse([]).objects == (
        *OWN_OBJECTS,
        "goverse.examples.counter",
        "goverse.examples.chat",
    )


# -- every scenario ---------------------------------------------------------------------------


@needs_chart_tools
@pytest.mark.parametrize(
    "values", sorted((CHART / "ci").glob("*-values.yaml")), ids=lambda path: path.stem
)
def test_every_variable_a_scenario_renders_is_a_declared_setting(values: Path) -> None:
    """Each ci/*-values.yaml rendering: every GOVERSE_* key of the gate and node ConfigMaps
    (the security ones of templates/_security.tpl included) and of their pods' env names a
    setting of that service."""
    resources = render("goverse", "goverse", ["--values", str(values)])
    for component, config in SERVICES.items():
        settings = settings_by_variable(config)
        kind = "StatefulSet" if component == "node" else "Deployment"
        (workload,) = [
            r
            for r in resources
            if r["kind"] == kind
            and r["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        names = set(configmap_data(resources, component)) | {e["name"] for e in container["env"]}
        unknown = sorted(n for n in names if n.startswith("GOVERSE_") and n not in settings)
        assert not unknown, f"{values.name}: {unknown} are no settings of {component}"


# -- client authentication ----------------------------------------------------------------------

JWT_KEYS = {"secretKey": "hs256", "publicKeyKey": "jwt-public.pem", "jwksKey": "jwks.json"}


def jwt_values(keys: dict[str, str]) -> dict[str, Any]:
    """Values with gate.auth jwt from the Secret's `keys`, and TLS from Secrets."""
    return {
        "tls": {"enabled": True, "source": "secrets", "secrets": {"gate": "g", "node": "n"}},
        "gate": {
            "auth": {"authenticator": "jwt", "jwt": {"existingSecret": "goverse-jwt", **keys}}
        },
    }


@needs_chart_tools
@pytest.mark.parametrize("key", sorted(JWT_KEYS))
def test_one_jwt_key_renders_a_gate_configuration_the_gate_accepts(
    tmp_path: Path, key: str
) -> None:
    """Each of gate.auth.jwt's key sources alone reaches the gate as a setting it parses."""
    resources = render_values(tmp_path, jwt_values({key: JWT_KEYS[key]}))
    config = GateConfig.parser(configmap_data(resources, "gate")).parse([])
    assert config.authenticator == "jwt"


@needs_chart_tools
def test_more_than_one_jwt_key_is_refused_by_the_chart_as_by_the_gate(tmp_path: Path) -> None:
    """The gate refuses --authenticator jwt with more than one of --jwt-secret-file,
    --jwt-public-key and --jwt-jwks-file; the chart refuses the values that would render
    them, instead of a gate that exits at every start."""
    with pytest.raises(TargetError, match=r"takes only one of gate\.auth\.jwt\.secretKey"):
        render_values(tmp_path, jwt_values(dict(list(JWT_KEYS.items())[:2])))


# -- the gate Service ---------------------------------------------------------------------------


@needs_chart_tools
def test_the_http_port_and_the_grpc_port_of_the_gate_service_differ(tmp_path: Path) -> None:
    """gate.http.port and gate.service.port are both ports of the gate Service, which the API
    server refuses with one port number twice: the chart refuses such values, and renders
    distinct ones as two ports."""
    values = {"gate": {"http": {"enabled": True, "port": 8080}, "service": {"port": 8080}}}
    with pytest.raises(TargetError, match=r"must differ from gate\.service\.port"):
        render_values(tmp_path, values)
    values["gate"]["service"]["port"] = 80
    (service,) = [
        r
        for r in render_values(tmp_path, values)
        if r["kind"] == "Service" and r["metadata"]["name"].endswith("-gate")
    ]
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [80, 8080]


# -- the etcd lease -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "config"),
    [
        ("node", {"leaseTtl": "5s"}),
        ("node", {"fenceMargin": "6s"}),
        ("gate", {"leaseTtl": "3s", "etcdTimeout": "1500ms"}),
    ],
)
@needs_chart_tools
def test_a_lease_the_service_refuses_is_refused_by_the_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], component: str, config: dict[str, str]
) -> None:
    """--etcd-timeout (and the node's --fence-margin) must be under half of --lease-ttl, the
    unset ones at their declared defaults: values the service would refuse at every start
    are refused by the chart; the same durations with a longer lease render and parse."""
    environ = {variable_of(key): value for key, value in config.items()}
    with pytest.raises(SystemExit):
        SERVICES[component].parser(environ).parse([])
    assert "under half of --lease-ttl" in capsys.readouterr().err
    with pytest.raises(TargetError, match=f"must be under half of {component}.config.leaseTtl"):
        render_values(tmp_path, {component: {"config": config}})
    longer = {**config, "leaseTtl": "20s"}
    resources = render_values(tmp_path, {component: {"config": longer}})
    environ = (
        NodePod(resources).environ() if component == "node" else configmap_data(resources, "gate")
    )
    assert SERVICES[component].parser(environ).parse([]).lease_ttl == timedelta(seconds=20)


def test_the_chart_s_shortest_lease_is_the_services_one() -> None:
    """The chart refuses a lease shorter than the shortest the services accept, written once
    in _helpers.tpl as goverse.minimum.leaseTtl."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    minimum = re.search(r'define "goverse\.minimum\.leaseTtl" -}}([^{]*){{', helpers)
    assert minimum is not None, "no goverse.minimum.leaseTtl in _helpers.tpl"
    assert minimum[1] == format_duration(MIN_LEASE_TTL)


@pytest.mark.parametrize(
    ("component", "config"),
    [
        ("node", {"leaseTtl": "1500ms", "etcdTimeout": "500ms", "fenceMargin": "500ms"}),
        ("gate", {"leaseTtl": "1s", "etcdTimeout": "400ms"}),
    ],
)
@needs_chart_tools
def test_a_lease_under_the_services_shortest_is_refused_by_the_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], component: str, config: dict[str, str]
) -> None:
    """A --lease-ttl under the shortest the services accept (2 s) is refused by them at every
    start, even with --etcd-timeout (and --fence-margin) under half of it: the chart refuses
    such values too; the shortest lease itself renders and parses."""
    environ = {variable_of(key): value for key, value in config.items()}
    with pytest.raises(SystemExit):
        SERVICES[component].parser(environ).parse([])
    shortest = format_duration(MIN_LEASE_TTL)
    assert f"--lease-ttl must be at least {shortest}" in capsys.readouterr().err
    message = rf"{component}\.config\.leaseTtl \({config['leaseTtl']}\) must be at least {shortest}"
    with pytest.raises(TargetError, match=message):
        render_values(tmp_path, {component: {"config": config}})
    resources = render_values(tmp_path, {component: {"config": {**config, "leaseTtl": shortest}}})
    environ = (
        NodePod(resources).environ() if component == "node" else configmap_data(resources, "gate")
    )
    assert SERVICES[component].parser(environ).parse([]).lease_ttl == MIN_LEASE_TTL


# -- the Ingress of the gates -------------------------------------------------------------------

BACKEND_PROTOCOL = "nginx.ingress.kubernetes.io/backend-protocol"
TLS_FROM_SECRETS = {"enabled": True, "source": "secrets", "secrets": {"gate": "g", "node": "n"}}


def ingress_values(tls: bool, protocol: str) -> dict[str, Any]:
    """Values with an Ingress to the gates whose ingress-nginx backend protocol is
    `protocol`, and TLS on the gates (from Secrets) or off."""
    ingress = {
        "enabled": True,
        "hosts": ["goverse.example.com"],
        "tlsSecretName": "goverse-example-tls",
        "annotations": {BACKEND_PROTOCOL: protocol},
    }
    return {"tls": TLS_FROM_SECRETS if tls else {"enabled": False}, "gate": {"ingress": ingress}}


@needs_chart_tools
@pytest.mark.parametrize(
    ("tls", "right", "wrong"), [(True, "GRPCS", "GRPC"), (False, "GRPC", "GRPCS")]
)
def test_the_ingress_reaches_the_gates_with_the_protocol_they_serve(
    tmp_path: Path, tls: bool, right: str, wrong: str
) -> None:
    """With tls.enabled the gates serve clients TLS, so ingress-nginx must reach them with
    GRPCS, and without it with GRPC: the chart refuses the other one, with which every call
    through the Ingress would fail, and renders the right one as given."""
    with pytest.raises(TargetError, match=f"backend-protocol is {wrong}: .* use {right}"):
        render_values(tmp_path, ingress_values(tls, wrong))
    (ingress,) = [
        r for r in render_values(tmp_path, ingress_values(tls, right)) if r["kind"] == "Ingress"
    ]
    assert ingress["metadata"]["annotations"][BACKEND_PROTOCOL] == right


@needs_chart_tools
def test_the_charts_certificates_carry_the_roles_the_services_read(tmp_path: Path) -> None:
    """Each cert-manager Certificate of the chart carries one URI SAN, a SPIFFE id whose role
    the services read (goverse.server's role_of) as the component it is for: a node tells the
    gates' certificate from the nodes'. No value changes the prefix (one that did made nodes
    refuse every gate)."""
    resources = render_values(
        tmp_path,
        {"tls": {"enabled": True, "certManager": {"issuerRef": {"name": "goverse-ca"}}}},
    )
    certificates = {
        item["metadata"]["name"]: item["spec"]["uris"]
        for item in resources
        if item and item.get("kind") == "Certificate"
    }
    assert {name: [role_of(uri) for uri in uris] for name, uris in certificates.items()} == {
        "goverse-gate": [Role.GATE],
        "goverse-node": [Role.NODE],
    }
