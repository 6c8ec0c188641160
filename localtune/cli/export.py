"""`localtune export`, `localtune verify` and `localtune merge`: from a run (or a Hugging Face folder) to
verified GGUF files, nothing compiled.

Run as:  localtune export RUN_DIR|HF_FOLDER [--quant q4_k_m,q8_0]
         localtune verify FILE.gguf --against HF_FOLDER
         localtune merge RUN_DIR [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from localtune.cli.main import friendly_errors, main
from localtune.cli.printers import EventPrinter
from localtune.config import knob
from localtune.runs.layout import LIBRARY_LOG, RunDir

_quants = knob("export.quants")
QUANT = click.option(
    _quants.flag,
    _quants.short,
    "quant",
    default=None,
    help=_quants.doc + " Default for a run: q8_0 under 1B parameters, q4_k_m above.",
)


@main.command("export")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@QUANT
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

    from localtune.console import report_to
    from localtune.errors import UsageError
    from localtune.export.gguf import export_adapter, export_model, is_run_dir, require_hf_folder

    # library warnings: into the run folder's library.log, or beside the GGUF files of a model folder
    log = (
        RunDir(source).library_log if is_run_dir(Path(source)) else Path(out_dir or Path(source) / "gguf") / LIBRARY_LOG
    )
    with report_to(EventPrinter(err=True, kinds=("progress",)), log):
        src = Path(source)
        out = Path(out_dir) if out_dir else src / "gguf"
        if adapter:
            if not is_run_dir(src):
                raise UsageError(
                    f"--adapter exports a training run's adapter; {src} is not a run folder",
                    hint="localtune export RUN_DIR --adapter",
                )
            export_adapter(src, out, say=click.echo)
            return
        quants = [q.strip().lower() for q in quant.split(",") if q.strip()] if quant else None
        if is_run_dir(src):
            from localtune.export.bundle import export_run

            if out_dir:
                raise UsageError(
                    "a run's export bundle goes to RUN_DIR/gguf; --out applies to HF folders",
                    hint=f"localtune export {src}",
                )
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
    """Tensor-by-tensor progress with ETA on a terminal."""

    def __init__(self):
        self.start: dict[str, float] = {}

    def __call__(self, out_type: str, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        import time

        from localtune.events import Progress, progress_text

        now = time.monotonic()
        start = self.start.setdefault(out_type, now)
        eta = (now - start) / done * (total - done) if done and now > start else None
        line = progress_text(Progress(f"converting to {out_type}", done, total, "tensors", eta))
        click.echo("\r" + line + "   ", err=True, nl=done == total)


@main.command("verify")
@click.argument("gguf_file", type=click.Path(dir_okay=False))
@click.option(
    "--against",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The Hugging Face folder the GGUF came from, or the run folder it was exported from.",
)
@friendly_errors
def verify_cmd(gguf_file, against):
    """Check GGUF_FILE against the Hugging Face model: tokenizer, special tokens, chat template,
    logits (16/32-bit files) or perplexity (quantized files). Against a run folder, the reference is what
    the run trained: its merged model, or, for prompt, P- and prefix tuning, peft's forward of the base +
    the run's adapter (the GGUF's route: portable, input embeddings or KV-cache prefix). Exits 1 on a failure."""
    from localtune.export.verify import verify

    report = verify_against_run(Path(gguf_file), Path(against)) if RunDir.is_run(against) else None
    report = report or verify(gguf_file, against)
    report.save(Path(gguf_file).with_name(Path(gguf_file).name + ".verify.json"))
    click.echo(report.render())
    sys.exit(0 if report.passed else 1)


def verify_against_run(gguf: Path, run_dir: Path):
    """The report for a GGUF checked against the run it came from (see verify_cmd)."""
    from localtune.config import load_config
    from localtune.errors import UsageError
    from localtune.methods import method

    run = RunDir(run_dir)
    cfg = load_config(run.config)
    chosen = method(cfg.adapter.method)
    if chosen.kind == "adaption":
        raise UsageError(
            f"{run_dir} trained {chosen.title}, which has no GGUF form to verify",
            hint=f"distil it (localtune distill {run_dir}) and verify the distilled run's GGUF against that",
        )
    if chosen.kind in ("virtual", "prefix"):
        from localtune.chat.routes import spec_for
        from localtune.converters.gguf_file import check_gguf
        from localtune.export.verify import file_type_name
        from localtune.export.verify_prompts import route_report
        from localtune.model.loading import resolve_base

        base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        template = run.chat_template.read_text(encoding="utf-8") if run.chat_template.is_file() else None
        return route_report(
            spec_for(gguf),
            base.folder,
            run.adapter,
            file_type=file_type_name(check_gguf(gguf)),
            chat_template=template,
        )
    if not run.has_merged:
        raise UsageError(f"{run_dir} has no merged model to verify against", hint=f"localtune merge {run_dir}")
    from localtune.export.verify import verify

    return verify(gguf, run.merged)


@main.command("merge")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", "-o", "out_dir", type=click.Path(file_okay=False), help="Output folder (default RUN_DIR/merged)."
)
@friendly_errors
def merge_cmd(run_dir, out_dir):
    """Merge RUN_DIR's adapter into a 16-bit (fp32 on the CPU) copy of its base: a normal HF folder."""

    from localtune.console import report_to
    from localtune.export.merge import merge_run
    from localtune.runs.lock import run_lock

    with (
        run_lock(run_dir, "merge"),
        report_to(EventPrinter(err=True, kinds=("progress",)), RunDir(run_dir).library_log),
    ):
        result = merge_run(run_dir, out_dir)
    click.echo(f"merged into {result.folder} ({result.dtype}); max |Δlogit| vs base+adapter {result.max_delta:.2e}")
