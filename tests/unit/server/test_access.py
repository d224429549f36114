"""Access rules: parsing the TOML file, glob matching, first match wins, levels by caller kind."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from goverse.errors import PermissionDenied
from goverse.server import (
    ALLOW_ALL,
    Access,
    AccessGuard,
    AccessRules,
    AccessRulesError,
    KnownNames,
    Operation,
    access_rules,
    rules_file_problem,
)
from goverse.server._access import AccessRulesStartupError
from goverse.server._metrics import OTHER

CALL = Operation.CALL


def rules(text: str, tmp_path: Path) -> AccessRules:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return AccessRules.load(path)


@pytest.mark.parametrize(
    ("access", "from_client", "from_object"),
    [
        (Access.ALLOW, True, True),
        (Access.REJECT, False, False),
        (Access.INTERNAL, False, True),
        (Access.EXTERNAL, True, False),
    ],
)
def test_each_level_lets_through_the_callers_it_names(
    access: Access, from_client: bool, from_object: bool
) -> None:
    assert access.permits(from_object=False) is from_client
    assert access.permits(from_object=True) is from_object


def test_no_rules_allow_everything() -> None:
    """Without --access-rules every call, create and delete passes, from anyone."""
    assert access_rules(None) is ALLOW_ALL
    for operation in Operation:
        assert ALLOW_ALL.permits(operation, "Any", "id", "M", from_object=False)
        assert ALLOW_ALL.permits(operation, "Any", "id", "M", from_object=True)


def test_the_first_matching_rule_decides(tmp_path: Path) -> None:
    """Rules are tried in file order; a later rule never overrides an earlier match."""
    loaded = rules(
        """
        [[call]]
        type = "Counter"
        id = "a-ok"
        access = "allow"
        [[call]]
        type = "Counter"
        id = "a-*"
        access = "reject"
        [[call]]
        type = "Counter"
        access = "allow"
        """,
        tmp_path,
    )
    assert loaded.permits(CALL, "Counter", "a-ok", "Get", from_object=False)
    assert not loaded.permits(CALL, "Counter", "a-other", "Get", from_object=False)
    decided = loaded.decide(CALL, "Counter", "a-other", "Get")
    assert decided is not None
    assert decided.where == "call[2]"
    assert loaded.permits(CALL, "Counter", "b", "Get", from_object=False)


def test_patterns_are_case_sensitive_globs_not_regexes(tmp_path: Path) -> None:
    """`*`, `?` and `[..]` are globs; a `.` is a plain dot; case matters."""
    loaded = rules(
        """
        default = "reject"
        [[call]]
        type = "Chat?oom"
        id = "room.[0-9]*"
        method = "S*"
        access = "allow"
        """,
        tmp_path,
    )
    assert loaded.permits(CALL, "ChatRoom", "room.1x", "Send", from_object=False)
    assert not loaded.permits(CALL, "ChatRoom", "roomX1", "Send", from_object=False)
    assert not loaded.permits(CALL, "chatroom", "room.1", "Send", from_object=False)
    assert not loaded.permits(CALL, "ChatRoom", "room.1", "Join", from_object=False)


def test_create_and_delete_have_rules_of_their_own(tmp_path: Path) -> None:
    loaded = rules(
        """
        [[create]]
        type = "Admin*"
        access = "reject"
        [[delete]]
        id = "keep-*"
        access = "internal"
        """,
        tmp_path,
    )
    assert not loaded.permits(Operation.CREATE, "AdminPanel", "x", from_object=False)
    assert loaded.permits(Operation.CREATE, "Counter", "x", from_object=False)
    assert not loaded.permits(Operation.DELETE, "Counter", "keep-1", from_object=False)
    assert loaded.permits(Operation.CALL, "AdminPanel", "x", "Get", from_object=False)


def test_the_default_applies_when_no_rule_matches(tmp_path: Path) -> None:
    loaded = rules('default = "internal"\n', tmp_path)
    assert not loaded.permits(CALL, "T", "i", "M", from_object=False)
    assert loaded.permits(CALL, "T", "i", "M", from_object=True)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[call]\n", "is not valid TOML"),
        ('[[call]]\naccess = "sometimes"\n', "'sometimes' is not one of"),
        ('[[call]]\ntype = "T"\n', "call[1] has no access"),
        ('[[create]]\nmethod = "M"\naccess = "allow"\n', "unknown key 'method'"),
        ('[[call]]\nid = ""\naccess = "allow"\n', "id must be a non-empty string"),
        ("calls = []\n", "unknown key 'calls'"),
        ('call = "allow"\n', "must be an array of tables"),
        ('default = "maybe"\n', "default: access 'maybe'"),
    ],
)
def test_a_bad_file_is_refused_with_where_and_why(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(AccessRulesError) as raised:
        AccessRules.load(path)
    assert says in str(raised.value)
    assert "\n" not in str(raised.value)
    problem = rules_file_problem(path)
    assert problem is not None
    assert says in problem
    with pytest.raises(AccessRulesStartupError, match="--access-rules"):
        access_rules(path)


@pytest.mark.parametrize(
    ("key", "pattern", "says"),
    [
        ("type", "Count[er", "has a '[' without its ']'"),
        ("id", "room-[1", "has a '[' without its ']'"),
        ("method", "[Reset", "has a '[' without its ']'"),
        ("type", "Counter ", "can never match: an object type has no ' '"),
        ("type", "9Counter", "can never match: an object type begins with"),
        ("type", "Zähler", "can never match: an object type has no 'ä'"),
        ("method", "reset", "can never match: a method name begins with an upper-case letter"),
        ("method", "Counter.Reset", "can never match: a method name has no '.'"),
        ("method", "Reset()", "can never match: a method name has no '('"),
        ("method", "[z-a]*", "can never match: '[z-a]' matches no character"),
        ("type", "[!A-Za-z0-9_.]*", "can never match: '[!A-Za-z0-9_.]' matches no character"),
        ("id", "room-[z-a]", "can never match: '[z-a]' matches no character"),
        ("id", "room\t1", "can never match: an object id has no '\\t'"),
        ("type", "T" * 129, "can never match: an object type has at most 128 characters"),
        ("id", "é" * 129, "can never match: an object id has at most 256 bytes"),
    ],
)
def test_a_pattern_that_can_never_match_is_refused_naming_its_rule(
    tmp_path: Path, key: str, pattern: str, says: str
) -> None:
    """A type, id or method glob that no name the services accept could match (a typo, a
    lower-case method, Type.Method in `method`, an unclosed or empty `[...]`) would let its
    rule decide nothing, silently: the file is refused, naming the rule and the pattern."""
    path = tmp_path / "rules.toml"
    path.write_text(
        f'[[call]]\ntype = "Counter"\naccess = "allow"\n'
        f'[[call]]\n{key} = "{pattern}"\naccess = "reject"\n'
    )
    with pytest.raises(AccessRulesError) as raised:
        AccessRules.load(path)
    message = str(raised.value)
    assert f"call[2]: {key} " in message
    assert says in message
    assert "\n" not in message
    with pytest.raises(AccessRulesStartupError, match="--access-rules"):
        access_rules(path)


@pytest.mark.parametrize(
    ("key", "pattern", "matches"),
    [
        ("type", "*9", "T9"),
        ("type", "_Private*", "_PrivateThing"),
        ("type", "chat.Room", "chat.Room"),
        ("type", "[!0-9]*", "Counter"),
        ("type", "T" * 128, "T" * 128),
        ("method", "[A-Z]*", "Reset"),
        ("method", "*_v2", "Get_v2"),
        ("id", "[[]x]", "[x]"),
        ("id", "room.[!a]", "room.b"),
        ("id", "é*", "équipe"),
        ("id", "[!\\u0000-\\u001f]", "x"),
        ("id", "*", "any id"),
    ],
)
def test_a_pattern_some_name_can_match_is_accepted(
    tmp_path: Path, key: str, pattern: str, matches: str
) -> None:
    """Only patterns that can never match are refused: these match names the services accept."""
    loaded = rules(
        f'default = "reject"\n[[call]]\n{key} = "{pattern}"\naccess = "allow"\n', tmp_path
    )
    names = {"type": "T", "id": "i", "method": "M"} | {key: matches}
    assert loaded.permits(CALL, names["type"], names["id"], names["method"], from_object=False)


@pytest.mark.parametrize(
    "text",
    ["", "# rules to come\n", "call = []\ncreate = []\n"],
    ids=["empty", "comment", "no rules"],
)
def test_a_file_that_names_no_rule_and_no_default_is_refused(tmp_path: Path, text: str) -> None:
    """A rules file with nothing in it (an empty ConfigMap key, a file cut short) would allow
    everything while the operator believes rules are in force: refused, saying how to allow
    everything on purpose."""
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(AccessRulesError, match="names no rule and no default") as raised:
        AccessRules.load(path)
    assert 'default = "allow"' in str(raised.value)
    assert rules('default = "allow"\n', tmp_path) == ALLOW_ALL


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            '[[call]]\naccess = "allow"\n[[call]]\ntype = "Admin"\naccess = "reject"\n',
            "call[2] can never decide: call[1] comes before it and matches all it matches",
        ),
        (
            '[[call]]\ntype = "Counter"\nid = "a-*"\naccess = "reject"\n'
            '[[call]]\ntype = "Counter"\nid = "a-*"\naccess = "allow"\n',
            "call[2] can never decide: call[1]",
        ),
        (
            '[[call]]\ntype = "*"\nmethod = "Reset"\naccess = "internal"\n'
            '[[call]]\ntype = "Counter"\nmethod = "Reset"\naccess = "allow"\n',
            "call[2] can never decide: call[1]",
        ),
        (
            '[[delete]]\nid = "keep-*"\naccess = "reject"\n'
            '[[delete]]\ntype = "Counter"\nid = "keep-1"\naccess = "allow"\n',
            "delete[2] can never decide: delete[1]",
        ),
    ],
    ids=["after a catch-all", "same patterns", "wider type", "literal id in an earlier glob"],
)
def test_a_rule_an_earlier_rule_always_takes_first_is_refused(
    tmp_path: Path, text: str, says: str
) -> None:
    """The first matching rule decides: a rule whose every call an earlier rule of its
    section matches too can never decide (an allow written after the reject it was meant to
    override); the file is refused, naming both."""
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(AccessRulesError) as raised:
        AccessRules.load(path)
    assert says in str(raised.value)


def test_a_later_rule_that_still_decides_something_is_accepted(tmp_path: Path) -> None:
    """Overlapping rules are fine as long as the later one matches something the earlier
    ones do not; sections do not shadow each other."""
    loaded = rules(
        """
        [[call]]
        id = "first-*"
        access = "reject"
        [[call]]
        id = "*-other"
        access = "allow"
        [[create]]
        access = "reject"
        [[delete]]
        access = "reject"
        """,
        tmp_path,
    )
    assert not loaded.permits(CALL, "T", "first-other", "M", from_object=False)
    assert loaded.permits(CALL, "T", "last-other", "M", from_object=False)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AccessRulesError, match="cannot read"):
        AccessRules.load(tmp_path / "nope.toml")


def test_the_guard_raises_permission_denied_naming_the_rule(tmp_path: Path) -> None:
    """A refusal is PERMISSION_DENIED saying what was refused to whom, and by which rule."""
    guard = AccessGuard(rules('[[call]]\nmethod = "Reset"\naccess = "internal"\n', tmp_path))
    guard.check(CALL, "Counter", "c", "Reset", from_object=True)
    with pytest.raises(PermissionDenied) as raised:
        guard.check(CALL, "Counter", "c", "Reset", from_object=False)
    assert raised.value.status_code == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.message == (
        "call of Counter.Reset by a client is not permitted (access rules: rule call[1], internal)"
    )


def test_denials_of_names_not_served_are_counted_as_other(tmp_path: Path) -> None:
    """A denial is counted by operation, type and method; made-up names (a thousand types,
    one of 1 MiB, a method the type lacks) all count as ``_other``, and a served type and
    method denied after them keep their own labels."""
    reader = InMemoryMetricReader()
    guard = AccessGuard(
        rules('default = "internal"\n', tmp_path),
        MeterProvider(metric_readers=[reader]).get_meter("test"),
        "node",
        KnownNames({"Counter": ["Get"]}),
    )
    refused = [(f"T{index}", f"m{index}") for index in range(1000)]
    refused += [("x" * 2**20, "y"), ("Counter", "Nope"), ("Counter", "Get")]
    for object_type, method in refused:
        with pytest.raises(PermissionDenied):
            guard.check(CALL, object_type, "c", method, from_object=False)
    data = reader.get_metrics_data()
    assert data is not None
    counted = {
        (str(point.attributes["object_type"]), str(point.attributes["method"])): int(point.value)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "goverse.node.access.denied"
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint) and point.attributes is not None
    }
    assert counted == {(OTHER, OTHER): 1001, ("Counter", OTHER): 1, ("Counter", "Get"): 1}
