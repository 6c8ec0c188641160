"""The report of a comparison: the .json of every run, the .md with its tables, and the .svg plot.

Run as:  (imported by `python -m bench.compare_stacks`; `--report RESULT.json` writes the .md and .svg again)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cases import GIB, STACKS, Case
from .chart import plot


def fmt_mem(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def results_table(results: list[dict], gpu: bool) -> str:
    head = [
        "model",
        "mode",
        "data",
        "seq",
        "rows/step, mean row",
        "stack",
        "real tokens/s (min-max)",
        "step s",
        "peak memory",
    ]
    if gpu:
        head += ["MFU", "planner estimate (error)"]
    head += ["localtune/ref speed", "localtune/ref memory"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cr in results:
        c, sm = cr["case"], cr["summary"]
        for stack in STACKS:
            s = sm[stack]
            tps = (
                "failed"
                if s["tokens_per_s"] is None
                else (f"{s['tokens_per_s']:,.1f} ({s['tokens_per_s_range'][0]:,.1f}-{s['tokens_per_s_range'][1]:,.1f})")
            )
            row = [
                c["model"],
                c["mode"],
                c["data"],
                str(c["seq_len"]),
                f"{c['micro_batch']}x{c['grad_accum']}, {cr['mean_row']:.0f}",
                stack,
                tps,
                "-" if s["step_s"] is None else f"{s['step_s']:.3f}",
                fmt_mem(s["peak_memory_bytes"]),
            ]
            if gpu:
                row.append(f"{100 * s['mfu']:.1f}%" if s.get("mfu") else "-")
                p = sm.get("planner")
                row.append(
                    f"{fmt_mem(p['estimate_bytes'])} ({p['error_pct']:+.0f}%)"
                    if stack == "localtune" and p and p["error_pct"] is not None
                    else ""
                )
            first = stack == "localtune" and "speed_ratio" in sm
            row += [f"{sm['speed_ratio']:.2f}x" if first else "", f"{sm['memory_ratio']:.2f}x" if first else ""]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def longest_table(longest: list[dict]) -> str:
    lines = [
        "| model | stack | longest sequence at batch 1 | first failure | peak at longest | tokens/s at longest "
        "| planner's longest |",
        "|---|---|---|---|---|---|---|",
    ]
    for lo in longest:
        for stack in STACKS:
            r = lo[stack]
            at = r["attempts"].get(r["longest"], {}) if r["longest"] else {}
            longest = "none" if r["longest"] is None else f"{r['longest']:,}" + (" (cap)" if r["capped"] else "")
            tps = "-" if at.get("tokens_per_s") is None else f"{at['tokens_per_s']:,.0f}"
            planner = f"{lo['planner_longest']:,}" if stack == "localtune" and lo.get("planner_longest") else ""
            lines.append(
                f"| {lo['model']} | {stack} | {longest} | {_failure(r)} | "
                f"{fmt_mem(at.get('peak_memory_bytes'))} | {tps} | {planner} |"
            )
    return "\n".join(lines)


def _failure(r: dict) -> str:
    if r["first_failure"] is None:
        return "-"
    status = r["attempts"][r["first_failure"]]["status"]
    return f"{r['first_failure']:,} ({'out of memory' if status == 'oom' else status})"


def settings_table(cases: list[Case], args) -> str:
    """What each stack runs, as a two-column table."""
    gpu = any(c.device == "cuda" for c in cases)
    p = "bf16" if gpu else "fp32"
    modes = sorted({c.mode for c in cases})
    lt_base = "; ".join(
        f"qlora: NF4 + double quant (bitsandbytes), compute {p}; embeddings, norms and head stay {p}"
        if m == "qlora"
        else f"lora: {p} base, no quantization"
        for m in modes
    )
    ref_base = "; ".join(
        f"qlora: `BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute {p})`, then "
        "`prepare_model_for_kbit_training` (casts embeddings, norms and head to fp32)"
        if m == "qlora"
        else f"lora: {p} base, no quantization"
        for m in modes
    )
    try:
        import localtune.train.speed.batching  # noqa: F401 - present in trees with padding-free micro-batches

        lt_batch = "padding-free micro-batches (rows concatenated, per-row attention), chunked cross-entropy"
    except ImportError:
        lt_batch = "right padding to the longest row of the micro-batch"
    rows = [
        (
            "training",
            "`localtune.train.run.train_run` (its own loop, typed events)",
            "transformers `Trainer` (rows in localtune's order: a sequential sampler)",
        ),
        ("base model", lt_base, ref_base),
        (
            "LoRA",
            f"r {args.rank}, alpha {args.alpha:g}, dropout {args.dropout}, all linear layers (peft)",
            f'`LoraConfig` r {args.rank}, alpha {args.alpha:g}, dropout {args.dropout}, `target_modules="all-linear"`',
        ),
        (
            "precision",
            "bf16 weights, LoRA in fp32, no autocast" if gpu else "fp32",
            "`bf16=True` (autocast)" if gpu else "fp32",
        ),
        (
            "attention",
            "what localtune sets up (the implementation is recorded per run under Checks)",
            '`attn_implementation="sdpa"`',
        ),
        (
            "checkpointing",
            "non-reentrant gradient checkpointing",
            "`activation_checkpointing=True`, `use_reentrant=False`",
        ),
        (
            "optimizer",
            "`train.optimizer=paged_adamw_8bit`" if gpu else "`train.optimizer=adamw` (torch AdamW)",
            '`optim="paged_adamw_8bit"`' if gpu else '`optim="adamw_torch"`',
        ),
        (
            "schedule",
            f"lr {args.lr:g}, cosine, warm-up ratio 0.03, clipping 1.0, no weight decay",
            "the same (`warmup_steps` rounded down as localtune does)",
        ),
        (
            "batching",
            f"micro-batch x accumulation as in the table; {lt_batch}",
            "the same micro-batch and accumulation; `DataCollatorForSeq2Seq` (pad to longest, labels -100)",
        ),
        ("loss", "sum over the step's target tokens / their count", "the same (`num_items_in_batch`)"),
    ]
    return "\n".join(["| | localtune | reference |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def markdown(report: dict, cases: list[Case], args, svg_name: str | None) -> str:
    env, sw = report["environment"], report["environment"].get("software", {})
    gpu = any(c.device == "cuda" for c in cases) or args.dry_run  # a dry run shows the GPU columns too
    out = [
        f"# localtune vs the reference QLoRA stack: preset {report['preset']}"
        + (" (dry run on miniature shapes)" if args.dry_run else ""),
        "",
        f"Started {report['started']}, took {report['seconds'] / 60:.1f} min. Command: `{report['command']}`",
        "",
        f"- hardware: {env['cpu']}, {env['usable_cores']} usable cores, {env['ram_gib']} GiB RAM"
        + (
            f"; GPU {sw.get('gpu')} ({sw.get('gpu_memory_bytes', 0) / GIB:.0f} GiB, CUDA {sw.get('cuda')})"
            if sw.get("gpu")
            else "; no GPU used"
        ),
        f"- code: commit {env.get('commit')}"
        + (
            f" with {env['localtune_files_changed']} uncommitted file(s) under localtune/ and converters/"
            if env.get("localtune_files_changed")
            else ""
        ),
        f"- load average at start / end: {', '.join(f'{x:.2f}' for x in env['load_avg_start'])} / "
        f"{', '.join(f'{x:.2f}' for x in env['load_avg_end'])}",
        "- software: "
        + ", ".join(
            f"{k} {sw.get(k)}" for k in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "localtune")
        )
        + f", {sw.get('torch_threads')} torch thread(s) per run"
        + (f" (--threads {env['threads']})" if env.get("threads") else ""),
        f"- runs: {args.warmup_runs} warm-up run(s) per stack per model and mode, then {args.repeats} alternating "
        f"pair(s) per case, each a fresh process; figures are medians over the pairs, ratios the median of "
        f"the pairwise ratios",
        "",
        "## What each stack runs",
        "",
        settings_table(cases, args),
        "",
        "## Throughput and memory",
        "",
        results_table(report["cases"], gpu),
        "",
        "Real tokens/s counts non-padding tokens of the timed steps (after the untimed warm-up steps); "
        "step s is the median time of one optimizer step; peak memory is "
        + (
            "`torch.cuda.max_memory_allocated` (the load included)."
            if not args.dry_run and gpu
            else "the process's peak RSS."
        ),
    ]
    if args.dry_run:
        out.append(
            "Dry run: MFU is against a pretend 1 TFLOP/s peak and the planner's GPU estimate is set "
            "against the CPU's peak RSS, only to run the arithmetic end to end; the figures mean nothing."
        )
    elif gpu:
        out.append(
            "MFU: model FLOPs (4N + 6*L*d*s per real token, s the row's length) per second over the card's "
            "dense BF16 peak. The planner's estimate is `localtune.planner.estimate` for the micro-batch and "
            "the longest row, against localtune's measured peak."
        )
    checks = [
        f"- {cr['case']['model']} {cr['case']['mode']} seq {cr['case']['seq_len']}: identical tokens per step "
        f"{'yes' if cr['summary']['tokens_match'] else 'NO'}"
        + (
            ""
            if cr["summary"]["fingerprint_match"] is None
            else f", localtune's data fingerprint {'matches' if cr['summary']['fingerprint_match'] else 'DIFFERS'}"
        )
        + f"; first-step loss {_loss(cr, 'localtune')} vs {_loss(cr, 'reference')}"
        + f"; attention {_first(cr, 'localtune', 'attn_implementation')} vs "
        f"{_first(cr, 'reference', 'attn_implementation')}"
        for cr in report["cases"]
    ]
    out += [
        "",
        "## Checks",
        "",
        "Both stacks must see the same tokens: every step's real-token count is compared "
        "with the rows prepared for it, and the first step's loss (before any update, LoRA B = 0) should agree.",
        "",
        *checks,
    ]
    if report.get("longest"):
        out += [
            "",
            "## Longest trainable sequence at batch 1",
            "",
            "Rows of exactly that many tokens, all trained, micro-batch 1, two optimizer steps; doubling, then "
            f"bisection to {args.longest_resolution} tokens.",
            "",
            longest_table(report["longest"]),
        ]
    if svg_name:
        out += ["", "## Plot", "", f"![tokens/s and peak memory vs sequence length]({svg_name})"]
    return "\n".join(out) + "\n"


def _first(cr: dict, stack: str, key: str):
    return next((r.get(key) for r in cr["runs"][stack] if r.get("status") == "ok"), None)


def _loss(cr: dict, stack: str) -> str:
    v = _first(cr, stack, "first_loss")
    return "-" if v is None else f"{v:.4f}"


def write_report(report: dict, cases: list[Case], args, out_dir: Path, name: str) -> str:
    """The .json, the .svg plot and the .md report; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = any(c.device == "cuda" for c in cases)
    svg = plot(
        report["cases"],
        f"localtune vs reference ({report['preset']}" + (", dry run" if report["dry_run"] else "") + ")",
        "max_memory_allocated (GiB)" if gpu else "peak RSS (GiB)",
    )
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
