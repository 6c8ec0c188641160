"""`localtune eval` from start to finish: what to evaluate, on which rows, against what, and where it goes.

- RUN_DIR: the tuned GGUF of its bundle (every quant with all_quants), the bundle's base GGUF (or
  --base), the run's validation split (or --data), few-shot turns from its training rows, tokens
  from the run's tokenizer and chat template. A report folder goes to RUN_DIR/eval/<timestamp> and
  the summary into the bundle's README card.
- A GGUF inside a run's gguf/ folder is evaluated as that run with that file as the tuned model.
- Any other GGUF: --data is needed; tokens come from llama.cpp's tokenizer and the GGUF's template;
  the base (with --base) is compared zero-shot and, when --shots-from gives training rows, few-shot.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from localtune.errors import UsageError
from localtune.evaluation import report as rep
from localtune.evaluation import runner
from localtune.evaluation.rows import EvalRows, file_rows, run_rows
from localtune.events import EvalFinished, EvalProgress
from localtune.runs.layout import RunDir


def find_run(target: Path) -> tuple[Path | None, list[Path], Path | None]:
    """(run folder or None, tuned GGUFs, base GGUF or None) for a run folder or a GGUF file."""
    from localtune.chat.session import find_models

    if target.is_dir():
        if not RunDir(target).config.is_file():
            raise UsageError(
                f"{target} is not a run folder (no config.yaml)",
                hint="give a RUN_DIR or a .gguf file",
                title="cannot evaluate",
            )
        tuned, base = find_models(target)
        return target, [tuned], base
    if target.suffix != ".gguf":
        raise UsageError(
            f"{target} is not a .gguf file", hint="give a RUN_DIR or a .gguf file", title="cannot evaluate"
        )
    run = RunDir(target.parent.parent)
    if target.parent == run.gguf and run.config.is_file():
        return run.path, [target], next(iter(run.base_ggufs()), None)
    return None, [target], None


def bundle_quants(run_dir: Path) -> list[Path]:
    return RunDir(run_dir).tuned_ggufs()


def evaluate(
    target: str | Path,
    *,
    data: str | None = None,
    base: str | Path | None = None,
    shots_from: str | None = None,
    settings: runner.Settings | None = None,
    out: str | Path | None = None,
    all_quants: bool = False,
    emit=None,
    update_card: bool = True,
) -> rep.EvalReport:
    """Evaluate, write the report folder, and return the report. Raises LocaltuneError for bad input."""
    settings = settings or runner.Settings()
    target = Path(target)
    if not target.exists():
        raise UsageError(f"{target} does not exist", hint="give a RUN_DIR or a .gguf file", title="cannot evaluate")
    run_dir, tuned, found_base = find_run(target)
    from localtune.runs.lock import run_lock

    # A run is held like export holds it: no export rewrites the bundle (or its card) meanwhile.
    with run_lock(run_dir, "evaluation") if run_dir else contextlib.nullcontext():
        return _evaluate(
            target,
            run_dir,
            tuned,
            found_base,
            data=data,
            base=base,
            shots_from=shots_from,
            settings=settings,
            out=out,
            all_quants=all_quants,
            emit=emit,
            update_card=update_card,
        )


def _evaluate(
    target: Path,
    run_dir: Path | None,
    tuned: list[Path],
    found_base: Path | None,
    *,
    data,
    base,
    shots_from,
    settings: runner.Settings,
    out,
    all_quants: bool,
    emit,
    update_card: bool,
) -> rep.EvalReport:
    from localtune.config import load_config

    base_path = Path(base) if base else found_base
    if run_dir is not None:
        cfg = load_config(RunDir(run_dir).config)
        rows = run_rows(run_dir, cfg, data)
        if shots_from:
            rows.train = file_rows(shots_from)
        if all_quants and target.is_dir():  # a prefix bundle has no tuned GGUF: its base GGUF runs with the prefix
            tuned = bundle_quants(run_dir) or tuned
        encoder = runner.run_encoder(run_dir)
    else:
        if data is None:
            raise UsageError(
                f"{target} is not part of a run, so it has no validation rows",
                hint="pass --data FILE with the rows to evaluate",
                title="cannot evaluate",
            )
        rows = EvalRows(file_rows(data), file_rows(shots_from) if shots_from else [], str(data))
        from localtune.chat.runtime import open_gguf

        encoder = runner.gguf_encoder(open_gguf(tuned[0], n_ctx=64))
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise UsageError(
            f"the report folder {out} exists and is not empty",
            hint="give --out a new folder, or leave it out for RUN_DIR/eval/<timestamp>",
            title="report folder in use",
        )
    settings.n_ctx = min(settings.n_ctx, _context_length(tuned[0]))
    plan = runner.plan(rows, encoder, tuned, base_path, settings)

    def progress(done: int, total: int, eta: float) -> None:
        if emit:
            emit(EvalProgress(done, total, round(eta, 1)))

    results, interrupted = runner.run(plan, settings, progress=progress)
    report = rep.build_report(
        plan,
        results,
        settings,
        target=str(target),
        source=rows.source,
        tokenization=encoder.origin,
        partial=interrupted,
    )
    if results:
        folder = Path(out) if out else _new_folder(RunDir(run_dir).eval if run_dir else target.parent / "eval")
        rep.write_report(report, folder)
        if run_dir is not None and update_card:
            rep.update_card(RunDir(run_dir).card, report)
    if emit:
        emit(EvalFinished(str(report.folder or ""), len(results), report.verdict, interrupted))
    return report


def _new_folder(parent: Path) -> Path:
    """parent/<timestamp>, with -2, -3 ... when an eval of the same second is there already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = parent / stamp, 1
    while folder.exists():
        n += 1
        folder = parent / f"{stamp}-{n}"
    return folder


def _context_length(gguf: Path) -> int:
    from localtune.converters.gguf_file import check_gguf

    info = check_gguf(gguf)
    value = info.metadata.get(f"{info.architecture}.context_length")
    return int(value) if value else 2048
