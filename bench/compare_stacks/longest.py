"""The longest sequence each stack trains at batch 1 (--longest), and the planner's prediction of it.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .cases import GIB, STACKS, Case
from .child import run_child
from .measure import measure
from .prepare import Prepared, base_spec, step_order, synthetic_rows, write_rows


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


def run_longest(
    args, model: str, model_dir: Path, shape, work: Path, device: str, precision: str, gpu_memory: int | None
) -> dict:
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
            spec = {
                **base_spec(case, model_dir, args),
                "stack": stack,
                "train_rows_file": write_rows(work / f"longest-{s}-train.json", rows),
                "step_rows_file": write_rows(work / f"longest-{s}-steps.json", [rows[i] for st in order for i in st]),
                "run_dir": str(work / f"run-longest-{stack}-{s}"),
            }
            result = run_child(spec, work, f"longest-{stack}-{s}", args.timeout)
            shutil.rmtree(spec["run_dir"], ignore_errors=True)
            m = measure(result, Prepared(spec, [[s]] * 2, None), case, shape)
            attempts[s] = {
                "status": result["status"],
                "peak_memory_bytes": result.get("peak_memory_bytes"),
                "tokens_per_s": m.get("tokens_per_s"),
                "seconds": result["process_s"],
            }
            print(
                f"  longest {stack:<9} seq {s:>6}: {result['status']}"
                + (f", peak {result['peak_memory_bytes'] / GIB:.2f} GiB" if result.get("peak_memory_bytes") else ""),
                flush=True,
            )
            if result["status"] == "error":  # not memory: shown in the table, and the search treats it as a failure
                attempts[s]["error"] = result.get("error")
            return result["status"] == "ok"

        found = longest_search(trial, start=args.longest_start, cap=cap, resolution=args.longest_resolution)
        out[stack] = {**found, "attempts": attempts}
    if gpu_memory:
        out["planner_longest"] = planner_longest(
            shape, gpu_memory, rank=args.rank, cap=cap, resolution=args.longest_resolution
        )
    return out
