"""Run folders in a workspace: what each holds and whether it is alive, and starting or stopping a
training process that outlives whoever started it (the TUI, an SSH session).

A run's status comes from its run.json, checked against reality: a run.json that says "starting" or
"running" while its process is gone either failed before it could record so (its train.log ends with
the error the CLI printed: a bad flag, a config or data error), was interrupted before training began,
or crashed (killed, out of memory: no message at all).

Headless: the TUI and tests use it; it imports neither textual nor torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from localtune.events import Event, Failed, RunStarted, from_dict
from localtune.runs.layout import CRASHED, FAILED, INTERRUPTED, LIVE, STARTING, RunDir, RunInfo, pid_alive
from localtune.runs.lock import RunBusy

__all__ = [
    "RunSummary",
    "list_runs",
    "pid_alive",
    "read_new_events",
    "start_training",
    "stop_training",
    "summarize",
]

LOG_TAIL_BYTES = 64 * 1024  # how much of a start's train.log is searched for its error
MESSAGE_LINES = 30  # at most this many lines of an error become RunSummary.message


@dataclass
class RunSummary:
    path: Path
    status: str  # starting, running, finished, stopped_early, interrupted, failed, crashed (runs.layout)
    model: str = ""
    data: str = ""
    steps: int = 0
    total_steps: int = 0
    last_loss: float | None = None  # nan stays nan: a diverged run must not look healthy
    exported: list[str] = field(default_factory=list)
    pid: int | None = None
    message: str = ""  # failed: the error, as the CLI printed it; interrupted before training: the notice


def _read_complete_lines(path: Path, offset: int) -> tuple[list[bytes], int]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    return data[:end].splitlines(), offset + end


def read_new_events(path: str | os.PathLike, offset: int = 0) -> tuple[list[Event], int]:
    """The typed events (events.from_dict) of the complete lines appended to `path` since `offset`, and
    the offset to read from next. A partial last line waits; broken lines and unknown kinds are skipped;
    a missing file gives no events."""
    lines, offset = _read_complete_lines(Path(path), offset)
    events = []
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        event = from_dict(d) if isinstance(d, dict) else None
        if event is not None:
            events.append(event)
    return events, offset


def _clip(lines: list[str]) -> str:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines[:MESSAGE_LINES])


def exit_message(log: Path, offset: int | None) -> tuple[str, str]:
    """(status, message) of a start whose process is gone without recording an end, from what it printed
    to train.log since `offset`: FAILED with the last error (localtune's titled "error: ...", click's
    "Error: ..." for a bad flag, or a traceback's last line), INTERRUPTED with the notice of a signal that
    came before training began, else CRASHED with no message."""
    if offset is None:  # not started by start_training: nothing of it went to train.log
        return CRASHED, ""
    try:
        with open(log, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - LOG_TAIL_BYTES))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return CRASHED, ""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if line.startswith("error: "):  # LocaltuneError.render(): title, details, fix
            return FAILED, _clip(lines[i:])
        if line.startswith("Error: "):  # click: a bad or missing flag (the usage lines above it say nothing)
            return FAILED, _clip(lines[i:])
        if line.startswith("interrupted by SIG"):
            return INTERRUPTED, line
        if line.startswith("Traceback (most recent call last)"):
            last = next((x for x in reversed(lines[i:]) if x.strip()), line)
            return FAILED, last.strip()
    return CRASHED, ""


def _failure(events: list[Event]) -> str:
    """The error of the latest attempt's Failed event ("" when that attempt has none)."""
    for event in reversed(events):
        if isinstance(event, Failed):
            return event.error
        if isinstance(event, RunStarted):
            return ""
    return ""


def summarize(run_dir: str | os.PathLike) -> RunSummary | None:
    """What a run folder holds and whether its process is alive; None if `run_dir` is not a run folder."""
    run = RunDir(run_dir)
    if not RunDir.is_run(run.path):
        return None
    info = run.read_info() or RunInfo()
    events, _ = read_new_events(run.events)
    status, message = info.status, ""
    if info.live and not pid_alive(info.pid):
        status, message = exit_message(run.train_log, info.log_offset)
    elif status == FAILED:
        message = _failure(events) or info.error or exit_message(run.train_log, info.log_offset)[1]
    summary = RunSummary(run.path, status, pid=info.pid, message=message)
    import yaml

    try:
        cfg = yaml.safe_load(run.config.read_text()) or {}
        summary.model = str(cfg.get("model", {}).get("name_or_path", ""))
        summary.data = str(cfg.get("data", {}).get("path", ""))
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    steps = [e for e in events if e.kind == "step"]
    if steps:
        summary.steps, summary.total_steps, summary.last_loss = steps[-1].step, steps[-1].total_steps, steps[-1].loss
    summary.exported = [p.name for p in run.gguf_files()]
    return summary


def list_runs(workspace: str | os.PathLike) -> list[RunSummary]:
    workspace = Path(workspace)
    if not workspace.is_dir():
        return []
    found = [summarize(p) for p in sorted(workspace.iterdir()) if p.is_dir()]
    return [r for r in found if r is not None]


def start_training(args: list[str], run_dir: str | os.PathLike) -> subprocess.Popen:
    """`localtune train ARGS` as its own process session: it survives the caller's exit and hang-up.

    Its output is appended to RUN_DIR/train.log; run.json says STARTING with the child's pid and where its
    output begins, so summarize can tell a process still starting from one that exited with an error."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    prior = run.read_info()
    if prior is not None and prior.live and pid_alive(prior.pid):
        raise RunBusy(
            f"{run.path} is in use: training by process {prior.pid} ({prior.status})",
            hint="wait for it to finish, or stop it first (s in the TUI)",
        )
    with open(run.train_log, "ab") as log:  # the child keeps its own copy of the descriptor
        offset = log.seek(0, os.SEEK_END)
        proc = subprocess.Popen(
            [sys.executable, "-m", "localtune", "train", *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    # A resumed run keeps what its record holds (base, data, results) until the process writes its own.
    info = replace(
        prior or RunInfo(),
        status=STARTING,
        pid=proc.pid,
        log_offset=offset,
        error="",
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    run.save_info(info)
    return proc


def stop_training(run_dir: str | os.PathLike, *, now: bool = False) -> bool:
    """Graceful stop (SIGINT: finish the step, save, exit); `now` sends a second one. False if not running."""
    summary = summarize(run_dir)
    if summary is None or summary.status not in LIVE or not summary.pid:
        return False
    os.kill(summary.pid, signal.SIGINT)
    if now:
        time.sleep(0.2)
        if pid_alive(summary.pid):
            os.kill(summary.pid, signal.SIGINT)
    return True
