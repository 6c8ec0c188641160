"""`localtune tui` (the terminal app) and `localtune doctor` (is this machine ready?).

Run as:  localtune tui [--workspace runs]
         localtune doctor
"""

from __future__ import annotations

import sys

import click

from localtune.cli.main import main


@main.command("tui")
@click.option(
    "--workspace",
    "-w",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder holding the run folders.",
)
def tui_cmd(workspace="runs"):
    """The terminal app: runs, new run, live training dashboard, export and chat (works over SSH)."""
    from localtune.tui.app import LocaltuneApp

    LocaltuneApp(workspace).run()


@main.command("doctor")
@click.option("--workspace", "-w", default="runs", show_default=True, type=click.Path(file_okay=False))
def doctor_cmd(workspace):
    """Check this machine: Python, packages, torch and CUDA, GPU, bitsandbytes, llama-cpp-python and
    the AMX workaround, free disk, the Hugging Face cache and hub. Exits 1 if a check fails."""
    from pathlib import Path

    from localtune.doctor import FAIL, run_checks

    checks = run_checks(Path(workspace))
    for c in checks:
        click.echo(c.render())
    sys.exit(1 if any(c.status == FAIL for c in checks) else 0)
