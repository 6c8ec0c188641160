"""How the CLI shows a run's events: the text of each event comes from `localtune.events.describe`
(the same lines the TUI's log shows); this module only decides where and how often they appear.

On a terminal the step, row and tensor counters redraw one live line with a bar and ETA; in a log
(stdout not a terminal) a few of those lines are printed instead, so a CI log stays short.
"""

from __future__ import annotations

import sys
import time

import click

from localtune.events import describe, progress_text

LIVE_KINDS = ("step", "eval_progress", "progress")


class EventPrinter:
    """Prints every event a run emits: live counters on one line, everything else as its own line."""

    def __init__(self, *, err: bool = False, kinds: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()):
        self.err, self.kinds, self.skip = err, kinds, skip
        self.stream = sys.stderr if err else sys.stdout
        self.live = False  # a counter line is drawn and not yet ended

    def _tty(self) -> bool:
        return self.stream.isatty()

    def __call__(self, event) -> None:
        if event.kind in self.skip or (self.kinds is not None and event.kind not in self.kinds):
            return
        if event.kind in LIVE_KINDS:
            self._counter(event)
            return
        text = describe(event)
        if text is None:
            return
        if self.live:
            click.echo("", err=self.err)
            self.live = False
        warning = event.kind == "warning"
        click.echo(text, err=self.err or warning)

    def _counter(self, event) -> None:
        done, total = _counts(event)
        line = progress_text(event)
        if self._tty():
            click.echo("\r" + line + " " * 4, nl=done >= total, err=self.err)
            self.live = done < total
        elif done in (1, total) or done % max(1, total // (20 if event.kind == "step" else 5)) == 0:
            click.echo(line, err=self.err)


def _counts(event) -> tuple[int, int]:
    if event.kind == "step":
        return event.step, event.total_steps
    return event.done, event.total


def TrainPrinter() -> EventPrinter:  # noqa: N802 - kept as the name commands and tests know
    """Training events on stdout (eval's own events are EvalPrinter's)."""
    return EventPrinter(skip=("eval_progress", "eval_finished"))


def EvalPrinter() -> EventPrinter:  # noqa: N802
    """`localtune eval` progress on stderr (its report goes to stdout)."""
    return EventPrinter(err=True, kinds=("eval_progress",))


class ProgressLine:
    """A one-line progress display with ETA on stderr, shown only on a terminal for long work."""

    def __init__(self, label: str, min_total: int = 1000):
        self.label, self.min_total, self.start = label, min_total, None

    def __call__(self, done: int, total: int) -> None:
        if total < self.min_total or not sys.stderr.isatty():
            return
        from localtune.events import Progress

        now = time.monotonic()
        self.start = self.start or now
        rate = done / (now - self.start) if now > self.start else 0.0
        eta = (total - done) / rate if rate and done < total else None
        click.echo(
            "\r" + progress_text(Progress(self.label, done, total, "rows", eta)) + "   ", err=True, nl=done >= total
        )
