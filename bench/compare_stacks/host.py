"""The machine and the code measured: CPU, cores, RAM, load average, and the git commit with its local changes.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from . import REPO_ROOT


def host_environment() -> dict:
    cpu, kib = platform.processor(), 0
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(kib / 1024**2, 1),
        "os": platform.platform(),
        "load_avg_start": os.getloadavg(),
        **git_state(),
    }


def git_state() -> dict:
    """The commit measured, and whether localtune's code differed from it (a moving tree is not that commit)."""

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = git("status", "--porcelain", "--", "localtune", "converters").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "localtune_files_changed": len(changed)}
