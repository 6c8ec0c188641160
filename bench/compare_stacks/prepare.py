"""What both stacks train on for one case: identical token rows, in the order localtune's loop takes them.

`demo` rows come from localtune's own pipeline, `synthetic` rows are random ids of realistic lengths.
Both are written to files the runs read (bench.stack_run), with the run spec both stacks share.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from bench.stack_run import localtune_config

from .cases import Case

IGNORE = -100


def synthetic_rows(n: int, seq_len: int, vocab: int, seed: int, *, full: bool = False) -> list[tuple[list, list]]:
    """Random token rows: lognormal lengths (mean ~40% of seq_len, clipped to it), 30% prompt (no loss).

    full: every row exactly seq_len tokens, all trained (the longest-sequence search).
    """
    rng = random.Random(seed)
    sigma = 0.6
    mu = math.log(0.4 * seq_len) - sigma**2 / 2  # lognormal mean exp(mu + sigma^2/2) = 0.4 * seq_len
    rows = []
    for _ in range(n):
        length = seq_len if full else max(min(16, seq_len), min(seq_len, round(rng.lognormvariate(mu, sigma))))
        ids = [rng.randrange(vocab) for _ in range(length)]
        prompt = 0 if full else int(0.3 * length)
        rows.append((ids, [IGNORE] * prompt + ids[prompt:]))
    return rows


def step_order(n_rows: int, rows_per_step: int, steps: int, seed: int) -> list[list[int]]:
    """The rows localtune's loop takes at each step (its epoch_order, never across an epoch)."""
    from localtune.train.loop import epoch_order

    out, epoch, offset = [], 0, 0
    for _ in range(steps):
        if offset >= n_rows:
            epoch, offset = epoch + 1, 0
        chunk = epoch_order(n_rows, seed, epoch)[offset : offset + rows_per_step]
        if len(chunk) != rows_per_step:
            raise SystemExit(
                f"{n_rows} training rows do not split into full steps of {rows_per_step} rows; the "
                "reference would batch the epoch's last step differently. Change --steps or the batch."
            )
        out.append(chunk)
        offset += len(chunk)
    return out


def write_rows(path: Path, rows) -> str:
    path.write_text(json.dumps({"rows": [[list(ids), list(labels)] for ids, labels in rows]}))
    return str(path)


def base_spec(case: Case, model_dir: Path, args) -> dict:
    """The run spec both stacks share (bench/stack_run.py reads it)."""
    cpu = case.device == "cpu"
    return {
        "model_dir": str(model_dir),
        "mode": case.mode,
        "device": case.device,
        "precision": case.precision,
        "seq_len": case.seq_len,
        "micro_batch": case.micro_batch,
        "grad_accum": case.grad_accum,
        "steps": case.steps,
        "lr": args.lr,
        "rank": args.rank,
        "alpha": args.alpha,
        "dropout": args.dropout,
        "targets": ["all-linear"],
        "seed": args.seed,
        "warmup_ratio": 0.03,
        "data_spec": "demo",
        # bitsandbytes' 8-bit optimizers need CUDA; localtune falls back to AdamW there, so both use AdamW
        "optimizer": "adamw" if cpu else "paged_adamw_8bit",
        "reference_optim": "adamw_torch" if cpu else "paged_adamw_8bit",
    }


@dataclass
class Prepared:
    """What both stacks train on for one case."""

    spec: dict  # the run spec shared by both stacks (without stack/run_dir)
    step_lengths: list[list[int]]  # real tokens of every row of every step
    fingerprint: str | None  # localtune's data fingerprint of its training rows (demo data)


def prepare_case(case: Case, model_dir: Path, args, work: Path, index: int) -> Prepared:
    from localtune.train.run import data_fingerprint

    spec = base_spec(case, model_dir, args)
    if case.data == "demo":
        from localtune.data.dataset import prepare_data
        from localtune.model.loading import resolve_base

        cfg = localtune_config({**spec, "stack": "localtune"})
        prepared = prepare_data(cfg.data, resolve_base(str(model_dir)).tokenizer(), seed=args.seed)
        train = [(r.input_ids, r.labels) for r in prepared.train]
        fingerprint = data_fingerprint(prepared.train)
    else:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(model_dir).vocab_size
        train = synthetic_rows(case.steps * case.rows_per_step, case.seq_len, vocab, args.seed + case.seq_len)
        spec["train_rows_file"] = write_rows(work / f"case{index}-train-rows.json", train)
        fingerprint = None
    order = step_order(len(train), case.rows_per_step, case.steps, args.seed)
    spec["step_rows_file"] = write_rows(work / f"case{index}-step-rows.json", [train[i] for s in order for i in s])
    return Prepared(spec, [[len(train[i][0]) for i in s] for s in order], fingerprint)
