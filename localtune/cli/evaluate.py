"""`localtune eval`: is the tuned GGUF better than its base, on held-out rows?

Run as:  localtune eval RUN_DIR|GGUF [--data FILE] [--shots K] [--max-rows N]
"""

from __future__ import annotations

import sys

import click

from localtune.cli.main import friendly_errors, main
from localtune.cli.printers import EvalPrinter


@main.command("eval")
@click.argument("target", type=click.Path())
@click.option("--data", "-d", help="Held-out rows (any data format; default: the run's validation split).")
@click.option(
    "--base", "base_file", type=click.Path(dir_okay=False), help="Base GGUF (default: the run's base-*.gguf)."
)
@click.option(
    "--shots",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="Training rows shown to the base as few-shot turns (fewer if they do not fit --ctx; 0: none).",
)
@click.option("--shots-from", help="Rows to take few-shot turns from (default: the run's training rows).")
@click.option("--max-rows", type=click.IntRange(0), default=0, help="Evaluate at most N rows (default: all).")
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Longest greedy answer; each row's limit is also at most 2x its reference + 16 tokens.",
)
@click.option("--ctx", type=click.IntRange(64), default=2048, show_default=True, help="Context window in tokens.")
@click.option("--all-quants", is_flag=True, help="Evaluate every tuned GGUF of the run's bundle.")
@click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Report folder (default: RUN_DIR/eval/<timestamp>).",
)
@friendly_errors
def eval_cmd(target, data, base_file, shots, shots_from, max_rows, max_tokens, ctx, all_quants, out_dir):
    """Is the tuned GGUF better than its base, and than few-shot prompting of the base, on held-out rows?

    TARGET is a RUN_DIR or a GGUF. Every system runs through llama.cpp on the same rows: teacher-forced
    loss and perplexity of the reference answers, greedy answers scored by exact match, token F1 and
    ROUGE-L, answer length and whether each answer stopped (EOS/end-of-turn), with bootstrap intervals
    and per-row wins. Writes report.md, report.json and chart.png. Ctrl-C keeps the finished rows as a
    partial report. Exits 1 when the tuned GGUF does not stop on most rows.
    """
    from localtune.evaluation.evaluate import evaluate
    from localtune.evaluation.report import render_text
    from localtune.evaluation.runner import Settings

    report = evaluate(
        target,
        data=data,
        base=base_file,
        shots_from=shots_from,
        out=out_dir,
        all_quants=all_quants,
        settings=Settings(shots=shots, max_rows=max_rows, max_tokens=max_tokens, n_ctx=ctx),
        emit=EvalPrinter(),
    )
    click.echo(render_text(report))
    if report.partial:
        click.echo("interrupted: the rows finished so far are in the partial report above", err=True)
        sys.exit(130)
    sys.exit(0 if report.passed else 1)
