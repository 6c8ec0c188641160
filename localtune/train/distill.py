"""Distillation: a fresh LoRA on the same base trained to reproduce a finished run's next-token distributions.

For methods whose result has no GGUF form (LLaMA-Adapter) or only a localtune-specific one (prompt, prefix
tuning), the student is an ordinary LoRA run folder: `localtune export` merges and exports it, `localtune
chat` talks to it, like any LoRA run.

- Teacher: the run's base, unquantized (fp32 on the CPU), with the run's adapter (model/run_model.py).
- Student: a new LoRA (the run's adapter.r, alpha and target modules) on a second unquantized copy of the
  base, so what it learns is what the merge into that base reproduces. Two copies of the base are in
  memory while distilling.
- Data: the run's own training rows, rendered with the template the run trained with (its
  chat_template.jinja), one row at a time (no padding: prompt-learning teachers see rows as in training).
- Loss: KL(teacher || student) of the next-token distributions, temperature 1, at EVERY position of the
  rendered row (prompt, template tokens and answer, not only the trained answer tokens): the student should
  behave like the teacher on the prompt side too, where the adapter also changed the model. The loss of a
  step is the sum over its rows' positions divided by their number (nats per token).
- No checkpoints: an interrupted distillation writes nothing and starts again from step 0.

Run as:  localtune distill RUN_DIR [--out DIR] [--steps N] [--lr LR]
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from localtune.errors import UsageError
from localtune.events import (
    DataPrepared,
    Emitter,
    EvalResult,
    Finished,
    Interrupted,
    JsonlSink,
    ModelLoaded,
    RunStarted,
    StepMetrics,
)
from localtune.files import atomic_folder, write_text
from localtune.runs.layout import FINISHED, INTERRUPTED, DataInfo, RunDir, RunInfo
from localtune.runs.lock import run_lock

DEFAULT_FOLDER = "distilled"  # RUN_DIR/distilled/ unless --out says otherwise
MIN_STEPS = 32


@dataclass
class DistillResult:
    status: str  # finished | interrupted
    exit_code: int
    out_dir: Path
    steps: int = 0
    final_kl: float | None = None  # the last step's KL(teacher || student), nats per token
    eval_kl: float | None = None  # on the run's validation rows, when it has any


def default_out(run_dir) -> Path:
    return Path(run_dir) / DEFAULT_FOLDER


def kl_sum(teacher_logits, student_logits):
    """Sum over positions of KL(teacher || student) of the softmax distributions (temperature 1)."""
    from torch.nn.functional import log_softmax

    t = log_softmax(teacher_logits.float(), dim=-1)
    s = log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum()


def distill_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    steps: int = 0,
    lr: float = 0.0,
    sinks=(),
    device: str | None = None,
) -> DistillResult:
    """Distil RUN_DIR's adapter into a LoRA run folder at out_dir (default RUN_DIR/distilled).

    steps: optimizer steps (0: as many as the run took, at least MIN_STEPS); lr: 0 picks LoRA's recipe rate
    for the model's size (train/recipe.py)."""
    from localtune.config import load_config
    from localtune.model.run_model import require_adapter

    run = require_adapter(run_dir, "distil")
    cfg = load_config(run.config)
    if cfg.adapter.method == "lora":
        raise UsageError(
            f"{run.path} trained a LoRA already: distilling it into another LoRA would only copy it",
            hint=f"export it directly: localtune export {run.path}",
            title="nothing to distil",
        )
    out = RunDir(out_dir or default_out(run.path))
    if out.path.resolve() == run.path.resolve():
        raise UsageError("the distilled run needs its own folder", hint=f"--out {default_out(run.path)}")
    with run_lock(out.path, "distill"):
        out.recover()
        if out.has_adapter:
            raise UsageError(
                f"{out.path} already holds a distilled run",
                hint="delete that folder to distil again, or choose another --out",
                title="run folder in use",
            )
        return _distill(run, out, steps, lr, sinks, device)


def _student_config(run: RunDir, steps: int, lr: float, device: str):
    """The student's config: the run's, as a LoRA on the unquantized base (LoRA's own rank and targets unless the
    run was LoRA-shaped already, e.g. DoRA)."""
    from localtune.config import knob, load_config
    from localtune.methods import method

    scfg = load_config(run.config)
    if not method(scfg.adapter.method).lora_family:  # another method's rank or targets mean nothing to LoRA
        for key in ("adapter.r", "adapter.alpha", "adapter.target_modules", "adapter.use_rslora"):
            scfg.set(key, knob(key).default, "distill")
    for key, value in (
        ("adapter.method", "lora"),
        ("train.load_in_4bit", False),  # the merge goes into the unquantized base: learn on that one
        ("data.packing", False),
        ("train.device", device),
        ("train.max_steps", steps),
        ("train.lr", lr),
    ):
        scfg.set(key, value, "distill")
    return scfg


def _distill(run: RunDir, out: RunDir, steps: int, lr: float, sinks, device) -> DistillResult:
    import torch

    from localtune.data.dataset import prepare_data
    from localtune.model.loading import load_for_training, memory_in_use
    from localtune.model.run_model import load_run_model, row_logits
    from localtune.planner import Shape
    from localtune.train.loop import StopFlag, epoch_order, lr_lambda
    from localtune.train.recipe import choose_lr, lora_scale

    started = time.monotonic()
    out.events.unlink(missing_ok=True)  # a previous, interrupted distillation's log
    emit = Emitter(JsonlSink(out.events), *sinks)
    teacher = load_run_model(run.path, device=device)
    cfg, base = teacher.cfg, teacher.base
    info = run.read_info() or RunInfo()
    if lr <= 0:
        from transformers import AutoConfig

        shape = Shape.from_config(AutoConfig.from_pretrained(base.folder))
        a = cfg.adapter
        lr, _ = choose_lr(shape.linear_params() + shape.embedding_params(), lora_scale(a.r, a.alpha, a.use_rslora))
    steps = steps if steps > 0 else max(MIN_STEPS, info.steps)
    scfg = _student_config(run, steps, lr, teacher.device)
    scfg.save(out.config)
    emit(RunStarted(str(out.path), scfg.to_dict()))
    data_cfg = scfg.data
    prepared = prepare_data(data_cfg, teacher.tokenizer, seed=cfg.train.seed, chat_template=teacher.template)
    rows, val = prepared.train, prepared.val
    ts = prepared.train_stats
    emit(DataPrepared(len(rows), len(val), ts.total_tokens, ts.total_tokens, 0, ts.truncated, str(run.chat_template)))
    write_text(out.chat_template, teacher.template or prepared.template.text)

    lm = load_for_training(scfg, base)
    student = lm.model
    params = [p for p in student.parameters() if p.requires_grad]
    in_memory = memory_in_use(student, lm.device) + memory_in_use(teacher.model, lm.device)
    emit(
        ModelLoaded(
            base.spec,
            base.architecture,
            lm.device,
            lm.dtype,
            False,
            sum(p.numel() for p in student.parameters()),
            sum(p.numel() for p in params),
            in_memory,
            round(lm.seconds, 2),
            lm.kernels,
        )
    )
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=scfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(scfg, steps))
    per_step = max(1, scfg.train.micro_batch_size) * max(1, scfg.train.grad_accum)
    dev = student.device
    stop = StopFlag()
    stop.install()
    losses: list[float] = []
    epoch, offset, seen, step = 0, 0, 0, 0
    order = epoch_order(len(rows), cfg.train.seed, 0)
    loop_start = time.monotonic()
    student.train()
    try:
        while step < steps:
            if offset >= len(rows):
                epoch, offset = epoch + 1, 0
                order = epoch_order(len(rows), cfg.train.seed, epoch)
            batch = [rows[i].input_ids for i in order[offset : offset + per_step]]
            n_tokens = sum(len(ids) for ids in batch)
            t0, total = time.monotonic(), 0.0
            for ids in batch:  # one row at a time, the loss scaled so the step's gradient is the token mean
                with torch.no_grad():
                    target = row_logits(teacher.model, ids, dev)
                loss = kl_sum(target, row_logits(student, ids, dev)) / n_tokens
                loss.backward()
                total += loss.item()
            limit = scfg.train.max_grad_norm if scfg.train.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
            current_lr = scheduler.get_last_lr()[0]
            if math.isfinite(total) and math.isfinite(grad_norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step, offset, seen = step + 1, offset + len(batch), seen + n_tokens
            losses.append(total)
            elapsed = time.monotonic() - loop_start
            emit(
                StepMetrics(
                    step=step,
                    total_steps=steps,
                    epoch=epoch,
                    loss=total,
                    lr=current_lr,
                    grad_norm=grad_norm,
                    tokens_per_s=n_tokens / max(1e-9, time.monotonic() - t0),
                    tokens_seen=seen,
                    peak_memory_bytes=in_memory,
                    eta_s=elapsed / step * (steps - step),
                )
            )
            if stop.signal and step < steps:
                again = f"localtune distill {run.path} --out {out.path}"
                emit(Interrupted(step, stop.signal, None, f"nothing was saved (no checkpoints): {again}"))
                return DistillResult(INTERRUPTED, stop.exit_code, out.path, step)
    finally:
        stop.restore()
    student.eval()
    eval_kl = None
    if val:
        with torch.no_grad():
            kl = sum(
                float(kl_sum(row_logits(teacher.model, r.input_ids, dev), row_logits(student, r.input_ids, dev)))
                for r in val
            )
        eval_kl = kl / sum(len(r.input_ids) for r in val)
        emit(EvalResult(step, eval_kl, len(val)))
    with atomic_folder(out.adapter) as tmp:
        student.save_pretrained(tmp)
    seconds = round(time.monotonic() - started, 2)
    record = RunInfo(
        status=FINISHED,
        started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - seconds)),
        base=info.base,
        data=DataInfo(info.data.fingerprint if info.data else "", len(rows), len(val)),
        device=lm.device,
        dtype=lm.dtype,
        method="lora",
        micro_batch=1,
        grad_accum=per_step,
        steps=step,
        tokens_seen=seen,
        final_loss=losses[-1] if losses else None,
        losses=losses,
        eval_loss=eval_kl,
        seconds=seconds,
        adapter=str(out.adapter),
        extra={"distilled_from": str(run.path), "teacher_method": cfg.adapter.method},
    )
    out.save_info(record)
    emit(Finished(step, record.final_loss, eval_kl, str(out.adapter), seconds))
    return DistillResult(FINISHED, 0, out.path, step, record.final_loss, eval_kl)
