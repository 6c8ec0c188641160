"""Messages the app's thread workers post to their screen, instead of touching widgets from a thread.

Textual's `post_message` is thread-safe and widget methods are not, so a worker only ever posts one of
these small dataclasses and the screen's handler (on the app's thread) updates the widgets. The
high-rate ones (eval rows, streamed chat tokens) carry the whole current text and say `can_replace`:
a burst that arrives faster than the screen redraws coalesces into the latest one (as in toolong).
None of them bubble: each is for the screen whose worker posted it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from localtune.errors import Problem

if TYPE_CHECKING:  # annotations only: the export bundle module is imported when an export runs
    from localtune.config import Config
    from localtune.export.bundle import Bundle


# ---- New run --------------------------------------------------------------------------------------------
@dataclass
class FitEstimated(Message, bubble=False):
    """The planner's memory-fit line for the model and knobs in the form."""

    text: str


@dataclass
class DataReported(Message, bubble=False):
    """The data check's report (rows, format, problems, token-length histogram)."""

    text: str


@dataclass
class FormChecked(Message, bubble=False):
    """The New run form, validated like the CLI validates flags. `config` is None when there are problems."""

    run_dir: Path
    config: Config | None
    problems: list[Problem] = field(default_factory=list)


# ---- long work (export, evaluation, chat) ---------------------------------------------------------------
@dataclass
class WorkFailed(Message, bubble=False):
    """A worker stopped at a LocaltuneError: its title and rendered text, for a notification."""

    title: str
    text: str


@dataclass
class ExportSaid(Message, bubble=False):
    """One line of the export's narration (merging, writing, verifying)."""

    text: str


@dataclass
class ExportDone(Message, bubble=False):
    bundle: Bundle


@dataclass
class EvalProgressed(Message, bubble=False):
    """How far `localtune eval` is; one per row, so a newer one replaces a pending older one."""

    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EvalProgressed)


@dataclass
class EvalDone(Message, bubble=False):
    verdict: str


@dataclass
class ChatLine(Message, bubble=False):
    """A finished line of one side of the chat ("you: ..." or the model's whole reply)."""

    side: str  # "tuned" or "base"
    text: str


@dataclass
class ChatStreamed(Message, bubble=False):
    """The reply so far, while tokens arrive; "" clears the live line. A newer one for the same side wins."""

    side: str
    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ChatStreamed) and message.side == self.side


@dataclass
class ChatReasoned(Message, bubble=False):
    """The reasoning of one side's latest reply (shown folded)."""

    side: str
    text: str


@dataclass
class ToolCallsPending(Message, bubble=False):
    """Calls the person answers, in order: (side, call) pairs; the sides resume once all have results."""

    calls: list
