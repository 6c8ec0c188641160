"""The whole comparison: for every case, warm-up runs, then alternating localtune/reference runs, then a summary.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

import os
import shutil
import statistics
from dataclasses import asdict
from pathlib import Path

from .cases import GIB, STACKS, Case
from .child import run_child
from .measure import measure, peak_flops, summarize
from .models import Models
from .prepare import prepare_case


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
        cr = {
            "case": asdict(case),
            "fingerprint": prepared.fingerprint,
            "step_lengths": prepared.step_lengths,
            "mean_row": statistics.fmean(lengths),
            "longest_row": max(lengths),
            "runs": {s: [] for s in STACKS},
            "warmup_runs": {s: [] for s in STACKS},
        }
        schedule = []
        if (case.model, case.mode) not in warmed:
            schedule += [(stack, True) for _ in range(args.warmup_runs) for stack in STACKS]
            warmed.add((case.model, case.mode))
        schedule += [(stack, False) for _ in range(args.repeats) for stack in STACKS]
        print(
            f"== {case.label}: {case.rows_per_step} rows/step (mean {cr['mean_row']:.0f}, longest "
            f"{cr['longest_row']} tokens), {case.steps} steps, {case.warmup_steps} untimed",
            flush=True,
        )
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
                print(
                    f"  {'warm-up' if warm else 'run'} {stack:<9} {m['tokens_per_s']:9.1f} tok/s  step "
                    f"{m['step_s']:.3f}s  peak {m['peak_memory_bytes'] / GIB:.2f} GiB  ({result['process_s']:.0f}s)"
                    + ("" if m["tokens_match"] else "  TOKENS DIFFER"),
                    flush=True,
                )
        peak = peak_flops(args, env, case)
        planner = None
        if case.device == "cuda" or args.dry_run:
            planner = estimate(
                shape,
                micro_batch=case.micro_batch,
                seq_len=cr["longest_row"],
                rank=args.rank,
                quantized=case.mode == "qlora",
                checkpointing=True,
                optimizer=prepared.spec["optimizer"],
                weight_bytes=2 if case.device == "cuda" else 4,
            )
        summarize(cr, case, shape, peak, planner)
        sm = cr["summary"]
        if "speed_ratio" in sm:
            print(
                f"  localtune/reference: speed {sm['speed_ratio']:.2f}x, peak memory {sm['memory_ratio']:.2f}x; "
                f"identical tokens per step: {'yes' if sm['tokens_match'] else 'NO'}",
                flush=True,
            )
        results.append(cr)
    return results
