"""`localtune data inspect`: what a data file holds and what training would make of it.

Without a model: detected format, row counts and invalid rows (no model is loaded, nothing heavy
is imported). With a model: token-length statistics against max_seq_len, truncated and dropped
rows, and one example rendered with the chat template, its trained spans marked.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from localtune.config import DataConfig
from localtune.data.dataset import LoadedData, TokenStats, load_examples, template_for, tokenize_all
from localtune.data.formats import Example
from localtune.data.template import make_renderer
from localtune.data.tokenize import IGNORE, TokenizedRow
from localtune.errors import Problem

TRAIN_OPEN, TRAIN_CLOSE = "«", "»"  # around trained text in the rendered example
EXAMPLES_PER_REASON = 3


@dataclass
class InspectReport:
    loaded: LoadedData
    cfg: DataConfig
    model: str | None = None
    template_origin: str | None = None
    stats: TokenStats | None = None
    template_problems: list[Problem] | None = None
    example: Example | None = None
    example_text: str | None = None  # rendered, trained spans between TRAIN_OPEN and TRAIN_CLOSE
    method_note: str | None = None  # what the adapter method changes about the rows (methods.data_note)

    @property
    def invalid(self) -> list[Problem]:
        return self.loaded.problems + (self.template_problems or [])


def inspect_data(
    cfg: DataConfig,
    tokenizer=None,
    *,
    model: str | None = None,
    chat_template: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InspectReport:
    loaded = load_examples(cfg.path, cfg.format, skip_invalid=cfg.skip_invalid, strict=False)
    report = InspectReport(loaded, cfg, model=model)
    if loaded.examples:
        with_tools = [e for e in loaded.examples[:200] if e.details]  # show a tool/reasoning row if there is one
        report.example = max(with_tools or loaded.examples[:50], key=lambda e: len(e.messages or ()))
    if tokenizer is None or not loaded.examples:
        return report
    template = template_for(loaded.examples, tokenizer, chat_template, cfg.reasoning)
    render = make_renderer(tokenizer, template)
    report.template_origin = template.origin
    report.template_problems = []
    rows, report.stats = tokenize_all(loaded.examples, tokenizer, render, cfg, report.template_problems, progress)
    shown = next((r for r in rows if r.where == report.example.where), rows[0] if rows else None)
    if shown is not None:
        report.example_text = mark_trained(shown, tokenizer)
    return report


def mark_trained(row: TokenizedRow, tokenizer) -> str:
    """Decode a row, wrapping each run of trained tokens in « »."""
    out, run, trained = [], [], None
    for tid, label in zip(row.input_ids, row.labels):
        is_trained = label != IGNORE
        if trained is not None and is_trained != trained:
            out.append(_piece(tokenizer, run, trained))
            run = []
        run.append(tid)
        trained = is_trained
    if run:
        out.append(_piece(tokenizer, run, trained))
    return "".join(out)


def _piece(tokenizer, ids: list[int], trained: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return f"{TRAIN_OPEN}{text}{TRAIN_CLOSE}" if trained else text


def render_report(report: InspectReport) -> str:
    """The plain-text report printed by the CLI."""
    lines: list[str] = []
    loaded = report.loaded
    for f in loaded.files:
        lines.append(f"file: {f.path}")
        lines.append(f"  format: {f.format} (from {f.detected_from})")
        lines.append(
            f"  rows: {f.rows} read, {f.valid} valid, {f.rows - f.valid} invalid"
            + (f"; {f.blank_lines} blank line(s) skipped" if f.blank_lines else "")
        )
    total = sum(f.rows for f in loaded.files)
    if len(loaded.files) > 1:
        lines.append(f"all files: {total} rows, {len(loaded.examples)} valid")
    invalid = report.invalid
    if invalid:
        action = (
            "dropped (--skip-invalid)"
            if report.cfg.skip_invalid
            else "training would stop; fix them or pass --skip-invalid"
        )
        lines.append(f"invalid rows: {len(invalid)}, {action}")
        by_reason: dict[str, list[Problem]] = {}
        for p in invalid:
            by_reason.setdefault(p.reason, []).append(p)
        for reason, probs in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {reason}: {len(probs)}")
            for p in probs[:EXAMPLES_PER_REASON]:
                lines.append("    " + p.render().replace("\n", "\n    "))
    kinds = Counter(e.kind for e in loaded.examples)
    if kinds:
        lines.append("examples: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    lines += _tool_summary(loaded.examples, report.cfg.reasoning)
    st = report.stats
    if st is None:
        if loaded.examples:
            lines.append("tokens: pass --model M for token-length statistics and the rendered template")
            if report.example is not None:
                lines.append(f"example ({report.example.where}), trained parts marked {TRAIN_OPEN} {TRAIN_CLOSE}:")
                lines.append(_indent(_plain_example(report.example, report.cfg.train_on_prompt)))
        return "\n".join(lines)
    s = st.summary()
    lines.append(
        f"tokens ({report.model}, chat template: {report.template_origin}, max_seq_len {report.cfg.max_seq_len}):"
    )
    if s:
        lines.append(
            f"  length per row: min {s['min']}, median {s['median']:g}, mean {s['mean']:g}, "
            f"p95 {s['p95']}, max {s['max']}"
        )
    lines.append(f"  truncated: {st.truncated} row(s); raw text split into windows: {st.windows_split} row(s)")
    dropped = st.dropped_no_trainable
    lines.append(
        f"  dropped, no trainable tokens left: {len(dropped)}"
        + (f" (e.g. {', '.join(dropped[:EXAMPLES_PER_REASON])})" if dropped else "")
    )
    share = st.trainable_tokens / st.total_tokens if st.total_tokens else 0.0
    lines.append(
        f"  trainable tokens: {st.trainable_tokens:,} of {st.total_tokens:,} ({share:.0%})"
        + (" [--train-on-prompt]" if report.cfg.train_on_prompt else "")
    )
    if report.method_note:
        lines.append(report.method_note)
    if report.example_text is not None:
        lines.append(f"example ({report.example.where}), trained tokens marked {TRAIN_OPEN} {TRAIN_CLOSE}:")
        lines.append(_indent(report.example_text))
    return "\n".join(lines)


def _plain_example(ex: Example, train_on_prompt: bool) -> str:
    def mark(text: str, trained: bool) -> str:
        return f"{TRAIN_OPEN}{text}{TRAIN_CLOSE}" if trained or train_on_prompt else text

    if ex.kind == "text":
        return mark(ex.text, True)
    if ex.kind == "completion":
        return mark(ex.prompt, False) + mark(ex.completion, True)
    out = []
    if ex.tools:
        out.append("[tools] " + ", ".join(t["function"]["name"] for t in ex.tools))
    for m in ex.as_messages():
        role, content = m["role"], m["content"]
        if m.get("reasoning_content"):
            out.append(f"[{role} reasoning] " + mark(m["reasoning_content"], True))
        if content or not m.get("tool_calls"):
            label = f"tool result {m.get('name', '')}".strip() if role == "tool" else role
            out.append(f"[{label}] " + mark(content, role == "assistant"))
        for call in m.get("tool_calls") or ():
            fn = call["function"]
            out.append(
                f"[{role} call] " + mark(f"{fn['name']}({json.dumps(fn['arguments'], ensure_ascii=False)})", True)
            )
    return "\n".join(out)


def _tool_summary(examples: list[Example], policy: str) -> list[str]:
    """Counts of tools, calls, results and reasoning, when the data has any."""
    details = [d for e in examples for d in e.details or ()]
    if not details and not any(e.tools for e in examples):
        return []
    names = Counter(t["function"]["name"] for e in examples for t in e.tools or ())
    calls = sum(len(d.get("tool_calls", ())) for d in details)
    results = sum("tool_call_id" in d for d in details)
    thoughts = sum("reasoning_content" in d for d in details)
    # last_turn keeps each turn's reasoning in that turn's own row (data/tokenize.py), so all of it trains
    kept = 0 if policy == "drop" else thoughts
    shown = ", ".join(f"{n} ({k} rows)" for n, k in names.most_common(5)) or "none"
    return [
        f"tools: {shown}",
        f"  {calls} call(s) train; {results} tool result(s) never train; reasoning: {kept} of {thoughts} "
        f"block(s) train under data.reasoning {policy}",
    ]


def _indent(text: str) -> str:
    return "\n".join("  | " + line for line in text.splitlines() or [""])
