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
from localtune.runs.layout import LOCK_NAME, RunDir, pid_alive

__all__ = ["LOCK_NAME", "RunBusy", "run_lock"]
HOLDER_WRITE_S = 2.0  # a lock file younger than this with no pid in it yet is still being written


class RunBusy(UsageError):
    title = "run folder busy"


def _holder(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _age(lock: Path) -> float:
    try:
        return time.time() - lock.stat().st_mtime
    except OSError:
        return HOLDER_WRITE_S  # gone already: the next attempt creates it


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, what: str):
    """Hold RUN_DIR's lock while `what` (e.g. "training") runs. Raises RunBusy if someone else holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDir(run_dir).lock
    me = {"pid": os.getpid(), "what": what, "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
    takeovers = 0
    while takeovers < 3:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if not holder and _age(lock) < HOLDER_WRITE_S:
                # Its owner created it a moment ago and is writing its pid: an empty holder is not a stale one.
                time.sleep(0.05)
                continue
            if holder.get("pid") == os.getpid():  # re-entrant within one process (quick: train, then export)
                yield
                return
            if pid_alive(holder.get("pid")):
                raise RunBusy(
                    f"{run_dir} is in use: {holder.get('what', 'a localtune command')} by process "
                    f"{holder.get('pid')} since {holder.get('since', '?')}",
                    hint="wait for it to finish, stop it (Ctrl-C in its terminal, or s in the TUI), or "
                    "use another --out",
                ) from None
            stale = lock.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(lock, stale)  # atomic: only one taker succeeds with this exact file
                stale.unlink()
            takeovers += 1
            continue
        # Created exclusively, so not through files.atomic_file (a rename would replace another's lock);
        # a reader that finds it still empty waits (above).
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
