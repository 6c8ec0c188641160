"""The command line of `python -m bench.compare_stacks`: the presets' defaults, then cases, runs and the report.

Run as:  python -m bench.compare_stacks --preset cpu [--models tiny] [--repeats 2] [--threads 1]
         python -m bench.compare_stacks --help      # every option; the package docstring explains the method
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import RESULTS_DIR
from . import __doc__ as package_doc
from .cases import cpu_cases, gpu_cases, override
from .child import CHILD_ENV
from .comparison import run_cases
from .dry_run import dry_run_checks
from .host import host_environment
from .longest import run_longest
from .models import Models
from .report import rewrite_report, write_report


def parse_args(argv=None):
    # prog: under -m, argparse would name the program after sys.argv[0], i.e. "__main__.py"
    ap = argparse.ArgumentParser(
        prog="python -m bench.compare_stacks",
        description=package_doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", choices=("cpu", "gpu"), required=True)
    ap.add_argument("--models", help="comma-separated; cpu: tiny,smollm2; gpu: llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--modes", help="qlora and/or lora (cpu default both, gpu default qlora)")
    ap.add_argument(
        "--seq-lens",
        help="cpu: the tiny model's sweep for the plot (default 128,256,512; 'none' "
        "skips it); gpu: default 512,2048,8192",
    )
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
    ap.add_argument(
        "--longest",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gpu: search the longest sequence each stack trains at batch 1 (default on)",
    )
    ap.add_argument("--longest-model", help="default llama-3.1-8b")
    ap.add_argument("--longest-start", type=int, default=8192)
    ap.add_argument("--longest-cap", type=int, default=131072)
    ap.add_argument("--longest-resolution", type=int, default=1024)
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense BF16 peak, for a card not in bench/flops.py")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="gpu: check the arithmetic and run the GPU code path on miniature shapes on the CPU; cpu: print the plan",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="CPU threads per run (OMP_NUM_THREADS); on a shared machine 1 "
        "avoids threads waiting on each other's time slices",
    )
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
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
    print(
        f"{len(cases)} case(s), {args.warmup_runs} warm-up run(s) per stack per model and mode, "
        f"{args.repeats} pair(s) per case",
        flush=True,
    )
    if args.preset == "cpu" and args.dry_run:
        print("\n".join(c.label for c in cases))
        return
    env = host_environment()
    env["threads"] = args.threads
    if not args.threads and env["load_avg_start"][0] >= 0.75 * env["usable_cores"]:
        print(
            f"warning: load average {env['load_avg_start'][0]:.1f} on {env['usable_cores']} cores; threads of a "
            "run will wait on each other's time slices and steps vary by 10x or more. --threads 1 keeps the "
            "figures stable on a shared machine",
            flush=True,
        )
    # absolute: every run starts at the repository root, and the spec files name paths under work
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="compare-stacks-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = Models(work, args.timeout)
    try:
        results = run_cases(cases, args, models, work, env)
        longest = []
        if args.longest:
            c = cases[0]
            longest.append(
                run_longest(
                    args,
                    args.longest_model,
                    models.folder(args.longest_model),
                    models.shape(args.longest_model),
                    work,
                    c.device,
                    c.precision,
                    env.get("software", {}).get("gpu_memory_bytes"),
                )
            )
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    env["load_avg_end"] = os.getloadavg()
    name = f"compare-{args.preset}{'-dryrun' if args.dry_run else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    report = {
        "preset": args.preset,
        "dry_run": args.dry_run,
        "started": started,
        "seconds": round(time.monotonic() - t0, 1),
        "command": " ".join(["python -m bench.compare_stacks", *(argv or sys.argv[1:])]),
        "environment": env,
        "settings": vars(args),
        "cases": results,
        "longest": longest,
    }
    out_dir = Path(args.out_dir)
    md = write_report(report, cases, args, out_dir, name)
    print("\n" + md)
    print(f"written: {out_dir / name}.json, .md, .svg")
