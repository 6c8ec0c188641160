"""Named fault points in every place that writes, for the fault-injection tests.

Set LOCALTUNE_FAULT="<point>[@N]:<action>" to make the Nth time (default: first) execution reaches
`fault_point("<point>")` either kill the process outright (`kill`, like kill -9 or a power cut), fail
as a full disk would (`enospc`), or deliver a signal to itself (`sigint`, `sigterm`: as if the user
pressed Ctrl-C or the system asked the process to stop at exactly that moment). `signal_point` marks
moments that write nothing (loading, data preparation, evaluation) where the signal tests aim, and
`nan_point` a value they can make non-finite (`nan`: train.loss, a diverging micro-batch), and
`oom_point` where they make the GPU run out of memory (`oom`: train.micro, after a micro-batch's forward).
LOCALTUNE_FAULT_RANK=<r> limits it to rank r of a data-parallel run (train/world.py; every rank inherits
LOCALTUNE_FAULT): how the tests kill one rank, or signal it alone. Unset, a fault point costs one
dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

from localtune.errors import LocaltuneError

ENV = "LOCALTUNE_FAULT"
_hits: Counter = Counter()


class DiskFullError(LocaltuneError):
    exit_code = 2
    title = "disk full"


def _fires(name: str) -> str | None:
    """The action LOCALTUNE_FAULT asks for at this pass through point `name`, or None."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    target, _, action = spec.rpartition(":")
    point, _, nth = target.partition("@")
    if point != name or os.environ.get(ENV + "_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return None
    _hits[name] += 1
    return action if _hits[name] == int(nth or 1) else None


def fault_point(name: str) -> None:
    action = _fires(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    elif action in ("sigint", "sigterm"):
        os.kill(os.getpid(), signal.SIGINT if action == "sigint" else signal.SIGTERM)


def oom_point(name: str) -> None:
    """Where the fault tests make the GPU run out of memory (`oom`): torch's own OutOfMemoryError, as CUDA raises."""
    if _fires(name) == "oom":
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory (injected at {name})")


def nan_point(name: str) -> bool:
    """A value the fault tests can make non-finite (`<name>:nan`); writes nothing, so not a fault_point."""
    return _fires(name) == "nan"


def signal_point(name: str) -> None:
    """A moment that writes nothing but where a signal must be handled well (tests send one here)."""
    fault_point(name)


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{int(n)} B"


def disk_full(exc: OSError, what: str, where, needed_bytes: int | None = None) -> DiskFullError | None:
    """A clear error for ENOSPC while writing `what`; None for other OS errors."""
    if exc.errno != errno.ENOSPC:
        return None
    import shutil

    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = 0
    need = f"; it needs about {human_bytes(needed_bytes)}" if needed_bytes else ""
    return DiskFullError(
        f"no space left on the disk while writing {what} in {where} ({human_bytes(free)} free"
        f"{need}); the partial file was removed and the previous good one kept",
        hint="free some space (or choose another --out) and run the same command again",
    )
