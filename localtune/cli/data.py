"""`localtune config` and `localtune data inspect`: look at settings and data before any model loads.

Run as:  localtune config [--config FILE]
         localtune data inspect FILE [--model M]
"""

from __future__ import annotations

import sys

import click

from localtune.cli.main import friendly_errors, main
from localtune.cli.options import INSPECT_KNOBS, knob_options, overrides
from localtune.cli.printers import ProgressLine

CONFIG_FILE = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file (flags override its values)."
)


@main.command("config")
@CONFIG_FILE
@friendly_errors
def config_cmd(config_file):
    """Print the effective configuration with every field's documentation."""
    from localtune.config import load_config

    cfg = load_config(config_file)
    click.echo(cfg.to_yaml(with_docs=True), nl=False)


@main.group()
def data():
    """Check training data before any model is loaded."""


@data.command("inspect")
@click.argument("file")
@knob_options(*INSPECT_KNOBS)
@CONFIG_FILE
@friendly_errors
def data_inspect(file, config_file, **knobs):
    """Show FILE's format, row counts, invalid rows, token lengths and a rendered example.

    Exits 1 when there are invalid rows that training would stop at (without --skip-invalid).
    """
    from localtune.config import load_config
    from localtune.data.inspect import inspect_data, render_report

    cfg = load_config(config_file, {"data.path": (file, "FILE"), **overrides(knobs)})
    tokenizer = None
    if cfg.model.name_or_path:
        from localtune.model.source import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    report = inspect_data(
        cfg.data,
        tokenizer,
        model=cfg.model.name_or_path or None,
        chat_template=cfg.model.chat_template,
        progress=ProgressLine("tokenizing rows"),
    )
    if cfg.source_of("adapter.method") != "default":
        from localtune.methods import data_note

        report.method_note = data_note(cfg.adapter.method, cfg.adapter.virtual_tokens)
    click.echo(render_report(report))
    if report.invalid and not cfg.data.skip_invalid:
        sys.exit(1)
