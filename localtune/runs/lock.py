"""One writer per run folder: a lock file holding the owner's pid, taken over when its owner is gone.

Training, merge and export of the same RUN_DIR take the lock; a second one is refused with a message
naming the holder. A lock whose process no longer exists (killed, machine rebooted) is stale and is
taken over, atomically, by the next writer.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from localtune.errors import UsageError
from localtune.runs.workspace import pid_alive

LOCK_NAME = ".localtune.lock"


class RunBusy(UsageError):
    title = "run folder busy"


def _holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, what: str):
    """Hold RUN_DIR's lock while `what` (e.g. "training") runs. Raises RunBusy if someone else holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "what": what, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _attempt in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder.get("pid") == os.getpid():  # re-entrant within one process (quick: train, then export)
                yield
                return
            if pid_alive(holder.get("pid")):
                raise RunBusy(f"{run_dir} is in use: {holder.get('what', 'a localtune command')} by process "
                              f"{holder.get('pid')} since {holder.get('since', '?')}",
                              hint="wait for it to finish, stop it (Ctrl-C in its terminal, or s in the TUI), or "
                                   "use another --out") from None
            stale = lock.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(lock, stale)  # atomic: only one taker succeeds with this exact file
                stale.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        try:
            yield
        finally:
            if _holder(lock).get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
        return
    raise RunBusy(f"could not take the lock of {run_dir}", hint="try again")
