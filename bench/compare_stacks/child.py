"""Running one stack (or a model build) in a fresh process: `python -m bench.stack_run SPEC OUT`.

A fresh process per run keeps its peak memory its own and lets a run that runs out of memory fail alone.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import REPO_ROOT

CHILD_ENV = dict(os.environ)  # --threads sets OMP_NUM_THREADS here, before torch starts in the child


def run_child(spec: dict, work: Path, name: str, timeout: int) -> dict:
    spec_path, out_path, log_path = work / f"{name}.spec.json", work / f"{name}.out.json", work / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            # -m from the repository root, so that the child finds the `bench` package wherever the parent ran
            subprocess.run(
                [sys.executable, "-m", "bench.stack_run", str(spec_path), str(out_path)],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                env=CHILD_ENV,
            )
        except subprocess.TimeoutExpired:
            pass
    wall = time.monotonic() - start
    if out_path.is_file():
        result = json.loads(out_path.read_text())
    else:
        result = {"stack": spec["stack"], "status": "error", "error": f"no result (timeout {timeout}s or crash)"}
    result["process_s"] = round(wall, 1)
    if result["status"] == "error":
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        print(f"    {spec['stack']} failed: {result['error']}\n      " + "\n      ".join(tail), flush=True)
    return result
