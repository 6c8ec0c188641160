"""`--gpus N`: start N data-parallel ranks of the same command on this machine, through torchrun's own
launcher (torch.distributed.launcher, what `torchrun --standalone --nproc-per-node N` runs).

Every rank runs `python -m localtune ARGS` with torchrun's environment (RANK, WORLD_SIZE, ...); the
command sees it and trains as one rank of the world (world.py) instead of launching again. This
process only waits and reports:
- Ctrl-C or SIGTERM here is passed by the launcher to every rank, once: they finish the step, rank 0
  writes one checkpoint and prints the resume line, and this exits 130 / 143 like a single process.
  The launcher waits up to SHUTDOWN_S for that before it kills them.
- A rank that dies (kill -9, a crash) makes the launcher stop the others within a second or so; this
  names the rank and how it ended, and the checkpoint rank 0 last completed (checkpoints are written
  whole or not at all, so it is intact).
The launcher's own log lines are kept off the terminal; what it knows is said in our words instead.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from pathlib import Path

from localtune.errors import LocaltuneError, UsageError

SHUTDOWN_S = 600  # how long the ranks get to finish a step and save after Ctrl-C before they are killed
STOPPED = {130: "SIGINT", 143: "SIGTERM"}  # the exit codes of ranks that stopped cleanly on a signal
LOST = 3  # world.RankLost's exit code: a rank that stopped because another failed
LAUNCHED = "LOCALTUNE_LAUNCHED"  # set for the ranks this process starts


class RankFailed(LocaltuneError):
    title = "a rank failed"


def in_world() -> bool:
    """Whether this process is a rank that torchrun (or --gpus) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def rank() -> int:
    """This process's global rank (0 outside a data-parallel run)."""
    return int(os.environ.get("RANK", "0") or 0)


def check_gpus(n: int, device: str) -> str:
    """The backend N ranks would use here, or a UsageError where they cannot run."""
    import torch

    if n < 1:
        raise UsageError(f"--gpus {n}: the number of ranks must be at least 1", hint="pass --gpus 2 or more")
    if device == "cpu" or not torch.cuda.is_available():
        if device == "cuda":
            raise UsageError("train.device is 'cuda' but no CUDA GPU is available", hint="use --device auto or cpu")
        return "gloo"
    have = torch.cuda.device_count()
    if n > have:
        raise UsageError(
            f"--gpus {n}, but this machine has {have} GPU(s)",
            hint=f"pass --gpus {have} or fewer; for more machines, start torchrun on each (README: more than one GPU)",
            title="not enough GPUs",
        )
    return "nccl"


def run_ranks(args: list[str], n: int, *, run_dir: str | os.PathLike, device: str = "auto", say=print) -> int:
    """Run `localtune ARGS` as n ranks; returns the exit code the command should exit with."""
    backend = check_gpus(n, device)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    env = {LAUNCHED: "1"}  # the ranks' cue that this process has printed the config lines
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:  # CPU ranks share the cores (torchrun'd say 1)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    say(f"starting {n} ranks ({backend}{' on the CPU' if backend == 'gloo' else ''}); only rank 0 prints and writes")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=f"localtune-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, as `torchrun --standalone`
        max_restarts=0,
        monitor_interval=0.1,
        shutdown_timeout=SHUTDOWN_S,
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the ranks inherit this process's environment; set for the launch only
    try:
        elastic_launch(config, sys.executable)("-m", "localtune", *args)
        return 0
    except SignalException as exc:  # the ranks got the signal too and have stopped (rank 0 said how to resume)
        return 143 if exc.sigval == signal.SIGTERM else 130
    except ChildFailedError as exc:
        return _exit_code(exc.failures, Path(run_dir))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stopped(f) -> bool:
    """A rank that stopped because of a signal or because another rank failed: not a cause."""
    return f.exitcode in STOPPED or f.exitcode == LOST or -f.exitcode in (signal.SIGINT, signal.SIGTERM)


def _exit_code(failures: dict, run_dir: Path) -> int:
    causes = {r: f for r, f in failures.items() if not _stopped(f)}
    if not causes:  # every rank stopped on a signal (rank 0 printed the resume line), or lost the others
        codes = [f.exitcode for f in failures.values() if f.exitcode in STOPPED]
        if codes:
            return max(codes)
        raise RankFailed(
            "every rank lost contact with the others (a network or NCCL failure, or a collective that timed out)",
            hint=_after_failure(run_dir),
        )
    rank, f = _cause(failures)
    if rank == 0 and f.exitcode > 0:  # rank 0 failed first with an error of ours, and said it
        return f.exitcode
    raise RankFailed(_failure_line(failures), hint=_after_failure(run_dir))


def _cause(failures: dict):
    """(rank, failure) of the rank that failed first. Those that stopped with it come last; then the earliest
    (a rank stuck in a GPU wait is SIGKILLed by the launcher 30 s after the first failure, so it is later);
    at the same time, one killed by a signal of its own (SIGKILL, SIGSEGV, ...) before one that exited."""

    def order(item):
        rank, f = item
        return (_stopped(f), f.timestamp, f.exitcode >= 0, rank)

    return min(failures.items(), key=order)


def _failure_line(failures: dict) -> str:
    """Which rank failed first, and how; the ranks that only followed it down are not the cause."""
    rank, f = _cause(failures)
    if f.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-f.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-f.exitcode}"
    else:
        how = f"exited with code {f.exitcode}"
    others = sorted(r for r in failures if r != rank)
    plural = "s" if len(others) != 1 else ""
    rest = f"; the other rank{plural} ({', '.join(map(str, others))}) stopped with it" if others else ""
    return f"rank {rank} (pid {f.pid}) {how}{rest}"


def _after_failure(run_dir: Path) -> str:
    from localtune.train.checkpoint import CheckpointStore

    try:
        latest = CheckpointStore(run_dir / "checkpoints", 1, warn=lambda m: None).latest_valid()
    except OSError:
        latest = None
    where = (
        f"the last complete checkpoint, step {latest[1]['step']} in {latest[0]}, is intact: fix the cause and run the "
        "same command with --resume (and the same --gpus)"
        if latest
        else "no checkpoint had been written yet: fix the cause and run the same command again"
    )
    return where


def launch_train(cfg, run_dir, *, resume: bool = False, force_resume: bool = False, say=print) -> int:
    """`localtune train` as cfg.train.gpus ranks: cfg goes to them as a config file of what was set (so what
    the user left unset stays the recipe's to choose, as in one process). Returns the exit code."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="localtune-launch-") as tmp:
        config = cfg.save(Path(tmp) / "config.yaml", only_set=True)
        args = ["train", "--config", str(config), "--out", str(run_dir)]
        args += ["--force-resume"] if force_resume else ["--resume"] if resume else []
        return run_ranks(args, cfg.train.gpus, run_dir=run_dir, device=cfg.train.device, say=say)
