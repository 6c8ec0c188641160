"""1 rank against N ranks of data-parallel training: throughput and scaling efficiency.

Each case is `localtune train` in a fresh process on the same data, model and rows per step: one
process with micro-batch M x (A x N) accumulation, and `--gpus N` with M x A on each rank, so both
train the same rows, step by step. From each run's `step` events (the first `--warmup` steps left out:
loading, allocator warm-up) it reports seconds per step, tokens/s in total and per rank, and

    scaling efficiency = (tokens/s of N ranks) / (N x tokens/s of 1 rank)

1.0 is perfect scaling. On the CPU (`--device cpu`, gloo) N ranks share the machine's cores (each rank
gets cores / N threads), so the figure there measures the overhead of the ranks' exchange more than a
speed-up; on a machine with N GPUs (`--device cuda`, NCCL) it is the real scaling. The final losses of
both runs are reported too: they agree to float rounding (the same rows per step; LoRA dropout is off,
since its masks are drawn per rank).

Writes bench/results/data-parallel-<device>-<timestamp>.json and .md.

Run as:  python -m bench.data_parallel                                  # CPU: tiny llama, 1 vs 2 gloo ranks
         python -m bench.data_parallel --model smollm2 --steps 12       # the demo model on the CPU
         python -m bench.data_parallel --device cuda --model Qwen/Qwen2.5-1.5B-Instruct --ranks 2,4 --quant
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def model_path(name: str, work: Path) -> str:
    if name == "tiny":
        from localtune.model.tiny import build_tiny_model

        return str(build_tiny_model("llama", work / "tiny-llama"))
    return name


def run_case(model: str, data: Path, out: Path, ranks: int, args) -> dict:
    from localtune.events import read_events

    accum = args.accum * (1 if ranks > 1 else args.rows_of)
    cmd = [sys.executable, "-m", "localtune", "train", "--model", model, "--data", str(data), "--out", str(out)]
    cmd += ["--max-steps", str(args.steps), "--micro-batch", str(args.micro), "--grad-accum", str(accum)]
    cmd += ["--device", args.device, "--save-every", str(10**6), "--seed", "7", "--lr", "1e-3", "--lora-dropout", "0"]
    cmd += ["--quant" if args.quant else "--no-quant"]
    if ranks > 1:
        cmd += ["--gpus", str(ranks)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return {"ranks": ranks, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    steps = [e for e in read_events(out / "events.jsonl") if e.kind == "step"][args.warmup :]
    times = [b.time - a.time for a, b in zip(steps, steps[1:])]
    tokens = [e.tokens_per_s for e in steps[1:]]
    per_rank = [statistics.median(r) for r in zip(*(e.rank_tokens_per_s for e in steps[1:]))] if ranks > 1 else []
    return {
        "ranks": ranks,
        "s_per_step": round(statistics.median(times), 3) if times else None,
        "tokens_per_s": round(statistics.median(tokens), 1) if tokens else None,
        "tokens_per_s_per_rank": [round(t, 1) for t in per_rank],
        "final_loss": json.loads((out / "run.json").read_text())["final_loss"],
        "wall_s": round(wall, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny (a tiny random llama), smollm2, a hub id or a folder")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--ranks", default="2", help="rank counts to compare with 1, comma-separated")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--micro", type=int, default=2, help="micro-batch per rank")
    p.add_argument("--accum", type=int, default=2, help="accumulation steps per rank")
    p.add_argument("--quant", action="store_true", help="4-bit base (QLoRA); needs bitsandbytes")
    args = p.parse_args(argv)
    from localtune.demo import DEMO_DATA

    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        work = Path(tmp)
        model = model_path(args.model, work)
        for n in [int(x) for x in args.ranks.split(",")]:
            args.rows_of = n  # one process accumulates n times as much: the same rows per step
            one = run_case(model, DEMO_DATA, work / f"one-{n}", 1, args)
            many = run_case(model, DEMO_DATA, work / f"ranks-{n}", n, args)
            eff = None
            if one.get("tokens_per_s") and many.get("tokens_per_s"):
                eff = round(many["tokens_per_s"] / (n * one["tokens_per_s"]), 3)
            rows.append({"ranks": n, "one": one, "many": many, "scaling_efficiency": eff})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = f"data-parallel-{args.device}-{stamp}"
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    lines = [
        f"# Data parallel: 1 rank vs N ({args.device}, model {args.model}, micro-batch {args.micro} x {args.accum} "
        f"per rank, {args.steps} steps, cores {os.cpu_count()})",
        "",
        "| ranks | s/step (1) | s/step (N) | tok/s (1) | tok/s (N) | per rank | efficiency | loss (1) | loss (N) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        o, m = r["one"], r["many"]
        lines.append(
            f"| {r['ranks']} | {o.get('s_per_step')} | {m.get('s_per_step')} | {o.get('tokens_per_s')} | "
            f"{m.get('tokens_per_s')} | {', '.join(map(str, m.get('tokens_per_s_per_rank') or [])) or '-'} | "
            f"{r['scaling_efficiency']} | {o.get('final_loss')} | {m.get('final_loss')} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
