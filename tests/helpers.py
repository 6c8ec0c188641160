"""Helpers the tests share, imported as `from helpers import ...` (conftest.py holds only fixtures):
data rows, data files, a tiny finished run, and the CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def localtune_process(*args, fault: str | None = None, timeout: int = 600):
    """`localtune ARGS` in a subprocess, with LOCALTUNE_FAULT set to `fault` (faults.py) or unset."""
    import subprocess
    import sys

    env = {**os.environ}
    env.pop("LOCALTUNE_FAULT", None)
    if fault:
        env["LOCALTUNE_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "localtune", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(*turns: str, system: str | None = None) -> dict:
    """{"messages": [...]} from alternating user/assistant texts."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"messages": msgs}


def train_tiny_run(model_dir, data, run_dir, *, steps: int = 2):
    """A finished plain-LoRA training run of `steps` steps on a tiny model (no 4-bit: faster on CPU)."""
    from localtune.config import load_config
    from localtune.train.run import train_run

    cfg = load_config(
        None,
        {
            "model.name_or_path": (str(model_dir), "test"),
            "data.path": (str(data), "test"),
            "train.max_steps": (steps, "test"),
            "train.load_in_4bit": (False, "test"),
        },
    )
    return train_run(cfg, run_dir)
