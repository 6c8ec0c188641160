"""The figures of a run (tokens/s, step time, peak memory, FLOPs) and of a case (medians, MFU, ratios, planner).

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

import statistics

from bench import flops

from .cases import STACKS, Case
from .prepare import Prepared


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
    return {
        "status": "ok",
        "tokens_per_s": timed_tokens / seconds,
        "step_s": statistics.median(dts),
        # less sensitive to a step that lost its time slice on a shared machine
        "tokens_per_s_median_step": statistics.median(tokens[k] / dts[k - w] for k in range(w, len(steps))),
        "step_times_s": [round(d, 4) for d in dts],
        "tokens_per_step": tokens,
        "tokens_match": tokens == expected,
        "first_loss": steps[0].get("loss"),
        "peak_memory_bytes": result["peak_memory_bytes"],
        "model_flops_per_s": model_flops / seconds,
        "hardware_flops_per_s": hw_flops / seconds,
        "load_s": result.get("load_seconds"),
        "process_s": result["process_s"],
        "attn_implementation": result.get("attn_implementation"),
        "param_bytes": result.get("param_bytes"),
        "params_trainable": result.get("params_trainable"),
        "optimizer": result.get("optimizer"),
        "warnings": result.get("warnings"),
        "data_fingerprint": result.get("data_fingerprint"),
    }


def median_of(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get("status") == "ok" and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(case_result: dict, case: Case, shape, peak_flops: float | None, planner) -> None:
    """Per stack: medians over runs, MFU, the planner's estimate; then the localtune/reference ratios."""
    summary = {}
    for stack in STACKS:
        runs = case_result["runs"][stack]
        s = {
            k: median_of(runs, k)
            for k in (
                "tokens_per_s",
                "step_s",
                "peak_memory_bytes",
                "model_flops_per_s",
                "hardware_flops_per_s",
                "first_loss",
            )
        }
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
        summary["memory_ratio"] = statistics.median(
            a["peak_memory_bytes"] / b["peak_memory_bytes"] for a, b in ok_pairs
        )
    all_runs = [r for stack in STACKS for r in case_result["runs"][stack] + case_result["warmup_runs"][stack]]
    summary["tokens_match"] = all(r.get("tokens_match", True) for r in all_runs)
    fps = {r.get("data_fingerprint") for r in all_runs if r.get("data_fingerprint")}
    summary["fingerprint_match"] = None if case_result["fingerprint"] is None else fps == {case_result["fingerprint"]}
    if planner is not None:
        est = planner.total
        measured = summary["localtune"]["peak_memory_bytes"]
        summary["planner"] = {
            "estimate_bytes": est,
            "parts": planner.parts,
            "error_pct": 100 * (est - measured) / measured if measured else None,
        }
    case_result["summary"] = summary


def peak_flops(args, env: dict, case: Case) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.dry_run:
        return 1e12  # a pretend peak, so the MFU arithmetic runs end to end
    if case.device != "cuda":
        return None
    return flops.gpu_peak_flops(env.get("software", {}).get("gpu"))
