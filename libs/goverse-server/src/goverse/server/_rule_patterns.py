"""Rule patterns that can never match: what the services accept as object types, ids and
method names, and whether a glob of an access rule can match one of them."""

from __future__ import annotations

import fnmatch
import string
from collections.abc import Iterator
from dataclasses import dataclass

from goverse.ids import MAX_NAME_LENGTH, MAX_OBJECT_ID_BYTES


def pattern_problem(key: str, pattern: str) -> str | None:
    """Why `pattern`, a rule's `key` (``type``, ``id`` or ``method``), can never match a name
    the services accept (one phrase), or None when it can."""
    return _NAMES[key].problem(pattern)


def _glob_parts(pattern: str) -> list[str] | None:
    """`pattern` cut as :func:`fnmatch.translate` reads it: ``*``, ``?``, one ``[...]`` class
    or one literal character each; None when a ``[`` has no ``]`` (fnmatch would take it as
    a literal ``[``, which no glob of the docs means)."""
    parts = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "[":
            parts.append(pattern[i])
            i += 1
            continue
        j = i + 1
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":
            j += 1  # a "]" first in a class is a member
        while j < n and pattern[j] != "]":
            j += 1
        if j >= n:
            return None
        parts.append(pattern[i : j + 1])
        i = j + 1
    return parts


_ID_BOUNDS = (0x20, 0x7E, 0x80, 0xD7FF, 0xE000, 0x10FFFF)
"""The first and last code points of each run an object id may hold (no C0 control, no DEL,
no surrogate: :func:`goverse.ids.validate_object_id`)."""


def _id_character(char: str) -> bool:
    code = ord(char)
    return code >= 0x20 and code != 0x7F and not 0xD800 <= code <= 0xDFFF


def _candidates(part: str) -> Iterator[str]:
    """Characters among which `part` (one glob part) matches one an object id may hold,
    if it matches any: every run of code points a class or the id alphabet holds starts or
    ends next to a character the part names or at one of :data:`_ID_BOUNDS`."""
    codes = set(_ID_BOUNDS)
    for char in part:
        codes.update((ord(char) - 1, ord(char), ord(char) + 1))
    for code in sorted(codes):
        if 0 <= code <= 0x10FFFF and _id_character(chr(code)):
            yield chr(code)


@dataclass(frozen=True)
class _Names:
    """What the services accept as one kind of name: a pattern of a rule must be able to
    match one of them, or its rule decides nothing."""

    noun: str
    """What a refusal calls one: ``an object type``."""
    rest: str | None
    """The characters one may hold; None: any but control characters (object ids)."""
    spelled: str
    """What `rest` is, in words."""
    max_bytes: int
    """The longest one, in UTF-8 bytes."""
    limit: str
    """`max_bytes`, in words."""
    first: str | None = None
    """The characters one may begin with, when fewer than `rest`."""
    begins: str = ""
    """`first`, in words."""

    def _alphabet(self, at_start: bool, part: str) -> Iterator[str]:
        alphabet = self.first if at_start and self.first is not None else self.rest
        return _candidates(part) if alphabet is None else iter(alphabet)

    def problem(self, pattern: str) -> str | None:
        """Why `pattern` can never match such a name (one phrase), or None when it can."""
        parts = _glob_parts(pattern)
        if parts is None:
            return "has a '[' without its ']' (a literal '[' is written [[])"
        starts = {True}  # whether the next part may be a name's first character
        needed = 0
        for part in parts:
            if part == "*":
                starts.add(False)  # a "*" may take some characters first, or none
                continue
            fits = [
                char
                for at_start in starts
                for char in self._alphabet(at_start, part)
                if fnmatch.fnmatchcase(char, part)
            ]
            if not fits:
                return f"can never match: {self._why_not(part, starts)}"
            needed += min(len(char.encode()) for char in fits)
            starts = {False}
        if needed > self.max_bytes:
            return f"can never match: {self.noun} has {self.limit}"
        return None

    def _why_not(self, part: str, starts: set[bool]) -> str:
        if len(part) > 1:
            where = "begin with" if starts == {True} else "hold there"
            return f"{part!r} matches no character {self.noun} can {where}"
        if starts == {True} and self.first is not None and part in (self.rest or ""):
            return f"{self.noun} begins with {self.begins}"
        return f"{self.noun} has no {part!r} ({self.spelled})"


_NAMES = {
    # goverse.ids.validate_object_type: what an object type may be called.
    "type": _Names(
        "an object type",
        rest=string.ascii_letters + string.digits + "_.",
        spelled="letters, digits, '_' and '.'",
        max_bytes=MAX_NAME_LENGTH,
        limit=f"at most {MAX_NAME_LENGTH} characters",
        first=string.ascii_letters + "_",
        begins="a letter or '_'",
    ),
    # A callable method is an async def named with a capital letter (goverse._object_types):
    # a Python identifier, so no '.' either (Type.Method is written as type and method).
    "method": _Names(
        "a method name",
        rest=string.ascii_letters + string.digits + "_",
        spelled="letters, digits and '_'; the object type goes in type",
        max_bytes=MAX_NAME_LENGTH,
        limit=f"at most {MAX_NAME_LENGTH} characters",
        first=string.ascii_uppercase,
        begins="an upper-case letter (A-Z)",
    ),
    # goverse.ids.validate_object_id: any text but control characters, up to 256 bytes.
    "id": _Names(
        "an object id",
        rest=None,
        spelled="any text but control characters",
        max_bytes=MAX_OBJECT_ID_BYTES,
        limit=f"at most {MAX_OBJECT_ID_BYTES} bytes",
    ),
}


__all__ = ["pattern_problem"]
