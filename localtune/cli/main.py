"""The `localtune` command group and how every command turns user mistakes into messages.

Start-up stays fast: nothing here imports torch, transformers or textual; commands import what they
need when they run. Mistakes a user can fix (LocaltuneError) print a titled message and exit with its
code (2 for bad input), never a traceback.
"""

from __future__ import annotations

import functools
import sys

import click

from localtune import __version__
from localtune.errors import LocaltuneError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every writer's cleanup (temporary files) runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def friendly_errors(fn):
    """Turn user mistakes into a message on stderr and an exit code; Ctrl-C exits 130, SIGTERM 143.
    Training installs its own handlers (finish the step, save) over these while it runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal

        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kwargs)
        except LocaltuneError as exc:
            if exc.message:  # an empty one was said already (by rank 0 of a data-parallel run)
                click.echo(exc.render(), err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a full disk anywhere is the user's to fix, not a traceback
            from localtune.faults import disk_full

            full = disk_full(exc, exc.filename or "a file", ".")
            if full is None:
                raise
            click.echo(full.render(), err=True)
            sys.exit(full.exit_code)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            click.echo(
                f"interrupted by {'SIGTERM' if terminated else 'SIGINT'}; no incomplete file was left under a "
                "final name: run the same command again",
                err=True,
            )
            sys.exit(143 if terminated else 130)

    return wrapper


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, invoke_without_command=True
)
@click.version_option(__version__, "--version", "-V", prog_name="localtune")
@click.pass_context
def main(ctx):
    """Fine-tune an LLM on your own machine: from a data file to a verified, chattable GGUF.

    \b
    Data formats: text, alpaca, chat (OpenAI messages), sharegpt, prompt_completion;
    files: .jsonl .json .csv .tsv .parquet .txt or a folder of them.
    Models (--model): a hub id, a local Hugging Face folder, a .gguf file,
    or 'smollm2' for the built-in demo model.

    With no command, in a terminal: the terminal app (localtune tui).
    """
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            from localtune.cli.tools import tui_cmd

            ctx.invoke(tui_cmd)
        else:
            click.echo(ctx.get_help())
