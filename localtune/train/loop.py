"""The training loop: one explicit loop whose whole mutable state is `LoopState`, checkpointed whole.

Data order is a pure function of (seed, epoch): a resumed run finds its place from `epoch` and
`row_offset` alone. An optimizer step takes `micro_batch * grad_accum` rows (fewer at the end of an
epoch, never across it); its loss is the sum of the target tokens' losses divided by the number of
target tokens in the whole step, so gradient accumulation gives exactly the full-batch gradient.
A micro-batch's rows run concatenated, with no padding and no attention across rows (batching.py,
row_attention.py), and its loss never materialises full-vocabulary logits (chunked_loss.py).

Faults handled here (reliability.md): a first SIGINT/SIGTERM finishes the current step, saves and
returns "interrupted" (one arriving during an evaluation abandons it; during a save, the save
completes first); non-finite loss or gradient skips the step and stops after 3 in a row;
CUDA out-of-memory halves the micro-batch (auto mode), doubles accumulation and continues from the
last checkpoint.

Data parallel (world.py): each of N ranks takes every N-th row of the same step rows, so a step is
`micro_batch * grad_accum * N` rows in the one order (seed, epoch) gives, and the loss is divided by
the target tokens of the whole step on every rank. DistributedDataParallel all-reduces the
gradients on each rank's last micro-batch (the others run under no_sync); since it averages, each
rank's loss is multiplied by N first, so the step's gradient is the same sum as one process computes.
Every decision is agreed: the step's loss is summed over the ranks (so a non-finite step is skipped by
all), a stop signal on any rank stops all after the same step, an out-of-memory in a micro-batch before
a rank's last of the step is recovered by all together (one in the last, whose gradients DDP exchanges,
ends the run: a half-done all-reduce cannot be taken back), and only rank 0 writes checkpoints and
events. Every rank runs as many micro-batches as the rank with the most rows, so the ranks' collectives
pair up one to one (DDP rebuilds its buckets with a broadcast inside a forward).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from localtune.config import Config
from localtune.data.tokenize import IGNORE
from localtune.errors import LocaltuneError
from localtune.events import CheckpointSaved, EvalResult, StepMetrics, Warning
from localtune.faults import nan_point, oom_point, signal_point
from localtune.methods import method
from localtune.train.checkpoint import CheckpointStore, Snapshot
from localtune.train.speed.batching import collate  # noqa: F401  (bench/ imports it from here)
from localtune.train.speed.chunked_loss import CausalLMLoss
from localtune.train.world import World, is_collective_failure, lost

MAX_NONFINITE_IN_A_ROW = 3
# Methods whose saved adapter is not their trainable state; their checkpoints add every trained tensor.
WHOLE_STATE_METHODS = ("p_tuning", "freeze")
TRAINABLE_FILE = "trainable.safetensors"


class TrainingError(LocaltuneError):
    title = "training failed"


class StopRequested(Exception):
    """Raised at a safe point after a first SIGINT/SIGTERM (during load, data prep or eval)."""


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done (skipped non-finite steps count: the schedule moves on)
    epoch: int = 0
    row_offset: int = 0  # rows of this epoch's order consumed by finished steps
    micro_step: int = 0  # micro-batches done inside the current step (0 at every checkpoint)
    tokens_seen: int = 0
    nonfinite_in_row: int = 0
    micro_batch: int = 1
    grad_accum: int = 1
    best_eval: float | None = None
    evals_since_best: int = 0
    losses: list[float] = field(default_factory=list)
    eval_losses: list[list[float]] = field(default_factory=list)  # [step, loss]


SIGNAL_CODES = {"SIGINT": 1, "SIGTERM": 2}


class _OOMBeforeExchange(Exception):
    """A rank ran out of memory before the gradient exchange; every rank recovers together."""


def step_loss_module(model, micro_loss):
    """The micro-batch loss as a module's forward, holding the model, so that DistributedDataParallel sees the
    forward it prepares its gradient all-reduce for (CausalLMLoss calls the model's parts, not its forward)."""
    import torch

    class StepLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, rows, num_items):
            return micro_loss(rows, num_items=num_items)

    return StepLoss()


class StopFlag:
    """First SIGINT/SIGTERM: ask the loop to stop after this step. Second: exit at once."""

    def __init__(self, *, quiet: bool = False):
        self.signal: str | None = None
        self.received = False  # this process got a signal itself (not only another rank's, through `agree`)
        self.quiet = quiet  # a data-parallel rank other than 0: rank 0 says it for all
        self._old: dict = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.received:
            os._exit(128 + signum)  # second press: now; the last complete checkpoint is untouched
        self.received = True
        if self.signal is not None:  # another rank's stop was adopted already: this is the same stop, not a second
            return
        self.signal = signal.Signals(signum).name
        if not self.quiet:
            print(f"\n{self.signal}: finishing this step and saving (press again to quit at once)", flush=True)

    def check(self, world: World | None = None) -> None:
        """Raise StopRequested at a safe point; with ranks, when any of them has a stop request (all call it)."""
        if self.agree(world) if world is not None else self.signal:
            raise StopRequested(self.signal)

    def agree(self, world: World) -> bool:
        """Whether any rank has a stop request; a rank that had none takes the other's signal name."""
        if not world.distributed:
            return self.signal is not None
        codes = world.per_rank(SIGNAL_CODES.get(self.signal, 0))
        first = next((int(c) for c in codes if c), 0)
        if first and self.signal is None:
            self.signal = {v: k for k, v in SIGNAL_CODES.items()}[first]
        return bool(first)

    @property
    def exit_code(self) -> int:
        return 143 if self.signal == "SIGTERM" else 130


def n_targets(labels: list[int]) -> int:
    return sum(1 for x in labels[1:] if x != IGNORE)


def epoch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def lr_lambda(cfg: Config, total_steps: int) -> Callable[[int], float]:
    warmup = int(cfg.train.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.train.lr_scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if cfg.train.lr_scheduler == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Hooks:
    """Test hooks: fault injection (`loss(step, micro, loss) -> loss`, `before_micro(step, micro_batch)`)
    and `trained(model)`, called with the model when training ends."""

    loss: Callable | None = None
    before_micro: Callable | None = None
    trained: Callable | None = None


class Trainer:
    def __init__(
        self,
        cfg: Config,
        model,
        train_rows,
        val_rows,
        *,
        device: str,
        dtype: str,
        pad_id: int,
        store: CheckpointStore,
        identity: dict,
        emit,
        stop: StopFlag,
        micro_batch: int,
        grad_accum: int,
        auto_micro_batch: bool,
        hooks: Hooks | None = None,
        world: World | None = None,
    ):
        import torch

        self.cfg, self.model, self.rows, self.val_rows = cfg, model, train_rows, val_rows
        self.device, self.dtype, self.pad_id = device, dtype, pad_id
        self.store, self.identity, self.emit, self.stop = store, identity, emit, stop
        self.auto_micro_batch = auto_micro_batch
        self.hooks = hooks or Hooks()
        self.params = [p for p in model.parameters() if p.requires_grad]
        # padding-free rows and chunked cross-entropy, or padded rows where the adapter method needs them
        self.micro_loss = CausalLMLoss(model, pad_id, padded=method(cfg.adapter.method).padded)
        if cfg.train.layer_drop > 0:  # stochastic depth in training only (speed/layer_drop.py)
            from localtune.train.speed.layer_drop import install as install_layer_drop

            install_layer_drop(model, cfg.train.layer_drop)
        self.world = world or World()
        self.ddp = self._wrap_for_ranks() if self.world.distributed else None
        self.rows_per_step = micro_batch * grad_accum * self.world.size  # what the step takes of the epoch's order
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, row order) of the current epoch
        self.steps_per_epoch = math.ceil(len(train_rows) / self.rows_per_step)
        t = cfg.train
        self.total_steps = t.max_steps if t.max_steps > 0 else t.epochs * self.steps_per_epoch
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        self.state = LoopState(micro_batch=micro_batch, grad_accum=grad_accum)
        self.start_snapshot = self.snapshot()  # where an OOM restart goes when no checkpoint exists yet
        self.last_checkpoint: str | None = None

    def _wrap_for_ranks(self):
        """DistributedDataParallel over the trainable parameters only: the frozen (4-bit) base is loaded alike by
        every rank and is neither broadcast nor reduced; the adapter starts from rank 0's weights."""
        from torch.nn.parallel import DistributedDataParallel

        module = step_loss_module(self.model, self.micro_loss)
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
        try:
            return DistributedDataParallel(module, find_unused_parameters=self.cfg.train.layer_drop > 0)
        except RuntimeError as exc:
            raise lost(exc) from None

    def _make_optimizer(self):
        import torch

        from localtune.train.param_groups import param_groups

        t = self.cfg.train
        kw = dict(lr=t.lr, weight_decay=t.weight_decay)
        ratio = self.cfg.adapter.lora_plus_ratio if method(self.cfg.adapter.method).lora_family else 0.0
        groups = param_groups(self.model, **kw, layer_decay=t.layer_lr_decay, lora_plus=ratio)
        if t.optimizer != "adamw" and self.device == "cuda":
            import bitsandbytes as bnb

            cls = bnb.optim.PagedAdamW8bit if t.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
            return cls(groups, **kw)
        if t.optimizer != "adamw":
            self.emit(Warning(f"optimizer {t.optimizer} needs CUDA; using AdamW on the CPU"))
        return torch.optim.AdamW(groups, **kw)

    # ---- state ----------------------------------------------------------------------------------
    def trainable_state(self) -> dict:
        """What a checkpoint must hold to resume: the adapter as peft saves it, or, where peft saves something
        else (P-tuning saves its encoder's output, not the encoder), every trainable tensor by name."""
        from peft import get_peft_model_state_dict

        if self.cfg.adapter.method in WHOLE_STATE_METHODS:  # on the CPU: whole layers would double in GPU memory
            return {k: p.detach().to("cpu", copy=True) for k, p in self.model.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_trainable_state(self, state: dict) -> None:
        import torch
        from peft import set_peft_model_state_dict

        if self.cfg.adapter.method not in WHOLE_STATE_METHODS:
            set_peft_model_state_dict(self.model, state)
            return
        params = dict(self.model.named_parameters())
        missing = [k for k, p in params.items() if p.requires_grad and k not in state]
        if missing or any(k not in params for k in state):
            from localtune.train.checkpoint import CheckpointError

            raise CheckpointError(f"its trained tensors do not fit this model (e.g. {(missing or list(state))[0]})")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)

    def write_adapter(self, folder) -> None:
        if method(self.cfg.adapter.method).kind == "freeze":  # the trained tensors only, never the 4-bit model
            from localtune.model.freeze import write_adapter

            write_adapter(self.model, folder, self.cfg.adapter.freeze_modules)
            return
        self.model.save_pretrained(folder)
        if self.cfg.adapter.method in WHOLE_STATE_METHODS:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.trainable_state().items()}, str(folder / TRAINABLE_FILE))

    def snapshot(self) -> Snapshot:
        adapter = self.trainable_state()
        rng = rng_state()
        if self.world.distributed:  # every rank's (dropout and layer drop differ per rank); gathered by rank 0
            rng = {**rng, "ranks": self.world.gather(rng)}
        return Snapshot(
            self.state.step,
            adapter,
            self.optimizer.state_dict(),
            self.scheduler.state_dict(),
            rng,
            asdict(self.state),
            self.identity,
        )

    def restore(self, snap: Snapshot) -> None:
        """Every rank restores the same snapshot (rank 0 read it: `world.broadcast`), each its own random state."""
        ranks = snap.rng.get("ranks") or []
        rng = ranks[self.world.rank] if self.world.rank < len(ranks) else snap.rng
        self.load_trainable_state(snap.adapter)
        try:
            self.optimizer.load_state_dict(snap.optimizer)
        except ValueError as exc:  # other parameter groups (train.layer_lr_decay, adapter.lora_plus_ratio)
            from localtune.train.checkpoint import CheckpointError

            raise CheckpointError(f"its optimizer state does not fit this run's parameter groups ({exc})") from None
        self.scheduler.load_state_dict(snap.scheduler)
        set_rng_state(rng)
        restored = LoopState(**snap.loop)
        for name in restored.__dataclass_fields__:  # in place: the running loop holds this object
            setattr(self.state, name, getattr(restored, name))

    def save_checkpoint(self) -> None:
        snap = self.snapshot()  # on every rank: it gathers their random states
        if not self.world.main:
            return
        path = self.store.save(snap, self.write_adapter)
        self.last_checkpoint = str(path)
        size = sum(f.stat().st_size for f in path.iterdir())
        self.emit(CheckpointSaved(self.state.step, str(path), size))

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> str:
        """Train to the end; returns "finished", "stopped_early" or "interrupted"."""
        import torch

        st = self.state
        start, start_step = time.monotonic(), st.step
        self.model.train()
        while st.step < self.total_steps:
            if st.row_offset >= len(self.rows):
                st.epoch, st.row_offset = st.epoch + 1, 0
            if self._order[0] != st.epoch:  # shuffled once per epoch, not once per step
                self._order = (st.epoch, epoch_order(len(self.rows), self.cfg.train.seed, st.epoch))
            order = self._order[1]
            step_rows = [self.rows[i] for i in order[st.row_offset : st.row_offset + self.rows_per_step]]
            signal_point("train.step")
            t0 = time.monotonic()
            try:
                loss, real_tokens = self._accumulate(step_rows)
            except (torch.OutOfMemoryError, _OOMBeforeExchange) as exc:
                self._recover_from_oom(step_rows, exc.args[0] if isinstance(exc, _OOMBeforeExchange) else [])
                continue
            rank_tokens = self.world.per_rank(real_tokens)
            loss = self.world.sums([loss])[0]  # the step's loss over every rank's rows: all ranks decide alike
            real_tokens = int(sum(rank_tokens))
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(
                    self.params, self.cfg.train.max_grad_norm if self.cfg.train.max_grad_norm > 0 else float("inf")
                )
            )
            lr = self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0].get("lt_scale", 1.0)  # base lr
            if math.isfinite(loss) and math.isfinite(grad_norm):
                self.optimizer.step()
                st.nonfinite_in_row = 0
            else:
                self._nonfinite(step_rows, loss, grad_norm, lr)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            st.step += 1
            st.micro_step = 0
            st.row_offset += len(step_rows)
            st.tokens_seen += real_tokens
            st.losses.append(loss)
            elapsed = time.monotonic() - start
            seconds = max(1e-9, time.monotonic() - t0)
            self.emit(
                StepMetrics(
                    step=st.step,
                    total_steps=self.total_steps,
                    epoch=st.epoch,
                    loss=loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens_per_s=real_tokens / seconds,
                    tokens_seen=st.tokens_seen,
                    peak_memory_bytes=self.peak_memory(),
                    eta_s=elapsed / (st.step - start_step) * (self.total_steps - st.step),
                    world_size=self.world.size,
                    rank_tokens_per_s=[round(t / seconds, 1) for t in rank_tokens] if self.world.distributed else [],
                )
            )
            if self.stop.agree(self.world):
                self.save_checkpoint()
                return "interrupted"
            evaluated = self._maybe_eval()
            if self.stop.agree(self.world):  # it arrived during the evaluation, which was abandoned
                self.save_checkpoint()
                return "interrupted"
            if evaluated and self._should_stop_early():
                return "stopped_early"
            due = st.step % self.cfg.train.save_every == 0 and st.step < self.total_steps
            if due and st.nonfinite_in_row == 0:  # never checkpoint in the middle of a divergence
                self.save_checkpoint()
                if self.stop.agree(self.world):  # it arrived during the save, which completed first
                    return "interrupted"
        return "finished"

    def _accumulate(self, step_rows) -> tuple[float, int]:
        """Forward and backward over this rank's micro-batches of the step; returns (its share of the step
        loss, its real tokens). The loss is normalised by the target tokens of the whole step, all ranks'."""
        import torch

        st, world = self.state, self.world
        targets = sum(n_targets(r.labels) for r in step_rows)
        mine = world.shard(step_rows)
        # Every rank runs as many micro-batches as the rank with the most rows (an empty one runs a row at weight
        # 0), so the ranks' collectives (DDP's bucket rebuild in a forward, the exchange, ours) line up one to one.
        most = -(-len(step_rows) // world.size)
        micros = [mine[i : i + st.micro_batch] for i in range(0, max(1, most), st.micro_batch)]
        loss_sum, real, oom = 0.0, 0, False
        for k, micro in enumerate(micros):
            last = k == len(micros) - 1
            if last and world.distributed:  # agreed before anyone enters the all-reduce
                short = [r for r, hit in enumerate(world.per_rank(oom)) if hit]
                if short:
                    raise _OOMBeforeExchange(short)
            if oom:
                continue
            try:
                loss = self._micro_step(micro or step_rows[:1], targets, sync=last, weight=1.0 if micro else 0.0)
            except torch.OutOfMemoryError:
                if not world.distributed:
                    raise
                if last:  # the others are in (or entering) DDP's all-reduce, which cannot be taken back
                    raise self._oom_error(step_rows) from None
                oom = True
                continue
            except RuntimeError as exc:
                if world.distributed and is_collective_failure(exc):
                    raise lost(exc) from None
                raise
            loss_sum += loss
            real += sum(len(r.input_ids) for r in micro)
            st.micro_step += 1
        return loss_sum, real

    def _micro_step(self, micro, targets: int, *, sync: bool, weight: float) -> float:
        """One micro-batch's forward and backward; the gradients are all-reduced when `sync` (data parallel)."""
        st = self.state
        if self.hooks.before_micro:
            self.hooks.before_micro(st.step, st.micro_batch)
        quiet = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
        with quiet:
            loss = self.ddp(micro, targets) if self.ddp is not None else self.micro_loss(micro, num_items=targets)
            oom_point("train.micro")  # LOCALTUNE_FAULT=train.micro@N:oom, after the forward as a real one would be
            loss = loss * weight if weight != 1.0 else loss
            if nan_point("train.loss"):  # LOCALTUNE_FAULT=train.loss@N:nan, the fault tests' divergence
                loss = loss * float("nan")
            if self.hooks.loss:
                loss = self.hooks.loss(st.step, st.micro_step, loss)
            # DDP averages the ranks' gradients; the step's gradient is their sum
            (loss * self.world.size if self.world.distributed else loss).backward()
        return float(loss.detach())

    def _nonfinite(self, step_rows, loss: float, grad_norm: float, lr: float) -> None:
        st = self.state
        st.nonfinite_in_row += 1
        wheres = sorted({w for r in step_rows for w in getattr(r, "wheres", [r.where])})
        what = f"loss {loss}, gradient norm {grad_norm}"
        self.emit(
            Warning(
                f"step {st.step + 1}: non-finite {what}; step skipped "
                f"({st.nonfinite_in_row} in a row; rows {', '.join(wheres[:5])})"
            )
        )
        if st.nonfinite_in_row >= MAX_NONFINITE_IN_A_ROW:
            raise TrainingError(
                f"{MAX_NONFINITE_IN_A_ROW} steps in a row had a non-finite loss or gradient; the last at step "
                f"{st.step + 1} ({what}), learning rate {lr:.3g}, compute dtype {self.dtype}, rows "
                f"{', '.join(wheres[:10])}",
                hint="lower --lr, check those rows, or use precision fp32/bf16 instead of fp16; the last "
                "checkpoint (all finite) is kept",
                title="training diverged",
            )

    def _diagnosis(self, step_rows, ranks: list[int] | None = None, peak: int | None = None) -> str:
        st = self.state
        seq = max(len(r.input_ids) for r in step_rows)
        where = f" on rank {', '.join(map(str, ranks))}" if ranks else ""
        peak = self.peak_memory() if peak is None else peak
        return (
            f"out of GPU memory{where} at step {st.step + 1}: micro-batch {st.micro_batch}, longest sequence "
            f"{seq} tokens, peak {peak / 1024**3:.2f} GiB. Suggestions, in order: a smaller micro-batch "
            f"(--micro-batch auto does this), a shorter --max-seq-len, gradient checkpointing on, "
            f"a lower LoRA rank, 4-bit loading; `localtune plan` estimates each"
        )

    def _oom_error(self, step_rows) -> TrainingError:
        """This rank ran out of memory in its last micro-batch of the step, when the others may be in DDP's
        all-reduce already: it cannot be recovered together, so the run stops. Shown by this rank itself."""
        exc = TrainingError(
            f"{self._diagnosis(step_rows, [self.world.rank])}; it happened in the micro-batch whose gradients the "
            "ranks exchange, which cannot be undone, so every rank stops",
            hint="resume with a smaller --micro-batch, or more --grad-accum steps of fewer rows (the last checkpoint "
            "is intact); an out-of-memory in an earlier micro-batch of a step is recovered by all ranks together",
            title="out of memory",
        )
        exc.own_rank = True  # the other ranks only lose contact: this rank's message is the one to show
        return exc

    def _recover_from_oom(self, step_rows, ranks: list[int]) -> None:
        """Every rank together (the step's OOM was agreed): halve the micro-batch, back to the last checkpoint.
        ranks: those that ran out (data parallel); the peak reported is the highest of any rank's."""
        import torch

        st = self.state
        peak = int(max(self.world.per_rank(self.peak_memory()))) if self.world.distributed else None
        diagnosis = self._diagnosis(step_rows, ranks, peak)
        self.optimizer.zero_grad(set_to_none=True)
        if self.device == "cuda":
            torch.cuda.empty_cache()
        if not self.auto_micro_batch or st.micro_batch == 1:
            raise TrainingError(diagnosis, hint="see the suggestions above", title="out of memory")
        micro, accum = st.micro_batch // 2, st.grad_accum * 2
        self.emit(
            Warning(
                f"{diagnosis}. Retrying with micro-batch {micro} and {accum} accumulation steps from "
                f"{self.last_checkpoint or 'the start'}"
            )
        )
        snap = None
        if self.world.main:  # only rank 0 has the run folder; the others get what it read
            latest = self.store.latest_valid() if self.last_checkpoint else None
            snap = self.store.load(*latest, self._read_adapter) if latest else self.start_snapshot
            if self.world.distributed:  # pickled tensors come back on their device: rank 0's GPU for every rank
                snap = replace(snap, adapter={k: v.cpu() for k, v in snap.adapter.items()})
        self.restore(self.world.broadcast(snap))
        self.state.micro_batch, self.state.grad_accum = micro, accum

    @staticmethod
    def _read_adapter(folder) -> dict:
        from safetensors.torch import load_file

        whole = folder / TRAINABLE_FILE
        return load_file(whole if whole.is_file() else folder / "adapter_model.safetensors")

    def _maybe_eval(self) -> bool:
        every = self.cfg.train.eval_every
        due = (every > 0 and self.state.step % every == 0) or self.state.step == self.total_steps
        if not due or not self.val_rows:
            return False
        loss = self.evaluate()
        if loss is None:
            return False
        self.state.eval_losses.append([self.state.step, loss])
        self.emit(EvalResult(self.state.step, loss, len(self.val_rows)))
        return True

    def evaluate(self) -> float | None:
        """Mean loss per target token on the validation rows; None if a stop signal cut it short."""
        import torch

        self.model.eval()
        total, count, abandoned = 0.0, 0, False
        mine = self.world.shard(self.val_rows)  # each rank its share; the sums are agreed below
        with torch.no_grad():
            for i in range(0, len(mine), self.state.micro_batch):
                signal_point("train.eval")
                if self.stop.signal:
                    abandoned = True
                    break
                micro = mine[i : i + self.state.micro_batch]
                n = sum(n_targets(r.labels) for r in micro)
                total += float(self.micro_loss(micro, num_items=n)) * n
                count += n
        self.model.train()
        total, count, abandoned = self.world.sums([total, count, float(abandoned)])
        return None if abandoned else total / max(1, count)

    def _should_stop_early(self) -> bool:
        st, patience = self.state, self.cfg.train.early_stopping_patience
        loss = st.eval_losses[-1][1]
        if st.best_eval is None or loss < st.best_eval:
            st.best_eval, st.evals_since_best = loss, 0
            return False
        st.evals_since_best += 1
        return patience > 0 and st.evals_since_best >= patience

    def peak_memory(self) -> int:
        import torch

        if self.device == "cuda":
            return torch.cuda.max_memory_allocated()
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        except ImportError:
            return 0
