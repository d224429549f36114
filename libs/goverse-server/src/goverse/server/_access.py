"""Access rules: which calls, creates and deletes a gate or node lets through (``--access-rules``).

The rules file is TOML (stdlib :mod:`tomllib`: no dependency, comments allowed, readable in a
Kubernetes ConfigMap; JSON has no comments to say why a rule exists)::

    default = "allow"          # when no rule matches (this is the default)

    [[call]]                   # ordered: the first rule that matches decides
    type = "Counter"           # glob of the object type ("*" when left out)
    id = "admin-*"             # glob of the object id
    method = "Reset"           # glob of the method
    access = "internal"        # reject | internal | external | allow

    [[create]]                 # creates and deletes match type and id
    type = "ChatRoom"
    access = "reject"

Patterns are shell-style globs matched case-sensitively (:func:`fnmatch.fnmatchcase`: ``*``,
``?``, ``[abc]``), not regular expressions: an id like ``a.b`` needs no escaping, and a
pattern cannot be written to take exponential time on a hostile id. A pattern that can never
match (a ``[`` without its ``]``, an empty ``[z-a]``, a character no object type, id or method
name can have there) is refused with the file: its rule would decide nothing, silently.

Levels (goverse's): ``reject`` refuses every caller; ``internal`` lets only other objects call
(calls a client makes through a gate are refused); ``external`` lets only clients call (a call
from another object is refused); ``allow`` lets everyone. Creates and deletes come from
clients only, so for them ``internal`` refuses too.

Without ``--access-rules`` everything is allowed (:data:`ALLOW_ALL`), as before rules
existed; docs/security.md says why.
"""

from __future__ import annotations

import enum
import fnmatch
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from opentelemetry import metrics

from goverse.errors import PermissionDenied
from goverse.server._lifecycle import StartupError
from goverse.server._metrics import KnownNames
from goverse.server._rule_patterns import pattern_problem

log = structlog.get_logger(__name__)


class Access(enum.StrEnum):
    """Who a rule lets through."""

    REJECT = "reject"
    INTERNAL = "internal"
    EXTERNAL = "external"
    ALLOW = "allow"

    def permits(self, from_object: bool) -> bool:
        """Whether a caller (another object when `from_object`, else a client) may pass."""
        if self is Access.ALLOW:
            return True
        if self is Access.INTERNAL:
            return from_object
        if self is Access.EXTERNAL:
            return not from_object
        return False


class Operation(enum.StrEnum):
    """What a rule is about: a section of the rules file."""

    CALL = "call"
    CREATE = "create"
    DELETE = "delete"


class AccessRulesError(ValueError):
    """A rules file that cannot be used; the message says where and why, in one line."""


@dataclass(frozen=True)
class Rule:
    """One rule: globs of the object type, id and (for calls) method, and its level."""

    access: Access
    type: str = "*"
    id: str = "*"
    method: str = "*"
    where: str = ""
    """Where the rule is in its file (``call[2]``), for denial messages and logs."""

    def covers(self, other: Rule) -> bool:
        """Whether this rule surely matches every call `other` matches (coming first, it
        leaves `other` nothing to decide): each of its patterns is all ``*``, the same as
        `other`'s, or a glob that `other`'s plain name matches."""
        return (
            _covers(self.type, other.type)
            and _covers(self.id, other.id)
            and _covers(self.method, other.method)
        )

    def matches(self, object_type: str, object_id: str, method: str) -> bool:
        return (
            fnmatch.fnmatchcase(object_type, self.type)
            and fnmatch.fnmatchcase(object_id, self.id)
            and fnmatch.fnmatchcase(method, self.method)
        )


@dataclass(frozen=True)
class AccessRules:
    """The ordered rules of each operation and the level when none matches."""

    call: tuple[Rule, ...] = ()
    create: tuple[Rule, ...] = ()
    delete: tuple[Rule, ...] = ()
    default: Access = Access.ALLOW

    def decide(
        self, operation: Operation, object_type: str, object_id: str, method: str = ""
    ) -> Rule | None:
        """The first rule of `operation` that matches; None when none does (the default)."""
        rules: tuple[Rule, ...] = getattr(self, operation.value)
        for rule in rules:
            if rule.matches(object_type, object_id, method):
                return rule
        return None

    def permits(
        self,
        operation: Operation,
        object_type: str,
        object_id: str,
        method: str = "",
        *,
        from_object: bool,
    ) -> bool:
        rule = self.decide(operation, object_type, object_id, method)
        return (rule.access if rule is not None else self.default).permits(from_object)

    @classmethod
    def load(cls, path: Path) -> AccessRules:
        """The rules of the TOML file at `path`; raises :class:`AccessRulesError`."""
        try:
            with path.open("rb") as file:
                document = tomllib.load(file)
        except OSError as error:
            raise AccessRulesError(f"cannot read {path}: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise AccessRulesError(f"{path} is not valid TOML: {error}") from None
        return cls.parse(document, str(path))

    @classmethod
    def parse(cls, document: Mapping[str, Any], source: str = "the rules") -> AccessRules:
        """The rules of a decoded rules document; raises :class:`AccessRulesError`."""
        unknown = sorted(set(document) - {"default", *Operation})
        if unknown:
            raise AccessRulesError(
                f"{source}: unknown key {unknown[0]!r} (expected default, call, create, delete)"
            )
        sections = {
            operation: _section(document.get(operation.value, []), operation, source)
            for operation in Operation
        }
        if "default" not in document and not any(sections.values()):
            # An empty ConfigMap key or a file cut short: everything would be allowed while
            # the operator believes rules are in force.
            raise AccessRulesError(
                f"{source}: names no rule and no default: it would allow everything, as no "
                '--access-rules does (write default = "allow" to mean that)'
            )
        default = _access(document.get("default", Access.ALLOW.value), f"{source}: default")
        return cls(
            call=sections[Operation.CALL],
            create=sections[Operation.CREATE],
            delete=sections[Operation.DELETE],
            default=default,
        )


ALLOW_ALL = AccessRules()
"""No rules: everything is allowed (a service without ``--access-rules``)."""


def _access(value: Any, where: str) -> Access:
    try:
        return Access(value)
    except ValueError:
        raise AccessRulesError(
            f"{where}: access {value!r} is not one of {', '.join(Access)}"
        ) from None


def _section(items: Any, operation: Operation, source: str) -> tuple[Rule, ...]:
    if not isinstance(items, list):
        raise AccessRulesError(
            f"{source}: {operation} must be an array of tables ([[{operation}]])"
        )
    keys = {"type", "id", "access"} | ({"method"} if operation is Operation.CALL else set())
    rules: list[Rule] = []
    for index, item in enumerate(items, start=1):
        where = f"{operation}[{index}]"
        if not isinstance(item, dict):
            raise AccessRulesError(f"{source}: {where} must be a table")
        unknown = sorted(set(item) - keys)
        if unknown:
            raise AccessRulesError(
                f"{source}: {where} has unknown key {unknown[0]!r} "
                f"(expected {', '.join(sorted(keys))})"
            )
        if "access" not in item:
            raise AccessRulesError(f"{source}: {where} has no access")
        patterns = {key: item.get(key, "*") for key in ("type", "id", "method")}
        for key, pattern in patterns.items():
            if not isinstance(pattern, str) or not pattern:
                raise AccessRulesError(f"{source}: {where}: {key} must be a non-empty string")
            problem = pattern_problem(key, pattern)
            if problem is not None:
                raise AccessRulesError(f"{source}: {where}: {key} {pattern[:200]!r} {problem}")
        access = _access(item["access"], f"{source}: {where}")
        rule = Rule(access, where=where, **patterns)
        earlier = next((other for other in rules if other.covers(rule)), None)
        if earlier is not None:
            raise AccessRulesError(
                f"{source}: {where} can never decide: {earlier.where} comes before it and "
                f"matches all it matches (the first rule that matches decides)"
            )
        rules.append(rule)
    return tuple(rules)


def _covers(pattern: str, other: str) -> bool:
    """Whether `pattern` surely matches everything `other` matches (False: maybe not)."""
    if pattern == other or not pattern.strip("*"):
        return True
    literal = not any(char in other for char in "*?[")
    return literal and fnmatch.fnmatchcase(other, pattern)


def rules_file_problem(path: Path | None) -> str | None:
    """A settings check of ``--access-rules``: what is wrong with the file, else None."""
    if path is None:
        return None
    try:
        AccessRules.load(path)
    except AccessRulesError as error:
        return f"cannot be used: {error}"
    return None


def access_rules(path: Path | None) -> AccessRules:
    """The rules of ``--access-rules`` (:data:`ALLOW_ALL` when unset), read when a service
    starts; raises :class:`AccessRulesStartupError` (exit status 2) when it cannot be used."""
    if path is None:
        return ALLOW_ALL
    try:
        return AccessRules.load(path)
    except AccessRulesError as error:
        raise AccessRulesStartupError(f"--access-rules: {error}") from None


class AccessRulesStartupError(StartupError):
    """``--access-rules`` names a file that cannot be used (any more) when the service starts."""


class AccessGuard:
    """Enforces `rules` for one service: a refusal raises :class:`PermissionDenied` and is
    counted in ``goverse.<service>.access.denied`` by operation, object type and method
    (labelled as `names` labels them: a client can send any name, and one the service does not
    serve counts as ``_other``)."""

    def __init__(
        self,
        rules: AccessRules,
        meter: metrics.Meter | None = None,
        service: str = "server",
        names: KnownNames | None = None,
    ) -> None:
        self.rules = rules
        self._enabled = rules != ALLOW_ALL
        self._denied = (meter or metrics.get_meter(__name__)).create_counter(
            f"goverse.{service}.access.denied",
            unit="{call}",
            description="Calls, creates and deletes refused by the access rules, by operation, "
            "object_type and method",
        )
        self._names = names if names is not None else KnownNames()

    def check(
        self,
        operation: Operation,
        object_type: str,
        object_id: str,
        method: str = "",
        *,
        from_object: bool,
    ) -> None:
        """Raises :class:`PermissionDenied` when the rules refuse this operation to a caller
        that is another object (`from_object`) or a client."""
        if not self._enabled:
            return
        rule = self.rules.decide(operation, object_type, object_id, method)
        access = rule.access if rule is not None else self.rules.default
        if access.permits(from_object):
            return
        type_label, method_label = self._names.labels(object_type, method)
        self._denied.add(
            1, {"operation": operation.value, "object_type": type_label, "method": method_label}
        )
        target = f"{object_type}.{method}" if operation is Operation.CALL else object_type
        by = "another object" if from_object else "a client"
        decided = f"rule {rule.where}" if rule is not None else "the default"
        log.debug("access denied", operation=operation.value, rule=decided, by=by)
        raise PermissionDenied(
            f"{operation} of {target[:300]} by {by} is not permitted "
            f"(access rules: {decided}, {access})"
        )


__all__ = [
    "ALLOW_ALL",
    "Access",
    "AccessGuard",
    "AccessRules",
    "AccessRulesError",
    "Operation",
    "Rule",
    "access_rules",
    "rules_file_problem",
]
