"""The `localtune` command. Each subcommand is a thin function over the headless core.

Start-up stays fast: this module imports no torch, transformers or textual; commands import what
they need when they run. Mistakes a user can fix (LocaltuneError) print a titled message and exit
with its code (2 for bad input), never a traceback.

Run as:  localtune --help
"""

from __future__ import annotations

import functools
import sys

import click

from localtune import __version__
from localtune.errors import LocaltuneError


def friendly_errors(fn):
    """Turn user mistakes into a message on stderr and an exit code; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LocaltuneError as exc:
            click.echo(exc.render(), err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


class ProgressLine:
    """A one-line progress display with ETA on stderr, shown only on a terminal for long work."""

    def __init__(self, label: str, min_total: int = 1000):
        self.label, self.min_total, self.start = label, min_total, None

    def __call__(self, done: int, total: int) -> None:
        import time

        if total < self.min_total or not sys.stderr.isatty():
            return
        now = time.monotonic()
        self.start = self.start or now
        rate = done / (now - self.start) if now > self.start else 0.0
        eta = f", ETA {int((total - done) / rate)}s" if rate and done < total else ""
        end = "\n" if done >= total else ""
        click.echo(f"\r{self.label}: {done}/{total} ({done / total:.0%}{eta})   {end}", err=True, nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="localtune")
def main():
    """Fine-tune an LLM on your own machine: from a data file to a verified, chattable GGUF.

    \b
    Data formats: text, alpaca, chat (OpenAI messages), sharegpt, prompt_completion;
    files: .jsonl .json .csv .tsv .parquet .txt or a folder of them.
    Models (--model): a hub id, a local Hugging Face folder, a .gguf file,
    or 'smollm2' for the built-in demo model.
    """


@main.command("config")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file to apply.")
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
@click.option("--model", "-m", help="Model whose tokenizer and chat template to measure with.")
@click.option("--format", "fmt", type=click.Choice(["auto", "text", "alpaca", "chat", "sharegpt",
                                                     "prompt_completion"]), help="Row format (default: auto).")
@click.option("--max-seq-len", type=int, help="Truncation length in tokens (default from config: 1024).")
@click.option("--train-on-prompt", is_flag=True, default=None, help="Count prompt tokens as trained.")
@click.option("--skip-invalid", is_flag=True, default=None, help="Drop invalid rows instead of failing.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@friendly_errors
def data_inspect(file, model, fmt, max_seq_len, train_on_prompt, skip_invalid, config_file):
    """Show FILE's format, row counts, invalid rows, token lengths and a rendered example.

    Exits 1 when there are invalid rows that training would stop at (without --skip-invalid).
    """
    from localtune.config import load_config
    from localtune.data.inspect import inspect_data, render_report

    cfg = load_config(config_file, {
        "data.path": (file, "FILE"),
        "data.format": (fmt, "--format"),
        "data.max_seq_len": (max_seq_len, "--max-seq-len"),
        "data.train_on_prompt": (train_on_prompt, "--train-on-prompt"),
        "data.skip_invalid": (skip_invalid, "--skip-invalid"),
        "model.name_or_path": (model, "--model"),
    })
    tokenizer = None
    if cfg.model.name_or_path:
        from localtune.model_source import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    report = inspect_data(cfg.data, tokenizer, model=cfg.model.name_or_path or None,
                          chat_template=cfg.model.chat_template, progress=ProgressLine("tokenizing rows"))
    click.echo(render_report(report))
    if report.invalid and not cfg.data.skip_invalid:
        sys.exit(1)


if __name__ == "__main__":
    main()
