"""`localtune tui` (the terminal app), `localtune doctor` (is this machine ready?) and `localtune methods`
(the adapter methods, what each learns and where its result runs).

Run as:  localtune tui [--workspace runs]
         localtune doctor
         localtune methods
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
@click.option("--tools", "tools_file", type=click.Path(dir_okay=False), help="JSON list of tools for the chat.")
def tui_cmd(workspace="runs", tools_file=None):
    """The terminal app: runs, new run, live training dashboard, export and chat (works over SSH)."""
    from localtune.chat.tool_calls import load_tools
    from localtune.errors import LocaltuneError
    from localtune.tui.app import LocaltuneApp

    try:
        tools = load_tools(tools_file) if tools_file else None
    except LocaltuneError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(exc.exit_code)
    LocaltuneApp(workspace, tools=tools).run()


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


@main.command("methods")
def methods_cmd():
    """The adapter methods `--method` takes: what each learns, whether it trains on a 4-bit base, and where
    its result runs."""
    from localtune.methods import METHODS

    width = max(len(m.name) for m in METHODS.values())
    for m in METHODS.values():
        base = "4-bit or 16-bit base" if m.four_bit else "16-bit base only (chosen for it; --quant is an error)"
        click.echo(f"{m.name:<{width}}  {m.title}: {m.summary}")
        click.echo(f"{'':<{width}}  {base}; runs in: {m.runs_in}")
