"""What reaches the terminal while libraries work for us: our progress, not theirs.

transformers and tqdm draw their own bars ("Loading weights", "Converting and de-quantizing GGUF
tensors...", "Writing model shards") and print warnings nobody can act on. Inside `library_output()`
those bars become localtune `Progress` events (counts and ETA, drawn by the CLI like every other
counter), and library warnings and log records go to the run's log file instead of the terminal.

A face says where both go with `report_to(sink, log_file)` around a command; core code wraps each
library call in `library_output()`. Without a `report_to`, bars and warnings are simply dropped.
Hub downloads (huggingface_hub's own bars) are left alone: they happen before, and a download's
progress is worth seeing as it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from localtune.events import Progress

_sink: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("localtune_progress_sink", default=None)
_log: contextvars.ContextVar[Path | None] = contextvars.ContextVar("localtune_library_log", default=None)

# Library bar titles -> what our progress line calls the phase, and what it counts.
PHASES = {
    "loading weights": ("loading weights", "tensors"),
    "converting and de-quantizing gguf tensors": ("importing GGUF", "tensors"),
    "writing model shards": ("writing shards", "shards"),
}
EMIT_EVERY_S = 0.2  # a bar over thousands of tensors must not flood the sink


@contextlib.contextmanager
def report_to(sink: Callable | None, log_file: str | Path | None = None) -> Iterator[None]:
    """Send library progress to `sink` (as Progress events) and library warnings to `log_file`."""
    a, b = _sink.set(sink), _log.set(Path(log_file) if log_file else None)
    try:
        yield
    finally:
        _sink.reset(a)
        _log.reset(b)


class _Bar:
    """Stands in for a tqdm bar: counts what the library iterates or updates, emits Progress."""

    def __init__(self, iterable=None, *args, desc: str | None = None, total: int | None = None, **kwargs):
        self.iterable = iterable
        title = (desc or "working").strip().rstrip(".").strip().lower()
        self.phase, self.unit = PHASES.get(title, (title, "items"))
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total, self.n = total, 0
        self.start = self.last = time.monotonic()
        self.sink = _sink.get()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.sink is None or not self.total:
            return
        if self.n < self.total and now - self.last < EMIT_EVERY_S:
            return
        self.last = now
        rate = self.n / (now - self.start) if now > self.start else 0.0
        eta = (self.total - self.n) / rate if rate else None
        self.sink(Progress(self.phase, min(self.n, self.total), self.total, self.unit, eta))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name):  # set_description, set_postfix, refresh ...: nothing to draw
        return lambda *a, **k: None


def _append_to_log(text: str) -> None:
    """One line in the current run's library log (opened per line: library warnings are rare)."""
    path = _log.get()
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    except OSError:
        pass  # a log line is not worth failing the run for (the folder may not exist yet)


class _LogFileHandler(logging.Handler):
    """A library's log records into the current run's library log."""

    def emit(self, record: logging.LogRecord) -> None:
        _append_to_log(f"{record.name}: {record.getMessage()}")


def _to_log(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning's replacement: the warning into the library log, not onto the terminal."""
    _append_to_log(f"{category.__name__}: {message} ({filename}:{lineno})")


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """Around a transformers/peft call: their bars become Progress events, their warnings and log
    records go to the run's log file. Nestable; restores everything on exit."""
    import sys

    from transformers.utils import logging as hf_logging

    previous_hook = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: _Bar(*args, **kwargs))
    was_active = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()  # the hook only runs for active bars; ours draw nothing themselves
    gguf = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    gguf_bar = getattr(gguf, "tqdm", None)
    if gguf is not None:  # it imports tqdm.auto directly, past the hook
        gguf.tqdm = _Bar
    hf_logger = logging.getLogger("transformers")
    handler = _LogFileHandler(logging.WARNING)
    saved_handlers, saved_propagate = hf_logger.handlers[:], hf_logger.propagate
    hf_logger.handlers, hf_logger.propagate = [handler], False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _to_log
            yield
    finally:
        hf_logger.handlers, hf_logger.propagate = saved_handlers, saved_propagate
        if gguf is not None:
            gguf.tqdm = gguf_bar
        if not was_active:
            hf_logging.disable_progress_bar()
        hf_logging.set_tqdm_hook(previous_hook)
