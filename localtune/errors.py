"""Typed, titled errors for mistakes a user can fix.

Every error a person can cause (a bad data row, a wrong config value, a missing model) is a
`LocaltuneError`: it carries a one-line title, the details (file:line, field, value) and what to do
next. The CLI and the TUI print these without a traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class LocaltuneError(Exception):
    """A mistake the user can fix. `exit_code` is what the CLI exits with."""

    exit_code = 1
    title = "localtune error"

    def __init__(self, message: str, *, hint: str | None = None, title: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if title is not None:
            self.title = title

    def render(self) -> str:
        """The text shown to a person: title, details, then what to do."""
        lines = [f"error: {self.title}", self.message]
        if self.hint:
            lines.append(f"fix: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class UsageError(LocaltuneError):
    """Wrong arguments or configuration; exits 2 like other command-line usage errors."""

    exit_code = 2
    title = "invalid usage"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    where: str  # "data.jsonl:12" or "config.yaml:4" or "flag --lr"
    field: str | None  # "messages[1].role", "train.lr"
    message: str  # what is wrong, naming the value
    fix: str  # what to do about it
    reason: str = "invalid"  # short machine key used to count problems by kind

    def render(self) -> str:
        loc = self.where + (f": {self.field}" if self.field else "")
        return f"{loc}: {self.message}\n    fix: {self.fix}"


@dataclass(eq=False)
class ProblemList(LocaltuneError):
    """Many problems reported at once, so a user fixes them all in one go."""

    problems: list[Problem] = field(default_factory=list)
    heading: str = "problems found"
    shown: int = 20

    def __post_init__(self):
        LocaltuneError.__init__(self, self._body(), title=self.heading)

    def _body(self) -> str:
        out = [p.render() for p in self.problems[: self.shown]]
        rest = len(self.problems) - self.shown
        if rest > 0:
            out.append(f"... and {rest} more")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class DataError(ProblemList):
    """Bad rows in a data file (strict mode), or a file that cannot be read at all."""

    exit_code = 2


class ConfigError(ProblemList):
    """Invalid configuration values, all collected into one error."""

    exit_code = 2


class ModelSourceError(LocaltuneError):
    """A model that cannot be found or loaded (wrong path, offline hub id, unsupported format)."""

    exit_code = 2
    title = "cannot load model"
