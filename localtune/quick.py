"""`localtune quick`: data to a verified, chattable GGUF in one command, resumable phase by phase.

Phases: preflight (data validation, memory plan, free disk), train, export (merge, GGUF, verify,
Modelfile, card), sample (base vs fine-tuned answer), eval (a short `localtune eval` on the
validation rows: tuned vs base vs few-shot, with a verdict). Finished phases are recorded in
`RUN_DIR/quick.json`; running `quick` again on the same --out resumes training from its last
checkpoint and skips what is done. Phase events go to `events.jsonl` like every other event.

With no arguments it runs the built-in demo: SmolLM2-135M-Instruct learns to answer as
"Captain Byte" from a small dataset shipped in the package.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from localtune.config import Config
from localtune.events import Emitter, JsonlSink, Phase
from localtune.files import write_json
from localtune.runs.layout import RunDir

PHASES = ("preflight", "train", "export", "sample", "eval")
QUICK_EVAL_ROWS = 16  # the eval phase's sample of validation rows; `localtune eval` takes them all


@dataclass
class QuickResult:
    exit_code: int
    run_dir: Path
    tuned: Path | None = None
    base: Path | None = None
    sample: dict | None = None
    eval_report: object | None = None


def _state(run: RunDir) -> dict:
    return json.loads(run.quick_json.read_text()) if run.quick_json.is_file() else {"done": []}


def _mark(run: RunDir, state: dict, phase: str) -> None:
    state["done"].append(phase)
    write_json(run.quick_json, state, indent=None)


def run_quick(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    quants: list[str] | None = None,
    sinks=(),
    say=print,
    prompt: str | None = None,
) -> QuickResult:
    from localtune.data.dataset import load_examples
    from localtune.export.bundle import export_run
    from localtune.model.loading import resolve_base
    from localtune.train.run import check_writable, train_run

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    check_writable(run_dir)
    if run.config.is_file() and not run.quick_json.is_file():
        from localtune.errors import UsageError

        raise UsageError(
            f"{run_dir} holds a run that `quick` did not start",
            hint="choose another --out, or continue it with `localtune train --resume`",
            title="output folder in use",
        )
    emit = Emitter(JsonlSink(run.events), *sinks)
    state = _state(run)
    start = time.monotonic()
    result = QuickResult(0, run_dir)

    def phase(i: int, name: str, status: str) -> None:
        emit(Phase(name, status, i + 1, len(PHASES), round(time.monotonic() - start, 1)))
        if status != "done":
            say(f"== phase {i + 1}/{len(PHASES)}: {name}" + (" (already done)" if status == "skipped" else ""))

    loaded = None  # the data as preflight read it, handed to training (None when preflight is skipped)
    for i, name in enumerate(PHASES):
        if name in state["done"] and name != "sample":
            phase(i, name, "skipped")
            continue
        phase(i, name, "started")
        if name == "preflight":
            from localtune.doctor import FAIL, run_checks

            failed = [c for c in run_checks(run_dir.parent) if c.status == FAIL]  # silent unless something fails
            if failed:
                from localtune.errors import UsageError

                raise UsageError(
                    "\n".join(c.render() for c in failed),
                    title="this machine is not ready",
                    hint="fix the lines above (localtune doctor shows every check)",
                )
            from localtune.methods import method

            if method(cfg.adapter.method).kind == "adaption":
                from localtune.errors import UsageError

                raise UsageError(
                    f"`quick` ends in a chattable GGUF, and {method(cfg.adapter.method).title} has no GGUF form "
                    "(a gated second attention over learned prompts)",
                    hint=f"train it with `localtune train --method {cfg.adapter.method} ... --out RUN_DIR`, then "
                    "`localtune distill RUN_DIR` makes a LoRA of it that exports; or use another --method",
                    title="method not available in quick",
                )
            loaded = load_examples(cfg.data.path, cfg.data.format, skip_invalid=cfg.data.skip_invalid)
            base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
            say(
                f"data: {len(loaded.examples)} valid rows in {len(loaded.files)} file(s); model: {base.spec} "
                f"({base.architecture})"
            )
        elif name == "train":
            from localtune.train.checkpoint import CheckpointStore

            # Only a complete checkpoint counts: a save cut short leaves just a temporary folder.
            resume = bool(CheckpointStore(run.checkpoints, 1, warn=say).complete())
            if cfg.train.gpus > 1:  # data-parallel ranks (train/launch.py); rank 0 prints the training itself
                from localtune.train.launch import launch_train

                code = launch_train(cfg, run_dir, resume=resume, say=say)
            else:
                code = train_run(cfg, run_dir, resume=resume, sinks=sinks, loaded=loaded).exit_code
            if code in (130, 143):
                say(f"interrupted: run `localtune quick --out {run_dir}` again to continue")
            if code:  # otherwise the ranks said what failed
                result.exit_code = code
                return result
        elif name == "export":
            bundle = export_run(run_dir, quants, say=say)
            failed = [f.path for f in bundle.tuned if f.verify and not f.verify.passed]
            if failed:
                say(f"error: verification failed for {', '.join(map(str, failed))}")
                result.exit_code = 1
                return result
        elif name == "sample":
            result.sample = sample_answers(run_dir, prompt, say=say)
        elif name == "eval":
            report = quick_eval(run_dir, emit, say=say)
            result.eval_report = report
            if report is not None and report.partial:
                say(f"interrupted: run `localtune quick --out {run_dir}` again to evaluate again")
                result.exit_code = 130
                return result
        phase(i, name, "done")
        if name != "sample":
            _mark(run, state, name)
    from localtune.chat.session import find_models

    result.tuned, result.base = find_models(run_dir)
    say(
        f"done in {time.monotonic() - start:.0f}s. Chat with it: localtune chat {run_dir}  "
        f"(compare with the base: --compare)"
    )
    return result


def sample_answers(run_dir: Path, prompt: str | None, *, say=print) -> dict:
    """The base and the fine-tuned GGUF answering the same prompt, side by side."""
    from localtune.chat.routes import find_routes, open_route
    from localtune.chat.session import ChatSession, Sampling
    from localtune.chat.tool_calls import call_line

    tuned, base = find_routes(run_dir)
    sample, tools = _sample_prompt(run_dir)
    prompt = prompt or sample
    answers = {"prompt": prompt}
    for label, path in (("base", base), ("fine-tuned", tuned)):
        if path is None:
            continue
        route = open_route(path, n_ctx=1024)
        offered = tools if getattr(route, "kind", "plain") not in ("vectors", "prefix") else None  # no template there
        session = ChatSession(route, sampling=Sampling(temperature=0.0, max_tokens=96), tools=offered)
        text = session.ask(prompt)
        reply = session.last_reply  # with tool data, the calls are what the tuning changed
        answers[label] = "  ".join([text.strip(), *map(call_line, reply.calls), *reply.raw_calls]).strip()
    say(f"prompt: {prompt}" + (f" (with the tools {', '.join(t['function']['name'] for t in tools)})" if tools else ""))
    for label in ("base", "fine-tuned"):
        if label in answers:
            say(f"  {label:>10}: {answers[label]}")
    return answers


def quick_eval(run_dir: Path, emit, *, say=print):
    """A short `localtune eval` on the run's validation rows; None when the data has none to spare."""
    from localtune.evaluation.evaluate import evaluate
    from localtune.evaluation.report import render_text
    from localtune.evaluation.rows import NothingToEvaluate
    from localtune.evaluation.runner import Settings

    try:
        report = evaluate(run_dir, settings=Settings(max_rows=QUICK_EVAL_ROWS, max_tokens=128), emit=emit)
    except NothingToEvaluate as exc:
        say(f"eval skipped: {exc.message}; run `localtune eval {run_dir} --data HELD_OUT_FILE` to measure it")
        return None
    say(render_text(report))
    return report


def _sample_prompt(run_dir: Path) -> tuple[str, list[dict] | None]:
    """A prompt to compare base and tuned on, and the tools to offer with it (a tool-calling run's own)."""
    from localtune.config import load_config
    from localtune.data.dataset import load_examples
    from localtune.data.readers import resolve_data_files
    from localtune.demo import DEMO_DATA, DEMO_TOOLS_DATA, HELD_OUT_PROMPTS, TOOL_HELD_OUT

    cfg = load_config(RunDir(run_dir).config)
    files = resolve_data_files(cfg.data.path) if cfg.data.path in ("demo", "demo-tools") else [Path(cfg.data.path)]
    examples = load_examples(cfg.data.path, cfg.data.format, skip_invalid=True, strict=False).examples
    tools = next((ex.tool_list for ex in examples if ex.tools), None)
    if files == [DEMO_DATA]:
        return HELD_OUT_PROMPTS[0], None
    if files == [DEMO_TOOLS_DATA]:
        return TOOL_HELD_OUT[0][0], tools
    for ex in examples:
        if ex.messages:
            return next(c for r, c in ex.messages if r == "user"), tools
        if ex.prompt:
            return ex.prompt, None
    return "Hello! Who are you?", None
