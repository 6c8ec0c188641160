"""`localtune train` and `localtune plan`: train an adapter into a run folder, or plan its memory first.

Run as:  localtune train --model M --data D --out RUN_DIR [--config FILE] [any knob of `localtune config`]
         localtune plan --model M [--data D] [--vram GB]
"""

from __future__ import annotations

import sys

import click

from localtune.cli.data import CONFIG_FILE
from localtune.cli.main import friendly_errors, main
from localtune.cli.options import PLAN_KNOBS, TRAIN_KNOBS, knob_options, overrides
from localtune.cli.printers import TrainPrinter
from localtune.runs.layout import RunDir


@main.command("train")
@click.option("--out", "-o", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder.")
@CONFIG_FILE
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last complete checkpoint.")
@click.option("--force-resume", is_flag=True, help="Resume even if data, base model or LoRA shape changed.")
@knob_options(*TRAIN_KNOBS)
@friendly_errors
def train_cmd(run_dir, config_file, resume, force_resume, **knobs):
    """Train a LoRA adapter (QLoRA on a 4-bit base by default) into the run folder --out.

    Every option below --force-resume is a field of the configuration (`localtune config` documents
    them all); a flag overrides the --config file.

    Ctrl-C once: finish the step, save a checkpoint, print the resume command (exit 130).
    Twice: stop at once; the last complete checkpoint stays intact.

    --gpus N trains N data-parallel ranks on this machine (torchrun); `torchrun ... -m localtune train ...`
    runs it across machines (README: more than one GPU).
    """

    from localtune.config import load_config
    from localtune.errors import UsageError

    run = RunDir(run_dir)
    if config_file is None and (resume or force_resume) and run.config.is_file():
        config_file = str(run.config)  # a resumed run starts from its own saved configuration
    cfg = load_config(config_file, overrides(knobs))
    missing = [flag for flag, value in (("--model", cfg.model.name_or_path), ("--data", cfg.data.path)) if not value]
    if missing:
        raise UsageError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required",
            hint="localtune train --model M --data D --out RUN_DIR",
        )
    import os

    from localtune.train.launch import LAUNCHED, in_world, launch_train, rank

    if rank() == 0 and not os.environ.get(LAUNCHED):  # one rank prints, and --gpus printed them already
        for line in cfg.overridden():
            click.echo(f"config: {line}")
    if cfg.train.gpus > 1 and not in_world():  # start the ranks; each runs this command again, as one rank
        sys.exit(launch_train(cfg, run_dir, resume=resume, force_resume=force_resume, say=click.echo))
    from localtune.console import report_to
    from localtune.train.run import train_run

    printer = TrainPrinter() if rank() == 0 else None  # the other ranks print nothing and write no log
    with report_to(printer, run.library_log if printer else None):
        result = train_run(
            cfg, run_dir, resume=resume or force_resume, force_resume=force_resume, sinks=[printer] if printer else []
        )
    sys.exit(result.exit_code)


@main.command("plan")
@knob_options(*PLAN_KNOBS, required=("model.name_or_path",))
@click.option("--vram", type=float, help="GPU memory in GB to plan for (default: the detected GPU).")
@CONFIG_FILE
@friendly_errors
def plan_cmd(vram, config_file, **knobs):
    """Estimate peak GPU memory for training and recommend settings that fit.

    Reads only the model's configuration (no weights). The breakdown covers 4-bit weights, 16-bit
    embeddings and head, LoRA parameters, gradients, optimizer state, activations and logits. With
    --data, plans for the data's longest rows (needs the tokenizer).
    """
    from localtune.config import load_config
    from localtune.errors import ModelSourceError
    from localtune.model.source import resolve_model
    from localtune.planner import CUDA_CONTEXT, GIB, Shape, estimate, recommend, render_plan

    cfg = load_config(config_file, overrides(knobs))
    source = resolve_model(cfg.model.name_or_path)
    from transformers import AutoConfig

    location, kwargs = source.from_pretrained_args()
    try:
        shape = Shape.from_config(AutoConfig.from_pretrained(location, **kwargs))
    except Exception as exc:
        raise ModelSourceError(
            f"cannot read the configuration of {source.spec!r}: {str(exc).splitlines()[0]}",
            hint="check the model path or hub id (and the network for a hub id)",
        ) from None
    seq = cfg.data.max_seq_len
    if cfg.data.path:
        from localtune.config import DataConfig
        from localtune.data.dataset import load_examples, template_for, tokenize_all
        from localtune.data.template import make_renderer
        from localtune.model.source import load_tokenizer

        tok = load_tokenizer(source)
        examples = load_examples(cfg.data.path, cfg.data.format).examples
        rows, stats = tokenize_all(
            examples,
            tok,
            make_renderer(tok, template_for(examples, tok, cfg.model.chat_template, cfg.data.reasoning)),
            DataConfig(max_seq_len=seq),
            [],
        )
        seq = min(seq, max(len(r.input_ids) for r in rows)) if rows else seq
        click.echo(f"data: {len(rows)} rows, longest {max(stats.lengths, default=0)} tokens; planning for {seq}")
    if vram is None:
        import torch

        if torch.cuda.is_available():
            vram, where = torch.cuda.mem_get_info()[1] / GIB, f"detected {torch.cuda.get_device_name()}"
        else:
            vram, where = 24.0, "no GPU detected: planning for a 24 GB card; pass --vram"
    else:
        where = "--vram"
    budget = int(vram * GIB) - CUDA_CONTEXT
    kw = dict(
        rank=cfg.adapter.r,
        targets=cfg.adapter.target_modules,
        quantized=cfg.train.load_in_4bit,
        method=cfg.adapter.method,
        virtual_tokens=cfg.adapter.virtual_tokens,
        freeze_modules=cfg.adapter.freeze_modules,
    )
    rec = recommend(
        shape,
        budget,
        seq_len=seq,
        checkpointing=cfg.train.gradient_checkpointing,
        offload=cfg.train.activation_offload,
        **kw,
    )
    p = rec.plan
    alternatives = [
        estimate(shape, micro_batch=mb, seq_len=p.seq_len, checkpointing=ck, offload=off, **kw)
        for mb in sorted({1, p.micro_batch, p.micro_batch * 2})
        for ck, off in ((True, False), (True, True), (False, False))
    ]
    click.echo(render_plan(rec, shape, where=where, alternatives=alternatives))
