"""Typed events a run emits, and the sinks that consume them.

The training loop never knows who listens: the CLI prints events, the TUI renders them, a JSONL
sink appends them to `RUN_DIR/events.jsonl`, tests collect them in a list. Every event is a small
frozen dataclass with a `kind`; `to_dict` gives its JSON form.
"""

from __future__ import annotations

import json
import math
import os
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Event:
    kind = "event"
    time: float = field(default_factory=time.time, kw_only=True)  # when it happened (Unix seconds)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        for k, v in asdict(self).items():
            d[k] = round(v, 3) if k == "time" else json_safe(v)
        return d


def json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan" / "inf" stay visible in the log instead of breaking JSON
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


@dataclass(frozen=True)
class RunStarted(Event):
    kind = "run_started"
    run_dir: str
    config: dict
    resume: bool = False


@dataclass(frozen=True)
class DataPrepared(Event):
    kind = "data_prepared"
    train_rows: int
    val_rows: int
    train_tokens: int
    trainable_tokens: int
    dropped_rows: int
    truncated_rows: int
    chat_template: str


@dataclass(frozen=True)
class ModelLoaded(Event):
    kind = "model_loaded"
    model: str
    architecture: str
    device: str
    dtype: str
    quantized: bool
    params_total: int
    params_trainable: int
    memory_bytes: int
    seconds: float
    fused_kernels: str = ""  # e.g. "liger: rope, rms_norm, swiglu"; "" for the plain PyTorch code


@dataclass(frozen=True)
class MemoryPlanned(Event):
    """How the run will use memory: the micro-batch, the planner's peak estimate, and activation offload."""

    kind = "memory_planned"
    micro_batch: int
    grad_accum: int
    estimate_bytes: int  # the planner's peak for the longest row (torch.cuda.max_memory_allocated on a GPU)
    budget_bytes: int  # 90% of the free GPU memory plus the loaded weights; on the CPU, of half the free RAM
    activation_offload: bool
    reason: str


@dataclass(frozen=True)
class RecipeChosen(Event):
    """The epochs and learning rate the run chose itself (recipe.py) for what the user left unset."""

    kind = "recipe"
    epochs: int  # 0 when train.max_steps sets the length
    lr: float
    total_steps: int
    chosen: list[str]  # config keys the rule set, e.g. ["train.epochs", "train.lr"]
    reason: str


@dataclass(frozen=True)
class StepMetrics(Event):
    kind = "step"
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float  # real (non-padding) tokens
    tokens_seen: int
    peak_memory_bytes: int
    eta_s: float
    world_size: int = 1  # data-parallel ranks; tokens_per_s is theirs together
    rank_tokens_per_s: list[float] = field(default_factory=list)  # each rank's, in rank order (when world_size > 1)


@dataclass(frozen=True)
class EvalResult(Event):
    kind = "eval"
    step: int
    loss: float
    rows: int


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind = "checkpoint"
    step: int
    path: str
    bytes: int


@dataclass(frozen=True)
class Warning(Event):  # noqa: A001 - the event's name in the log
    kind = "warning"
    message: str


@dataclass(frozen=True)
class Interrupted(Event):
    kind = "interrupted"
    step: int
    signal: str
    checkpoint: str | None
    resume_command: str


@dataclass(frozen=True)
class Failed(Event):
    kind = "failed"
    error: str
    step: int | None = None


@dataclass(frozen=True)
class Finished(Event):
    kind = "finished"
    steps: int
    final_loss: float
    eval_loss: float | None
    adapter_dir: str
    seconds: float
    stopped_early: bool = False


@dataclass(frozen=True)
class Phase(Event):
    """A phase of `localtune quick` started, finished or was skipped (already done)."""

    kind = "phase"
    name: str
    status: str  # started, done, skipped
    index: int
    total: int
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class EvalProgress(Event):
    """One held-out row evaluated by every system of `localtune eval`."""

    kind = "eval_progress"
    done: int
    total: int
    eta_s: float


@dataclass(frozen=True)
class EvalFinished(Event):
    kind = "eval_finished"
    report_dir: str
    rows: int
    verdict: str
    partial: bool = False


@dataclass(frozen=True)
class Progress(Event):
    """Long work outside the training loop (GGUF import, loading weights, writing merged shards):
    `done` of `total` `unit`s; the CLI draws a bar with ETA, the TUI a progress bar."""

    kind = "progress"
    phase: str
    done: int
    total: int
    unit: str = "items"
    eta_s: float | None = None


def _event_classes() -> dict[str, type[Event]]:
    out: dict[str, type[Event]] = {}
    todo = list(Event.__subclasses__())
    while todo:
        cls = todo.pop()
        out[cls.kind] = cls
        todo += cls.__subclasses__()
    return out


def from_dict(d: dict[str, Any]) -> Event | None:
    """The typed event a line of `events.jsonl` was written from (None for a kind this version does not
    know). Non-finite floats stored as text ("nan") come back as floats; unknown fields are ignored, so
    logs from older and newer versions still read."""
    cls = _event_classes().get(d.get("kind", ""))
    if cls is None:
        return None
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        if isinstance(value, str) and value in ("nan", "inf", "-inf") and "float" in str(hints.get(f.name)):
            value = float(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError:  # a required field missing: a line from an incompatible version
        return None


def rank_speeds(e: StepMetrics) -> str:
    """' on 2 ranks (812 + 790)': how a data-parallel step's tokens/s splits over the ranks; '' for one process."""
    if e.world_size <= 1:
        return ""
    split = " + ".join(f"{t:,.0f}" for t in e.rank_tokens_per_s)
    return f" on {e.world_size} ranks" + (f" ({split})" if split else "")


def describe(event: Event) -> str | None:
    """The one human line for an event, as the CLI prints it and the TUI's log shows it (plain text).
    None for kinds that are drawn rather than read (progress of rows or tensors, phase markers)."""
    from localtune.units import format_bytes, format_duration

    e, k = event, event.kind
    if k == "step":
        return (
            f"step {e.step}/{e.total_steps} loss {e.loss:.4f} lr {e.lr:.2e} grad {e.grad_norm:.2f} "
            f"{e.tokens_per_s:,.0f} tok/s{rank_speeds(e)} mem {format_bytes(e.peak_memory_bytes)} "
            f"ETA {format_duration(e.eta_s)}"
        )
    if k == "run_started":
        return f"{'resuming' if e.resume else 'starting'} run {e.run_dir}"
    if k == "data_prepared":
        return (
            f"data: {e.train_rows} training rows, {e.val_rows} validation rows, {e.trainable_tokens:,} of "
            f"{e.train_tokens:,} tokens trained; {e.dropped_rows} dropped, {e.truncated_rows} truncated; "
            f"chat template: {e.chat_template}"
        )
    if k == "model_loaded":
        return (
            f"model: {e.model} ({e.architecture}) on {e.device}, {e.dtype}{', 4-bit NF4' if e.quantized else ''}; "
            f"{e.params_trainable:,} of {e.params_total:,} parameters train; {format_bytes(e.memory_bytes)}; "
            f"loaded in {e.seconds:.1f}s" + (f"; {e.fused_kernels}" if e.fused_kernels else "")
        )
    if k == "memory_planned":
        return (
            f"memory: micro-batch {e.micro_batch} x {e.grad_accum} accumulated; planned peak "
            f"{format_bytes(e.estimate_bytes)} of {format_bytes(e.budget_bytes)} available; {e.reason}"
        )
    if k == "recipe":
        flags = " and ".join({"train.epochs": "--epochs/--max-steps", "train.lr": "--lr"}.get(c, c) for c in e.chosen)
        return (
            f"recipe: {e.total_steps} optimizer steps"
            + (f" ({e.epochs} epochs)" if e.epochs else "")
            + f" at lr {e.lr:.1e}, chosen for this data and model: {e.reason} (set {flags} to choose yourself)"
        )
    if k == "eval":
        return f"eval at step {e.step}: loss {e.loss:.4f} on {e.rows} rows"
    if k == "checkpoint":
        return f"checkpoint: {e.path} ({format_bytes(e.bytes)})"
    if k == "warning":
        return f"warning: {e.message}"
    if k == "interrupted":
        return f"interrupted by {e.signal}; last checkpoint: {e.checkpoint}\nresume with: {e.resume_command}"
    if k == "failed":
        return f"failed{f' at step {e.step}' if e.step else ''}: {e.error}"
    if k == "finished":
        return (
            f"finished: {e.steps} steps in {format_duration(e.seconds)}, final loss {e.final_loss:.4f}"
            + (f", eval loss {e.eval_loss:.4f}" if e.eval_loss is not None else "")
            + (" (stopped early)" if e.stopped_early else "")
            + f"; adapter: {e.adapter_dir}"
        )
    if k == "eval_finished":
        return f"eval: {e.verdict}" + (" (partial: interrupted)" if e.partial else "") + f"; report: {e.report_dir}"
    return None


def progress_text(event: Event, width: int = 24) -> str | None:
    """A bar with counts and ETA for the drawn kinds (training steps, eval rows, long work), or None."""
    from localtune.units import format_duration

    if event.kind == "step":
        done, total, eta, label = event.step, event.total_steps, event.eta_s, None
    elif event.kind == "eval_progress":
        done, total, eta, label = event.done, event.total, event.eta_s, "eval: row"
    elif event.kind == "progress":
        done, total, eta, label = event.done, event.total, event.eta_s, f"{event.phase}:"
    else:
        return None
    filled = int(width * done / max(1, total))
    bar = f"[{'#' * filled}{'.' * (width - filled)}]"
    if label is None:  # a step: the bar sits inside the step's own line
        line = describe(event)
        head, _, rest = line.partition(" loss ")
        return f"{head} {bar} loss {rest}"
    unit = f" {event.unit}" if event.kind == "progress" else ""
    return f"{label} {done}/{total}{unit} {bar}" + (f" ETA {format_duration(eta)}" if eta is not None else "")


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...


@dataclass
class ListSink:
    """Collects events (tests, the TUI's history)."""

    events: list[Event] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]


class JsonlSink:
    """Appends every event as one JSON line, flushed and fsync'd so a crash keeps the log."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: Event) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_events(path: str | os.PathLike) -> list[Event]:
    """Every event of an `events.jsonl`, typed (lines of unknown kinds or broken JSON are skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            event = from_dict(json.loads(line)) if line.strip() else None
        except ValueError:
            continue
        if event is not None:
            out.append(event)
    return out


class Emitter:
    """Fans one event out to every sink."""

    def __init__(self, *sinks: Sink):
        self.sinks = list(sinks)

    def __call__(self, event: Event) -> None:
        for sink in self.sinks:
            sink(event)
