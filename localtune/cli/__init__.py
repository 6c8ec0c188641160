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
            click.echo(f"interrupted by {'SIGTERM' if terminated else 'SIGINT'}; no incomplete file was left under a "
                       "final name: run the same command again", err=True)
            sys.exit(143 if terminated else 130)

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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             invoke_without_command=True)
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
            ctx.invoke(tui_cmd)
        else:
            click.echo(ctx.get_help())


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
        from localtune.model.source import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    report = inspect_data(cfg.data, tokenizer, model=cfg.model.name_or_path or None,
                          chat_template=cfg.model.chat_template, progress=ProgressLine("tokenizing rows"))
    click.echo(render_report(report))
    if report.invalid and not cfg.data.skip_invalid:
        sys.exit(1)


class TrainPrinter:
    """Prints a run's events: a live progress line on a terminal, periodic lines in a log."""

    def __init__(self):
        self.tty = sys.stdout.isatty()

    def __call__(self, event) -> None:
        from localtune.planner import format_bytes

        k = event.kind
        if k == "step":
            e = event
            bar_w = 24
            done = int(bar_w * e.step / max(1, e.total_steps))
            line = (f"step {e.step}/{e.total_steps} [{'#' * done}{'.' * (bar_w - done)}] loss {e.loss:.4f} "
                    f"lr {e.lr:.2e} grad {e.grad_norm:.2f} {e.tokens_per_s:,.0f} tok/s "
                    f"mem {format_bytes(e.peak_memory_bytes)} ETA {_duration(e.eta_s)}")
            if self.tty:
                click.echo("\r" + line + " " * 4, nl=e.step == e.total_steps)
            elif e.step == 1 or e.step == e.total_steps or e.step % max(1, e.total_steps // 20) == 0:
                click.echo(line)
            return
        if k.startswith("eval_"):
            return  # EvalPrinter's
        if self.tty:
            click.echo("\r", nl=False)
        if k == "data_prepared":
            click.echo(f"data: {event.train_rows} training rows, {event.val_rows} validation rows, "
                       f"{event.trainable_tokens:,} of {event.train_tokens:,} tokens trained; "
                       f"{event.dropped_rows} dropped, {event.truncated_rows} truncated; "
                       f"chat template: {event.chat_template}")
        elif k == "model_loaded":
            click.echo(f"model: {event.model} ({event.architecture}) on {event.device}, {event.dtype}"
                       f"{', 4-bit NF4' if event.quantized else ''}; {event.params_trainable:,} of "
                       f"{event.params_total:,} parameters train; {format_bytes(event.memory_bytes)}; "
                       f"loaded in {event.seconds:.1f}s" + (f"; {event.fused_kernels}" if event.fused_kernels else ""))
        elif k == "memory_planned":
            click.echo(f"memory: micro-batch {event.micro_batch} x {event.grad_accum} accumulated; planned peak "
                       f"{format_bytes(event.estimate_bytes)} of {format_bytes(event.budget_bytes)} available; "
                       f"{event.reason}")
        elif k == "recipe":
            flags = " and ".join({"train.epochs": "--epochs/--max-steps", "train.lr": "--lr"}[c] for c in event.chosen)
            click.echo(f"recipe: {event.total_steps} optimizer steps" + (f" ({event.epochs} epochs)" if event.epochs
                       else "") + f" at lr {event.lr:.1e}, chosen for this data and model: {event.reason} "
                       f"(set {flags} to choose yourself)")
        elif k == "eval":
            click.echo(f"eval at step {event.step}: loss {event.loss:.4f} on {event.rows} rows")
        elif k == "checkpoint":
            click.echo(f"checkpoint: {event.path} ({format_bytes(event.bytes)})")
        elif k == "warning":
            click.echo(f"warning: {event.message}", err=True)
        elif k == "interrupted":
            click.echo(f"interrupted by {event.signal}; last checkpoint: {event.checkpoint}")
            click.echo(f"resume with: {event.resume_command}")
        elif k == "finished":
            click.echo(f"finished: {event.steps} steps in {_duration(event.seconds)}, final loss "
                       f"{event.final_loss:.4f}" + (f", eval loss {event.eval_loss:.4f}" if event.eval_loss is not None
                                                    else "") + (" (stopped early)" if event.stopped_early else "")
                       + f"; adapter: {event.adapter_dir}")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _micro_batch(value: str | None):
    if value is None:
        return None
    if value == "auto":
        return 0
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter("use 'auto' or a whole number above 0", param_hint="--micro-batch")


@main.command("train")
@click.option("--model", "-m", help="Base model: hub id, HF folder, .gguf file, or 'smollm2'.")
@click.option("--data", "-d", help="Training data file or folder.")
@click.option("--out", "-o", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--max-steps", type=int, help="Stop after N optimizer steps.")
@click.option("--epochs", type=int, help="Passes over the data (when --max-steps is not given).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--micro-batch", help="Rows per forward pass, or 'auto' (default).")
@click.option("--max-seq-len", type=int, help="Truncate rows to this many tokens.")
@click.option("--format", "fmt", type=click.Choice(["auto", "text", "alpaca", "chat", "sharegpt",
                                                     "prompt_completion"]), help="Row format.")
@click.option("--val-file", help="Validation data file.")
@click.option("--eval-every", type=int, help="Evaluate every N steps.")
@click.option("--save-every", type=int, help="Checkpoint every N steps.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), help="Where to train.")
@click.option("--no-quant", is_flag=True, default=None, help="Plain LoRA on a 16/32-bit base (no 4-bit).")
@click.option("--packing", is_flag=True, default=None, help="Pack short rows into full sequences.")
@click.option("--train-on-prompt", is_flag=True, default=None, help="Also train on prompt tokens.")
@click.option("--skip-invalid", is_flag=True, default=None, help="Drop invalid rows instead of stopping.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last complete checkpoint.")
@click.option("--force-resume", is_flag=True, help="Resume even if data, base model or LoRA shape changed.")
@click.option("--trust-remote-code", is_flag=True, default=None,
              help="Run Python code shipped with the model (only for authors you trust).")
@friendly_errors
def train_cmd(model, data, run_dir, config_file, max_steps, epochs, lr, micro_batch, max_seq_len, fmt, val_file,
              eval_every, save_every, device, no_quant, packing, train_on_prompt, skip_invalid, resume, force_resume,
              trust_remote_code):
    """Train a LoRA adapter (QLoRA on a 4-bit base by default) into the run folder --out.

    Ctrl-C once: finish the step, save a checkpoint, print the resume command (exit 130).
    Twice: stop at once; the last complete checkpoint stays intact.
    """
    from pathlib import Path

    from localtune.config import load_config
    from localtune.errors import UsageError

    saved = Path(run_dir) / "config.yaml"
    if config_file is None and (resume or force_resume) and saved.is_file():
        config_file = str(saved)  # a resumed run starts from its own saved configuration
    cfg = load_config(config_file, {
        "model.name_or_path": (model, "--model"), "data.path": (data, "--data"),
        "train.max_steps": (max_steps, "--max-steps"), "train.epochs": (epochs, "--epochs"), "train.lr": (lr, "--lr"),
        "train.micro_batch_size": (_micro_batch(micro_batch), "--micro-batch"),
        "data.max_seq_len": (max_seq_len, "--max-seq-len"), "data.format": (fmt, "--format"),
        "data.val_file": (val_file, "--val-file"), "train.eval_every": (eval_every, "--eval-every"),
        "train.save_every": (save_every, "--save-every"), "train.device": (device, "--device"),
        "train.load_in_4bit": (False if no_quant else None, "--no-quant"), "data.packing": (packing, "--packing"),
        "data.train_on_prompt": (train_on_prompt, "--train-on-prompt"),
        "data.skip_invalid": (skip_invalid, "--skip-invalid"),
        "model.trust_remote_code": (trust_remote_code, "--trust-remote-code"),
    })
    missing = [flag for flag, value in (("--model", cfg.model.name_or_path), ("--data", cfg.data.path)) if not value]
    if missing:
        raise UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required",
                         hint="localtune train --model M --data D --out RUN_DIR")
    for line in cfg.overridden():
        click.echo(f"config: {line}")
    from localtune.train.run import train_run

    result = train_run(cfg, run_dir, resume=resume or force_resume, force_resume=force_resume,
                       sinks=[TrainPrinter()])
    sys.exit(result.exit_code)


@main.command("plan")
@click.option("--model", "-m", required=True, help="Hub id, HF folder, .gguf file, or 'smollm2'.")
@click.option("--data", "-d", help="Data file: plan for its longest rows (needs the tokenizer).")
@click.option("--vram", type=float, help="GPU memory in GB to plan for (default: the detected GPU).")
@click.option("--max-seq-len", type=int, default=None, help="Sequence length to plan for (default 1024).")
@click.option("--rank", type=int, default=None, help="LoRA rank (default 16).")
@click.option("--no-quant", is_flag=True, help="Plan for a 16-bit base instead of 4-bit.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@friendly_errors
def plan_cmd(model, data, vram, max_seq_len, rank, no_quant, config_file):
    """Estimate peak GPU memory for training and recommend settings that fit.

    Reads only the model's configuration (no weights). The breakdown covers 4-bit weights, 16-bit
    embeddings and head, LoRA parameters, gradients, optimizer state, activations and logits.
    """
    from localtune.config import load_config
    from localtune.errors import ModelSourceError
    from localtune.model.source import resolve_model
    from localtune.planner import CUDA_CONTEXT, GIB, Shape, estimate, recommend, render_plan

    cfg = load_config(config_file, {"model.name_or_path": (model, "--model"), "data.path": (data, "--data"),
                                    "data.max_seq_len": (max_seq_len, "--max-seq-len"), "lora.r": (rank, "--rank"),
                                    "train.load_in_4bit": (False if no_quant else None, "--no-quant")})
    source = resolve_model(cfg.model.name_or_path)
    from transformers import AutoConfig

    location, kwargs = source.from_pretrained_args()
    try:
        shape = Shape.from_config(AutoConfig.from_pretrained(location, **kwargs))
    except Exception as exc:
        raise ModelSourceError(f"cannot read the configuration of {source.spec!r}: {str(exc).splitlines()[0]}",
                               hint="check the model path or hub id (and the network for a hub id)") from None
    seq = cfg.data.max_seq_len
    if cfg.data.path:
        from localtune.config import DataConfig
        from localtune.data.dataset import load_examples, tokenize_all
        from localtune.data.template import make_renderer, resolve_chat_template
        from localtune.model.source import load_tokenizer

        tok = load_tokenizer(source)
        rows, stats = tokenize_all(load_examples(cfg.data.path, cfg.data.format).examples, tok,
                                   make_renderer(tok, resolve_chat_template(tok, cfg.model.chat_template)),
                                   DataConfig(max_seq_len=seq), [])
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
    kw = dict(rank=cfg.lora.r, targets=cfg.lora.target_modules, quantized=cfg.train.load_in_4bit)
    rec = recommend(shape, budget, seq_len=seq, checkpointing=cfg.train.gradient_checkpointing,
                    offload=cfg.train.activation_offload, **kw)
    p = rec.plan
    alternatives = [estimate(shape, micro_batch=mb, seq_len=p.seq_len, checkpointing=ck, offload=off, **kw)
                    for mb in sorted({1, p.micro_batch, p.micro_batch * 2})
                    for ck, off in ((True, False), (True, True), (False, False))]
    click.echo(render_plan(rec, shape, where=where, alternatives=alternatives))


@main.command("export")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--quant", "-q", default=None, help="GGUF types, comma-separated, e.g. q4_k_m,q8_0,f16.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), help="Output folder (default: SOURCE/gguf).")
@click.option("--adapter", is_flag=True, help="Write a run's LoRA adapter alone as a llama.cpp LoRA GGUF.")
@click.option("--no-verify", is_flag=True, help="Skip the check against the source model.")
@friendly_errors
def export_cmd(source, quant, out_dir, adapter, no_verify):
    """Convert SOURCE to GGUF and verify each file. SOURCE is a Hugging Face folder, or a RUN_DIR:
    its adapter is merged into a 16-bit base and the bundle (GGUF, base GGUF, adapter GGUF, Ollama
    Modelfile, README card) goes to RUN_DIR/gguf. Default type for a run: q8_0 under 1B parameters,
    q4_k_m above.

    Nothing is compiled: f32/f16/bf16/q8_0 are written directly, K-quants by llama.cpp's quantizer
    inside llama-cpp-python. Exits 1 when a verification fails.
    """
    from pathlib import Path

    from localtune.errors import UsageError
    from localtune.export.gguf import export_adapter, export_model, is_run_dir, require_hf_folder

    src = Path(source)
    out = Path(out_dir) if out_dir else src / "gguf"
    if adapter:
        if not is_run_dir(src):
            raise UsageError(f"--adapter exports a training run's adapter; {src} is not a run folder",
                             hint="localtune export RUN_DIR --adapter")
        export_adapter(src, out, say=click.echo)
        return
    quants = [q.strip().lower() for q in quant.split(",") if q.strip()] if quant else None
    if is_run_dir(src):
        from localtune.export.bundle import export_run

        if out_dir:
            raise UsageError("a run's export bundle goes to RUN_DIR/gguf; --out applies to HF folders",
                             hint=f"localtune export {src}")
        bundle = export_run(src, quants, verify=not no_verify, say=click.echo)
        click.echo(f"bundle: {bundle.gguf_dir} (GGUF, adapter, Modelfile, README.md)")
        failed = [f for f in bundle.tuned if f.verify is not None and not f.verify.passed]
        if failed:
            click.echo(f"error: verification failed for {', '.join(str(f.path) for f in failed)}", err=True)
            sys.exit(1)
        return
    require_hf_folder(src)
    quants = quants or ["q4_k_m"]
    bar = ExportProgress()
    files = export_model(src, quants, out, verify=not no_verify, say=click.echo, progress=bar)
    failed = [f for f in files if f.verify is not None and not f.verify.passed]
    if failed:
        click.echo(f"error: verification failed for {', '.join(str(f.path) for f in failed)}", err=True)
        sys.exit(1)


class ExportProgress:
    """Tensor-by-tensor progress on a terminal."""

    def __call__(self, out_type: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            click.echo(f"\rconverting to {out_type}: {done}/{total} tensors", err=True, nl=done == total)


@main.command("verify")
@click.argument("gguf_file", type=click.Path(dir_okay=False))
@click.option("--against", required=True, type=click.Path(exists=True, file_okay=False),
              help="The Hugging Face folder the GGUF came from.")
@friendly_errors
def verify_cmd(gguf_file, against):
    """Check GGUF_FILE against the Hugging Face model: tokenizer, special tokens, chat template,
    logits (16/32-bit files) or perplexity (quantized files). Exits 1 on a failure."""
    from pathlib import Path

    from localtune.export.verify import verify

    report = verify(gguf_file, against)
    report.save(Path(gguf_file).with_name(Path(gguf_file).name + ".verify.json"))
    click.echo(report.render())
    sys.exit(0 if report.passed else 1)


class EvalPrinter:
    """Progress of `localtune eval` with ETA: a live bar on a terminal, a few lines in a log."""

    def __init__(self):
        self.tty = sys.stderr.isatty()

    def __call__(self, event) -> None:
        if event.kind != "eval_progress":
            return
        bar_w = 24
        done = int(bar_w * event.done / max(1, event.total))
        line = f"eval: row {event.done}/{event.total} [{'#' * done}{'.' * (bar_w - done)}] ETA {_duration(event.eta_s)}"
        if self.tty:
            click.echo("\r" + line + "    ", nl=event.done == event.total, err=True)
        elif event.done == event.total or event.done % max(1, event.total // 5) == 0:
            click.echo(line, err=True)


@main.command("eval")
@click.argument("target", type=click.Path())
@click.option("--data", "-d", help="Held-out rows (any data format; default: the run's validation split).")
@click.option("--base", "base_file", type=click.Path(dir_okay=False), help="Base GGUF (default: the run's base-*.gguf).")
@click.option("--shots", type=click.IntRange(0, 64), default=4, show_default=True,
              help="Training rows shown to the base as few-shot turns (fewer if they do not fit --ctx; 0: none).")
@click.option("--shots-from", help="Rows to take few-shot turns from (default: the run's training rows).")
@click.option("--max-rows", type=click.IntRange(0), default=0, help="Evaluate at most N rows (default: all).")
@click.option("--max-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="Longest greedy answer; each row's limit is also at most 2x its reference + 16 tokens.")
@click.option("--ctx", type=click.IntRange(64), default=2048, show_default=True, help="Context window in tokens.")
@click.option("--all-quants", is_flag=True, help="Evaluate every tuned GGUF of the run's bundle.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Report folder (default: RUN_DIR/eval/<timestamp>).")
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

    report = evaluate(target, data=data, base=base_file, shots_from=shots_from, out=out_dir, all_quants=all_quants,
                      settings=Settings(shots=shots, max_rows=max_rows, max_tokens=max_tokens, n_ctx=ctx),
                      emit=EvalPrinter())
    click.echo(render_text(report))
    if report.partial:
        click.echo("interrupted: the rows finished so far are in the partial report above", err=True)
        sys.exit(130)
    sys.exit(0 if report.passed else 1)


@main.command("merge")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), help="Output folder (default RUN_DIR/merged).")
@friendly_errors
def merge_cmd(run_dir, out_dir):
    """Merge RUN_DIR's adapter into a 16-bit (fp32 on the CPU) copy of its base: a normal HF folder."""
    from localtune.export.merge import merge_run
    from localtune.runs.lock import run_lock

    with run_lock(run_dir, "merge"):
        result = merge_run(run_dir, out_dir)
    click.echo(f"merged into {result.folder} ({result.dtype}); max |Δlogit| vs base+adapter "
               f"{result.max_delta:.2e}")


@main.command("quick")
@click.option("--model", "-m", help="Base model (default: the built-in demo model, SmolLM2-135M-Instruct).")
@click.option("--data", "-d", help="Training data (default: the built-in Captain Byte demo set).")
@click.option("--out", "-o", "run_dir", type=click.Path(file_okay=False), help="Run folder (default runs/<data name>).")
@click.option("--quant", "-q", help="GGUF types, comma-separated (default q8_0 under 1B parameters, else q4_k_m).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--max-steps", type=int, help="Stop training after N optimizer steps.")
@click.option("--epochs", type=int, help="Passes over the data.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--max-seq-len", type=int, help="Truncate rows to this many tokens.")
@click.option("--prompt", help="Prompt for the closing base-vs-fine-tuned comparison.")
@click.option("--trust-remote-code", is_flag=True, default=None,
              help="Run Python code shipped with the model (only for authors you trust).")
@friendly_errors
def quick_cmd(model, data, run_dir, quant, config_file, max_steps, epochs, lr, max_seq_len, prompt, trust_remote_code):
    """Data to a verified, chattable GGUF in one command; with no arguments, the offline demo.

    Preflight, train, merge + export + verify, then the base and the fine-tuned model answer the same
    prompt. Run it again on the same --out to continue after an interruption.
    """
    from pathlib import Path

    from localtune.config import load_config
    from localtune.demo import DEMO_DATA
    from localtune.model.source import DEMO_MODEL
    from localtune.quick import run_quick

    data = data or str(DEMO_DATA)
    run_dir = run_dir or str(Path("runs") / Path(data).stem)
    saved = Path(run_dir) / "config.yaml"
    if config_file is None and (Path(run_dir) / "quick.json").is_file() and saved.is_file():
        config_file = str(saved)  # continuing: the run's own configuration
    overrides = {"model.name_or_path": (model or DEMO_MODEL, "--model"), "data.path": (data, "--data"),
                 "train.max_steps": (max_steps, "--max-steps"), "train.epochs": (epochs, "--epochs"),
                 "train.lr": (lr, "--lr"), "data.max_seq_len": (max_seq_len, "--max-seq-len"),
                 "model.trust_remote_code": (trust_remote_code, "--trust-remote-code")}
    cfg = load_config(config_file, overrides)
    import torch

    if not torch.cuda.is_available() and cfg.source_of("train.load_in_4bit") == "default":
        # On the CPU 4-bit saves little and bitsandbytes' CPU kernels are slow: plain LoRA.
        cfg.set("train.load_in_4bit", False, "quick on CPU")
    result = run_quick(cfg, run_dir, quants=[q.strip() for q in quant.split(",")] if quant else None,
                       sinks=[TrainPrinter(), EvalPrinter()], say=click.echo, prompt=prompt)
    sys.exit(result.exit_code)


@main.command("chat")
@click.argument("target", type=click.Path(exists=True))
@click.option("--prompt", "-p", help="Answer this once and exit.")
@click.option("--compare", is_flag=True, help="Show the base model's answer next to the fine-tuned one.")
@click.option("--base", "base_file", type=click.Path(exists=True, dir_okay=False), help="Base GGUF for --compare.")
@click.option("--system", help="System prompt.")
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--ctx", type=int, default=2048, show_default=True, help="Context window in tokens.")
@friendly_errors
def chat_cmd(target, prompt, compare, base_file, system, temperature, top_p, max_tokens, ctx):
    """Chat offline with GGUF (or a run's exported model). Commands: /reset, /system TEXT, /save FILE, /quit."""
    from localtune.chat.session import ChatSession, Sampling, find_models
    from localtune.errors import UsageError
    from localtune.chat.runtime import open_gguf

    tuned, base = find_models(target)
    base = base_file or base
    if compare and base is None:
        raise UsageError("--compare needs a base model", hint="pass --base BASE.gguf, or chat with a RUN_DIR")
    sampling = Sampling(temperature, top_p, max_tokens)
    models = [("fine-tuned" if compare else None, tuned)] + ([("base", base)] if compare else [])
    sessions = [(label, ChatSession(open_gguf(path, n_ctx=ctx), system=system, sampling=sampling,
                                    notice=lambda m: click.echo(m, err=True))) for label, path in models]

    def answer(text: str) -> None:
        for label, session in sessions:
            if label:
                click.echo(f"[{label}] ", nl=False)
            session.ask(text, on_token=lambda piece: click.echo(piece, nl=False))
            click.echo()

    if prompt is not None:
        answer(prompt)
        return
    click.echo(f"chatting with {tuned}" + (f" and {base}" if compare else "") + "; /quit to leave")
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            for _, s in sessions:
                s.reset()
            click.echo("(history cleared)")
        elif line.startswith("/system"):
            for _, s in sessions:
                s.system = line[len("/system"):].strip() or None
                s.reset()
            click.echo("(system prompt set; history cleared)")
        elif line.startswith("/save"):
            path = line[len("/save"):].strip() or "chat.json"
            click.echo(f"(saved to {sessions[0][1].save(path)})")
        else:
            try:
                answer(line)
            except LocaltuneError as exc:  # e.g. a prompt too long for the window: say so, keep chatting
                click.echo(exc.render(), err=True)


@main.command("tui")
@click.option("--workspace", "-w", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="Folder holding the run folders.")
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


if __name__ == "__main__":
    main()
