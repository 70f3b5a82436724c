"""The one error type the configuration layer raises, with the places it applies to."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

_SHORT = reprlib.Repr()
_SHORT.maxlevel = 3
_SHORT.maxstring = _SHORT.maxother = 80


def short_repr(value: Any) -> str:
    """`repr(value)` cut short, for messages about arbitrary input: YAML aliases can make a few
    lines of text into a structure whose full repr takes minutes and gigabytes."""
    return _SHORT.repr(value)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration: where it is and what to do about it."""

    message: str
    path: str = ""  # dotted field path, e.g. "resources.gpu" or "env[2]"
    line: Optional[int] = None  # 1-based line in the YAML file, when known
    hint: Optional[str] = None

    def format(self, file: Optional[str] = None) -> str:
        where = ""
        if file:
            where = f"{file}:{self.line}: " if self.line else f"{file}: "
        elif self.line:
            where = f"line {self.line}: "
        field = f"{self.path}: " if self.path else ""
        text = f"{where}{field}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigurationError(ValueError):
    """A configuration that dstack would reject, or that cannot run as written.

    `str(error)` lists every issue as `file:line: field.path: message` with a hint where one helps.
    """

    def __init__(
        self,
        message_or_issues: "str | Sequence[ConfigIssue]",
        *,
        file: Optional[str] = None,
        path: str = "",
        line: Optional[int] = None,
        hint: Optional[str] = None,
    ) -> None:
        if isinstance(message_or_issues, str):
            issues = [ConfigIssue(message_or_issues, path=path, line=line, hint=hint)]
        else:
            issues = list(message_or_issues)
        self.issues: list[ConfigIssue] = issues
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        return "\n".join(issue.format(self.file) for issue in self.issues)

    def with_file(self, file: str) -> "ConfigurationError":
        """The same issues, attributed to `file` (keeps the original when it already has one)."""
        if self.file:
            return self
        return ConfigurationError(self.issues, file=file)

    def __str__(self) -> str:
        return self._render()
