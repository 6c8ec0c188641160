"""Run folders in a workspace: what each holds and whether it is alive, and starting or stopping a
training process that outlives whoever started it (the TUI, an SSH session).

Headless: the TUI and tests use it; it imports neither textual nor torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunSummary:
    path: Path
    status: str  # starting, running, finished, stopped_early, interrupted, failed, crashed
    model: str = ""
    data: str = ""
    steps: int = 0
    total_steps: int = 0
    last_loss: float | None = None
    exported: list[str] = field(default_factory=list)
    pid: int | None = None


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def read_events_tail(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Complete JSON lines appended since `offset`, and the new offset (a partial last line waits)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end


def summarize(run_dir: Path) -> RunSummary | None:
    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    status = info.get("status", "starting")
    pid = info.get("pid")
    if status in ("starting", "running") and not pid_alive(pid):
        status = "crashed"
    summary = RunSummary(run_dir, status, pid=pid)
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        summary.model = str(cfg.get("model", {}).get("name_or_path", ""))
        summary.data = str(cfg.get("data", {}).get("path", ""))
    except (OSError, yaml.YAMLError):
        pass
    events, _ = read_events_tail(run_dir / "events.jsonl")
    steps = [e for e in events if e.get("kind") == "step"]
    if steps:
        summary.steps, summary.total_steps = steps[-1]["step"], steps[-1]["total_steps"]
        loss = steps[-1]["loss"]
        summary.last_loss = loss if isinstance(loss, (int, float)) else None
    if (run_dir / "gguf").is_dir():
        summary.exported = sorted(p.name for p in (run_dir / "gguf").glob("*.gguf"))
    return summary


def list_runs(workspace: Path) -> list[RunSummary]:
    if not workspace.is_dir():
        return []
    found = [summarize(p) for p in sorted(workspace.iterdir()) if p.is_dir()]
    return [r for r in found if r is not None]


def start_training(args: list[str], run_dir: Path) -> subprocess.Popen:
    """`localtune train ARGS` as its own process session: it survives the caller's exit and hang-up."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "train.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "localtune", "train", *args], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop_training(run_dir: Path, *, now: bool = False) -> bool:
    """Graceful stop (SIGINT: finish the step, save, exit); `now` sends a second one. False if not running."""
    summary = summarize(run_dir)
    if summary is None or summary.status not in ("starting", "running") or not summary.pid:
        return False
    os.kill(summary.pid, signal.SIGINT)
    if now:
        import time

        time.sleep(0.2)
        if pid_alive(summary.pid):
            os.kill(summary.pid, signal.SIGINT)
    return True
