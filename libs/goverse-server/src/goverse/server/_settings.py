"""Settings: one declaration per setting, and the flags, ``--help`` and docs derived from it.

A setting is a field of a frozen config dataclass, declared with :func:`setting`: its default,
its help text, its kind (how text parses into a value, see :class:`~goverse.server.Kind`) and
the checks of its value. Everything else is derived from the field's name and that declaration:
the flag (``shutdown_timeout`` → ``--shutdown-timeout``), the environment variable
(``GOVERSE_SHUTDOWN_TIMEOUT``), the ``--help`` line, the row of ``docs/configuration.md`` and the
validation, which runs in ``__post_init__`` whether the config came from flags or from code.

Two kinds of error, both one line naming the flag: text that does not parse (``argument
--listen: '7100' is not host:port``), and a parsed value a check refuses (``--call-timeout must be
positive``; also raised as :class:`ValueError` by a config built in code).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Generic, NoReturn, TypeVar

from goverse.server._values import Kind

METADATA_KEY = "goverse.setting"

Check = Callable[[Any], "str | None"]
"""A check of a parsed value: None when it is fine, else what is wrong, completing the
sentence that starts with the flag (``"must be positive"``)."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a field's declaration says beyond its name, type and default."""

    help: str
    kind: Kind
    check: Check | None = None
    default_text: str | None = None
    """How ``--help`` and the docs show a default that is not a plain value ("the host name")."""
    per_service: Mapping[str, Any] | None = None
    """Default by program name, for a setting of a shared base whose default differs per
    service; each service's subclass gets its own default (see :func:`apply_service_defaults`)."""


def positive(value: timedelta) -> str | None:
    return None if value > timedelta(0) else "must be positive"


def not_negative(value: timedelta) -> str | None:
    return None if value >= timedelta(0) else "must not be negative"


def at_least(bound: Any, show: Callable[[Any], str] = str) -> Check:
    """A check that a value is at least `bound` (shown with `show` in the message)."""

    def check(value: Any) -> str | None:
        return None if value >= bound else f"must be at least {show(bound)}"

    return check


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    kind: Kind,
    check: Check | None = None,
    factory: Callable[[], Any] | None = None,
    per_service: Mapping[str, Any] | None = None,
    default_text: str | None = None,
) -> Any:
    """Declares a setting: a :func:`dataclasses.field` whose metadata carries the rest.

    Give the default as `default`, as `factory` (computed per config, e.g. from the host name),
    or as `per_service` (the default of each program, in a base both services extend).
    """
    metadata = {METADATA_KEY: Setting(help, kind, check, default_text, per_service)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared setting of a config class: its field and its declaration."""

    field: dataclasses.Field[Any]
    setting: Setting

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "GOVERSE_" + self.name.upper()

    @property
    def optional(self) -> bool:
        """A default of None means "unset": None is then a valid value."""
        return self.field.default is None

    def parse(self, text: str) -> Any:
        """The value of `text`; raises :class:`argparse.ArgumentTypeError` saying why not."""
        try:
            return self.setting.kind.parse(text)
        except ValueError:  # a parser that raised ValueError rather than say what is wrong
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid {self.setting.kind.metavar}"
            ) from None

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, naming the flag; None when it is valid."""
        if value is None and self.optional:
            return None
        try:
            # Valid for its kind means its text parses: the check its flag would have made.
            self.parse(self.setting.kind.show(value))
        except argparse.ArgumentTypeError as error:
            return f"argument {self.flag}: {error}"
        if self.setting.check is not None:
            wrong = self.setting.check(value)
            if wrong is not None:
                return f"{self.flag} {wrong}"
        return None

    def default_text(self, markdown: bool = False) -> str:
        """The default as ``--help`` (or, with `markdown`, a docs table cell) shows it."""
        quote = (lambda text: f"`{text}`") if markdown else (lambda text: text)
        if self.setting.default_text is not None:
            return self.setting.default_text
        if self.setting.per_service is not None and self.field.default is dataclasses.MISSING:
            return ", ".join(
                f"{program} {quote(self.setting.kind.show(value))}"
                for program, value in self.setting.per_service.items()
            )
        if self.field.default is None:
            return "none"
        default = self.field.default
        if default is dataclasses.MISSING and callable(self.field.default_factory):
            default = self.field.default_factory()
        return quote(self.setting.kind.show(default))


def declared(cls: type[Any]) -> list[Declared]:
    """The settings of a config class, in field order (a base class's first)."""
    return [
        Declared(field, field.metadata[METADATA_KEY])
        for field in dataclasses.fields(cls)
        if METADATA_KEY in field.metadata
    ]


def check_settings(config: Any) -> None:
    """Raises :class:`ValueError` for the first setting of `config` whose value is invalid."""
    for item in declared(type(config)):
        problem = item.problem(getattr(config, item.name))
        if problem is not None:
            raise ValueError(problem)


def apply_service_defaults(cls: type[Any], program: str) -> None:
    """Gives `cls`, a subclass about to become a dataclass, `program`'s default of every
    inherited per-service setting, by re-declaring the field in `cls` (it keeps its place)."""
    annotations = dict(inspect.get_annotations(cls))
    for item in declared(cls):
        table = item.setting.per_service
        if table is None:
            continue
        if program not in table:
            raise TypeError(f"{item.flag} has no default for {program}")
        field = dataclasses.field(default=table[program], metadata=item.field.metadata)
        setattr(cls, item.name, field)
        annotations.setdefault(item.name, item.field.type)
    cls.__annotations__ = annotations


def markdown_table(items: Sequence[Declared]) -> str:
    """The docs table of `items`: flag, environment variable, default and meaning."""
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for item in items:
        cells = (item.default_text(markdown=True), item.setting.help)
        default, meaning = (cell.replace("|", "\\|").replace("<", "\\<") for cell in cells)
        rows.append(f"| `{item.flag}` | `{item.env}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps a flag's help between words only: argparse's default also cuts at hyphens and
    inside long words, so a flag named in a help text (``default: --max-message-bytes``) came
    out as ``--max-`` and ``message-bytes`` on two lines, depending on the terminal's width."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )


class SettingsParser(argparse.ArgumentParser, Generic[S]):
    """The flags of a config class: ``--flag`` for each setting, falling back to its
    ``GOVERSE_*`` variable in `environ`, then to the field's default.

    Every error, argparse's own included, is one line ``<prog>: error: <message>`` and exit
    status 2: a usage dump would bury the one thing that is wrong.
    """

    def __init__(
        self,
        config_class: type[S],
        *,
        prog: str,
        description: str,
        environ: Mapping[str, str] | None = None,
        shared: Sequence[str] = (),
    ) -> None:
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=_HelpFormatter,
            epilog="Every flag can also be set by the environment variable named beside it; "
            "a flag on the command line wins.",
        )
        self._config_class = config_class
        self._environ = os.environ if environ is None else environ
        items = declared(config_class)
        own = self.add_argument_group(f"{prog} settings")
        common = self.add_argument_group("settings of every goverse service")
        for item in items:
            group = common if item.name in shared else own
            group.add_argument(
                item.flag,
                dest=item.name,
                type=item.parse,
                default=argparse.SUPPRESS,
                metavar=item.setting.kind.metavar,
                help=self._help(item),
            )

    @staticmethod
    def _help(item: Declared) -> str:
        text = f"{item.setting.help} [env {item.env}; default: {item.default_text()}]"
        return text.replace("%", "%%")  # argparse %-formats help texts

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message.replace(chr(10), ' ')}\n")

    def parse(self, argv: Sequence[str] | None = None) -> S:
        """The config of `argv` (default: ``sys.argv[1:]``), the environment and the defaults;
        exits with status 2 and a one-line message on the first error."""
        given = vars(self.parse_args(argv))
        values: dict[str, Any] = {}
        for item in declared(self._config_class):
            if item.name in given:
                values[item.name] = given[item.name]
            elif item.env in self._environ:
                try:
                    values[item.name] = item.parse(self._environ[item.env])
                except argparse.ArgumentTypeError as error:
                    self.error(f"argument {item.flag}: {error} (from {item.env})")
        try:
            return self._config_class(**values)
        except ValueError as error:
            self.error(str(error))
