"""The ranks of a data-parallel run: which one this process is, and what they agree on together.

torchrun (or `localtune train --gpus N`, which starts torchrun's own launcher: train/launch.py) sets
RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address for every rank; `join()` reads them and opens
torch.distributed's process group: NCCL on CUDA, gloo on the CPU. Without them the world is this one
process, every method below returns its input, and the single-process run takes no other path.

What the ranks must agree on goes through collectives called in the same order on every rank:
- each step: which ranks ran out of memory before the exchange, each rank's real tokens, the step's loss
  (`per_rank`, `sums`), and whether any rank has a stop signal (loop.StopFlag.agree, after the step, the
  evaluation and a checkpoint);
- an evaluation's loss sum and target count, and whether a rank abandoned it;
- the micro-batch that `auto` plans (the smallest of the ranks' plans, `smallest`);
- a checkpoint: rank 0 writes it, the others give it their random-number state (`gather`);
- resuming: rank 0 reads the checkpoint and sends it to the others (`broadcast`), so only rank 0's
  machine needs the run folder; rank 0's configuration goes out the same way at the start;
- before training, any rank's error stops them all (`agree_no_error`): shown by rank 0 when every rank
  has it, by the failing rank when it alone does (rank 0 then names it), and quiet elsewhere.
The gradients are all-reduced by DistributedDataParallel (loop.py wraps the model). A collective that
fails because a rank is gone raises RankLost (exit code 3, so the launcher blames the rank that failed).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from localtune.errors import LocaltuneError, UsageError

# How long a rank waits in one collective for the others (a checkpoint being written, a slow rank).
# A rank that died is noticed at once on gloo (its sockets close) and by the launcher everywhere.
COLLECTIVE_TIMEOUT_S = 1800


class RankLost(LocaltuneError):
    """A collective failed: another rank died or stopped answering. Its own exit code, so that the launcher
    tells the rank that failed from those that only lost it (launch.py)."""

    exit_code = 3
    title = "a rank stopped"


class PeerFailed(LocaltuneError):
    """Another rank failed and said why itself. A rank other than 0 ends quietly (empty message); rank 0,
    whose record and output the user reads, names the rank that failed (`rank` given)."""

    title = "another rank failed"

    def __init__(self, exit_code: int, rank: int | None = None):
        super().__init__(
            ""
            if rank is None
            else f"rank {rank} failed before training began; its own lines above (or on its machine) say why",
            hint=None if rank is None else "fix what rank reports and run the same command again",
        )
        self.exit_code = exit_code


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""  # "nccl" or "gloo"; "" for one process

    @property
    def main(self) -> bool:
        """Rank 0: the only rank that writes (events, run.json, checkpoints, the adapter) and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, rows: list) -> list:
        """This rank's share of a step's (or the validation) rows: every size-th row from its rank."""
        return rows[self.rank :: self.size] if self.distributed else rows

    # ---- collectives (no-ops for one process) ---------------------------------------------------
    def sums(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        self._call("all_reduce", t)
        return t.tolist()

    def per_rank(self, value: float) -> list[float]:
        """Every rank's `value`, in rank order, on every rank."""
        slots = [0.0] * self.size
        slots[self.rank] = float(value)
        return self.sums(slots)

    def smallest(self, n: int) -> int:
        return int(min(self.per_rank(n))) if self.distributed else n

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (pickled: tensors come back on the device they were on, so send CPU ones)."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        self._call("broadcast_object_list", box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        self._call("all_gather_object", out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            self.sums([0.0])  # an all-reduce: works alike on gloo and NCCL, and fails alike when a rank is gone

    def agree_no_error(self, error: BaseException | None) -> None:
        """If any rank failed (a user-facing error, or any other), every rank stops. The failing ranks re-raise
        their own error (shown by rank 0, or by the failing rank); the others raise PeerFailed."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        codes = self.per_rank(getattr(error, "exit_code", 1) if error is not None else 0)
        if error is not None:
            if not codes[0]:  # rank 0 had no such error: this rank's message is the one to show
                error.own_rank = True
            raise error
        failed = [r for r, c in enumerate(codes) if c]
        if failed:  # rank 0 is fine but another is not: rank 0 names it; the other ranks stay quiet
            raise PeerFailed(int(codes[failed[0]]), failed[0] if self.main else None)

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def _device(self):
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def _call(self, name: str, *args, **kwargs) -> None:
        import torch.distributed as dist

        try:
            getattr(dist, name)(*args, **kwargs)
        except RuntimeError as exc:  # DistBackendError, DistNetworkError, a gloo socket closed by a dead peer
            raise lost(exc) from None


def lost(exc: BaseException) -> RankLost:
    import re

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)  # gloo's source location
    first = text.split(". This is typically")[0][:300]
    return RankLost(
        f"lost contact with another rank ({first}); this rank stops too, in the middle of a step it does not save",
        hint="the launcher names the rank that failed; the last complete checkpoint is intact: fix the cause "
        "and resume with the same number of ranks",
    )


def is_collective_failure(exc: BaseException) -> bool:
    """Whether `exc`, raised by a forward or backward pass, came from DDP's gradient all-reduce failing."""
    import torch.distributed as dist

    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        s in str(exc) for s in ("Connection closed by peer", "Connection reset by peer", "NCCL", "Gloo", "gloo")
    )


def join(device: str = "auto") -> World:
    """This process's place among the ranks torchrun started (one process: World()). `device` is train.device."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    import torch
    import torch.distributed as dist

    rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise UsageError(
                f"rank {rank} is local rank {local}, but this machine has {torch.cuda.device_count()} GPU(s)",
                hint="start at most as many ranks per machine as it has GPUs (--gpus / --nproc-per-node)",
                title="not enough GPUs",
            )
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    from datetime import timedelta

    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    except (RuntimeError, ValueError) as exc:
        raise UsageError(
            f"rank {rank} of {size} could not join the others ({backend}): {str(exc).splitlines()[0][:300]}",
            hint="check the rendezvous address and port (torchrun --rdzv-endpoint), and that every node can reach "
            "it; `localtune doctor` checks NCCL",
            title="cannot start the ranks",
        ) from None
    _end_with_launcher()
    return World(rank, size, local, backend)


def _end_with_launcher() -> None:
    """Linux: this rank gets SIGKILL if the launcher that started it dies, so no rank is left training
    alone (the launcher stops the ranks itself on every other way out)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def self_test(backend: str) -> str | None:
    """A one-rank process group of `backend` and one all-reduce: None when it works, else what failed
    (`localtune doctor`; not inside a data-parallel run, which has its own group)."""
    import warnings

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return None
    try:
        with warnings.catch_warnings():  # torch's notes on an unknown backend: the answer says it
            warnings.simplefilter("ignore")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        t = torch.ones(1, device="cuda" if backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return None if float(t) == 1.0 else f"an all-reduce gave {float(t)}"
    except Exception as exc:  # noqa: BLE001 - whatever broke is the answer
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
