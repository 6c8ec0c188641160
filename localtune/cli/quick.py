"""`localtune quick`: data to a verified, chattable GGUF in one command; with no arguments, the offline demo.

Run as:  localtune quick [--model M] [--data D] [--out RUN_DIR]
"""

from __future__ import annotations

import sys

import click

from localtune.cli.data import CONFIG_FILE
from localtune.cli.export import QUANT
from localtune.cli.main import friendly_errors, main
from localtune.cli.options import QUICK_KNOBS, knob_options, overrides
from localtune.cli.printers import EvalPrinter, TrainPrinter
from localtune.runs.layout import RunDir


@main.command("quick")
@knob_options(*QUICK_KNOBS)
@click.option("--out", "-o", "run_dir", type=click.Path(file_okay=False), help="Run folder (default runs/<data name>).")
@QUANT
@CONFIG_FILE
@click.option("--prompt", help="Prompt for the closing base-vs-fine-tuned comparison.")
@friendly_errors
def quick_cmd(run_dir, quant, config_file, prompt, **knobs):
    """Data to a verified, chattable GGUF in one command; with no arguments, the offline demo.

    Preflight, train, merge + export + verify, then the base and the fine-tuned model answer the same
    prompt, and both are measured on held-out rows. Without --model: the built-in demo model
    (SmolLM2-135M-Instruct); without --data: the built-in Captain Byte demo set. Run it again on the
    same --out to continue after an interruption.
    """
    from pathlib import Path

    from localtune.config import load_config
    from localtune.demo import DEMO_DATA
    from localtune.model.source import DEMO_MODEL
    from localtune.quick import run_quick
    from localtune.train.launch import in_world

    if in_world():
        from localtune.errors import UsageError

        raise UsageError(
            "`quick` exports, verifies and chats after training, which one process does: it is not run by torchrun",
            hint="run `localtune quick --gpus N` (it starts the ranks for the training itself), or `torchrun ... -m "
            "localtune train` and then `localtune export`",
            title="quick under torchrun",
        )

    data = knobs["data__path"] = knobs["data__path"] or str(DEMO_DATA)
    knobs["model__name_or_path"] = knobs["model__name_or_path"] or DEMO_MODEL
    run_dir = run_dir or str(Path("runs") / Path(data).stem)
    run = RunDir(run_dir)
    if config_file is None and run.quick_json.is_file() and run.config.is_file():
        config_file = str(run.config)  # continuing: the run's own configuration
    cfg = load_config(config_file, overrides(knobs))
    import torch

    if not torch.cuda.is_available() and cfg.source_of("train.load_in_4bit") == "default":
        # On the CPU 4-bit saves little and bitsandbytes' CPU kernels are slow: plain LoRA.
        cfg.set("train.load_in_4bit", False, "quick on CPU")
    from localtune.console import report_to

    train_printer = TrainPrinter()
    with report_to(train_printer, run.library_log):
        result = run_quick(
            cfg,
            run_dir,
            quants=[q.strip() for q in quant.split(",")] if quant else None,
            sinks=[train_printer, EvalPrinter()],
            say=click.echo,
            prompt=prompt,
        )
    sys.exit(result.exit_code)
