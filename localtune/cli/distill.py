"""`localtune distill`: a LoRA run that reproduces another run's model, so that it exports and chats
like any LoRA (train/distill.py).

Run as:  localtune distill RUN_DIR [--out DIR] [--steps N] [--lr LR]
"""

from __future__ import annotations

import sys

import click

from localtune.cli.main import friendly_errors, main
from localtune.cli.printers import EventPrinter


@main.command("distill")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", "-o", "out_dir", type=click.Path(file_okay=False), help="Output run folder (default RUN_DIR/distilled)."
)
@click.option("--steps", type=int, default=0, help="Optimizer steps (default: the run's own, at least 32).")
@click.option("--lr", type=float, default=0.0, help="Learning rate (default: LoRA's rate for the model's size).")
@friendly_errors
def distill_cmd(run_dir, out_dir, steps, lr):
    """Train a LoRA student to reproduce RUN_DIR's model (base + its adapter, any method) on the run's own
    rows: KL between their next-token distributions at every token. The result is a LoRA run folder:
    `localtune export OUT` and `localtune chat OUT` work on it. No checkpoints: an interrupted
    distillation starts again."""
    from localtune.console import report_to
    from localtune.runs.layout import RunDir
    from localtune.train.distill import default_out, distill_run

    out = out_dir or default_out(run_dir)
    with report_to(EventPrinter(err=True, kinds=("progress",)), RunDir(run_dir).library_log):
        result = distill_run(run_dir, out, steps=steps, lr=lr, sinks=[EventPrinter()])
    if result.exit_code:
        sys.exit(result.exit_code)
    click.echo(f"distilled into {result.out_dir}; export it: localtune export {result.out_dir}")
