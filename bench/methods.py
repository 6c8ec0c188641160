"""Every adapter method on the same data: what it trains, what it costs, how well it does, where it runs.

For each method of localtune/methods.py (or `--methods a,b`), one run per model on the built-in demo data
(a validation split held out), the same steps, micro-batch and seed; the learning rate is the recipe's for
the method unless `--lr` is given. Then, unless `--no-eval`, the run is exported (`localtune export`) and
`localtune eval` scores the tuned GGUF on the held-out rows. One table row per (model, method):

- trainable parameters, seconds per optimizer step, peak memory (ru_maxrss on the CPU, the allocator's peak
  on CUDA; each run is a fresh process, so the peak is that run's), final validation loss (teacher-forced,
  in training), adapter size on disk;
- `localtune eval`'s metrics of the tuned GGUF on the held-out rows: loss, ROUGE-L, token F1;
- where the result runs (methods.py), and what failed, if anything (a row is never dropped).

Models: `tiny` (a tiny random llama, seconds per run: checks the machinery) and `smollm2` (the built-in
SmolLM2-135M-Instruct, minutes per run on a CPU). Writes bench/results/methods-<models>.json and .md.

Run as:  python -m bench.methods [--models tiny,smollm2] [--methods lora,ia3] [--steps 40] [--no-eval]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COLUMNS = (
    ("model", "model"),
    ("method", "method"),
    ("trainable", "trainable params"),
    ("s_per_step", "s/step"),
    ("peak_mib", "peak MiB"),
    ("eval_loss", "val loss"),
    ("gguf_loss", "GGUF eval loss"),
    ("rouge_l", "ROUGE-L"),
    ("f1", "token F1"),
    ("adapter_mib", "adapter MiB"),
    ("runs_in", "runs in"),
    ("error", "failed"),
)


def model_path(name: str, work: Path) -> str:
    if name == "tiny":
        from localtune.model.tiny import build_tiny_model

        return str(build_tiny_model("llama", work / "tiny-llama"))
    return name


def run_one(model: str, spec: str, name: str, args, work: Path) -> dict:
    from localtune.config import load_config
    from localtune.events import EvalResult, ListSink, ModelLoaded, StepMetrics
    from localtune.methods import METHODS
    from localtune.runs.layout import RunDir
    from localtune.train.run import train_run

    m = METHODS[name]
    row = {"model": model, "method": name, "runs_in": m.runs_in, "error": ""}
    over = {
        "model.name_or_path": spec,
        "data.path": "demo",
        "adapter.method": name,
        "train.max_steps": args.steps,
        "train.micro_batch_size": args.micro_batch,
        "train.grad_accum": 1,
        "train.eval_every": 0,
        "data.val_fraction": 0.1,
        "train.load_in_4bit": m.four_bit and not args.no_quant,
        "train.seed": 0,
    }
    if args.lr:
        over["train.lr"] = args.lr
    run_dir = work / f"{model}-{name}"
    sink = ListSink()
    try:
        cfg = load_config(None, {k: (v, "bench") for k, v in over.items()})
        start = time.monotonic()
        train_run(cfg, run_dir, sinks=[sink])
        steps = sink.of(StepMetrics)
        row["s_per_step"] = round((time.monotonic() - start) / max(1, len(steps)), 3)
        loaded = sink.of(ModelLoaded)[0]
        row["trainable"] = loaded.params_trainable
        row["peak_mib"] = round(max(s.peak_memory_bytes for s in steps) / 2**20) if steps else None
        evals = sink.of(EvalResult)
        row["eval_loss"] = round(evals[-1].loss, 4) if evals else None
        adapter = RunDir(run_dir).adapter
        row["adapter_mib"] = round(sum(f.stat().st_size for f in adapter.rglob("*") if f.is_file()) / 2**20, 3)
    except Exception as exc:  # a method that fails is a row that says so
        row["error"] = f"train: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        traceback.print_exc()
        return row
    if args.no_eval:
        return row
    try:
        from localtune.evaluation.evaluate import evaluate
        from localtune.export.bundle import export_run

        export_run(run_dir, ["f16"], say=lambda *_: None)
        report = evaluate(run_dir, update_card=False)
        tuned = next(s for s in report.systems if s.role == "tuned")
        row["gguf_loss"] = round(tuned.values.get("loss", float("nan")), 4)
        row["rouge_l"] = round(tuned.values.get("rouge_l", float("nan")), 4)
        row["f1"] = round(tuned.values.get("f1", float("nan")), 4)
    except Exception as exc:
        row["error"] = f"export/eval: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return row


def child_run(model: str, spec: str, name: str, argv: list[str], work: Path) -> dict:
    """One run in a fresh process, so its peak memory is its own."""
    cmd = [sys.executable, "-m", "bench.methods", *argv, "--work", str(work), "--one", model, spec, name]
    out = subprocess.run(cmd, capture_output=True, text=True)
    rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
    if not rows:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"model": model, "method": name, "error": f"process: exit {out.returncode}: {tail[0][:160]}"}
    return json.loads(rows[-1])


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(title for _k, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for key, _title in COLUMNS:
            v = r.get(key)
            cells.append("" if v is None else f"{v:,}" if isinstance(v, int) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    from localtune.console import report_to
    from localtune.methods import METHOD_NAMES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny", help="tiny, smollm2 (comma-separated)")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.0, help="one learning rate for all (default: the recipe's)")
    parser.add_argument("--no-quant", action="store_true", help="every method on a 16-bit base")
    parser.add_argument("--no-eval", action="store_true", help="skip export + localtune eval")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "SPEC", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child: one run, its row as the last line of output
        model, spec, name = args.one
        work = args.work or Path(tempfile.mkdtemp())
        with report_to(None, work / "library.log"):
            print("ROW " + json.dumps(run_one(model, spec, name, args, work)), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp, report_to(None, Path(tmp) / "library.log"):
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for model in args.models.split(","):
            spec = model_path(model, work)
            for name in args.methods.split(","):
                print(f"{model} {name} ...", flush=True)
                rows.append(child_run(model, spec, name, argv if argv is not None else sys.argv[1:], work))
                print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"methods-{args.models.replace(',', '-')}"
    stem.with_suffix(".json").write_text(json.dumps({"args": vars(args) | {"work": None}, "rows": rows}, indent=1))
    table = markdown(rows)
    stem.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
