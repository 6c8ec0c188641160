"""What `localtune eval` found: metrics per system with intervals, per-row wins, a verdict, and the files.

Per system: teacher-forced loss (token-weighted over rows) and its perplexity, exact match, token F1,
ROUGE-L, mean answer length in tokens, and the share of answers that ended by EOS/end-of-turn within
their limit; 95% percentile-bootstrap intervals over rows (1,000 resamples, seeded). Per row, the first
tuned GGUF against each baseline: wins/ties/losses on ROUGE-L and on loss.

The verdict fails when the tuned GGUF runs to its limit on most rows (a model that never stops is
broken in every chat); otherwise it says, per baseline, whether the tuned GGUF is ahead (lower loss
and higher ROUGE-L), behind (both worse) or mixed.

Files, in OUT (default RUN_DIR/eval/<timestamp>): report.md (metrics, verdict, then prompt, reference
and each system's answer for a sample of rows), report.json (everything, every row), chart.png.
They are written to a temporary folder and renamed, so a report folder is always complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localtune.evaluation import metrics
from localtune.evaluation.runner import Plan, RowResult, Settings, System, row_loss
from localtune.files import atomic_folder, write_text
from localtune.runs.layout import RunDir

METRICS = (
    ("loss", "loss", False),
    ("exact", "exact match", True),
    ("f1", "token F1", True),
    ("rouge_l", "ROUGE-L", True),
    ("stopped", "stopped", True),
)
MIN_STOP_RATE = 0.5
SAMPLE_ROWS = 8


@dataclass
class SystemSummary:
    name: str
    role: str
    gguf: str
    shots: int
    values: dict[str, float]  # loss, ppl, exact, f1, rouge_l, stopped, length
    intervals: dict[str, tuple[float, float]]


@dataclass
class Comparison:
    baseline: str
    rouge_l: tuple[int, int, int]  # wins, ties, losses of the tuned GGUF
    loss: tuple[int, int, int]
    outcome: str  # ahead, behind, mixed


@dataclass
class EvalReport:
    target: str
    source: str
    tokenization: str
    settings: dict
    systems: list[SystemSummary]
    comparisons: list[Comparison]
    verdict: str
    passed: bool
    partial: bool
    rows: list[RowResult]
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shots: list[str] = field(default_factory=list)  # where each few-shot row came from
    folder: Path | None = None

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("rows", "folder")}
        d["rows"] = [
            {
                "where": r.where,
                "prompt": r.prompt,
                "reference": r.reference,
                "answers": {k: asdict(a) for k, a in r.answers.items()},
            }
            for r in self.rows
        ]
        return _finite(d)


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _per_row(rows: list[RowResult], name: str, key: str) -> list[float]:
    return [float(getattr(r.answers[name], key)) for r in rows]


def summarize(system: System, rows: list[RowResult]) -> SystemSummary:
    values = {"loss": row_loss(rows, system.name)}
    values["ppl"] = math.exp(values["loss"]) if math.isfinite(values["loss"]) else math.nan
    intervals = {"loss": metrics.bootstrap_ci(rows, lambda rs: row_loss(list(rs), system.name))}
    for key in ("exact", "f1", "rouge_l", "stopped"):
        per = _per_row(rows, system.name, key)
        values[key] = sum(per) / len(per) if per else math.nan
        intervals[key] = metrics.bootstrap_ci(per, lambda xs: sum(xs) / len(xs))
    lengths = _per_row(rows, system.name, "gen_tokens")
    values["length"] = sum(lengths) / len(lengths) if lengths else math.nan
    return SystemSummary(system.name, system.role, str(system.gguf), system.shots, values, intervals)


def compare(rows: list[RowResult], tuned: str, baseline: str) -> Comparison:
    rl = metrics.wins_ties_losses(_per_row(rows, tuned, "rouge_l"), _per_row(rows, baseline, "rouge_l"))
    per_loss = lambda name: [r.answers[name].nll / max(1, r.answers[name].ref_tokens) for r in rows]  # noqa: E731
    lo = metrics.wins_ties_losses(per_loss(tuned), per_loss(baseline), higher_is_better=False)
    t, b = row_loss(rows, tuned), row_loss(rows, baseline)
    rouge_t, rouge_b = (sum(_per_row(rows, n, "rouge_l")) for n in (tuned, baseline))
    if t < b and rouge_t >= rouge_b:
        outcome = "ahead"
    elif t > b and rouge_t < rouge_b:
        outcome = "behind"
    else:
        outcome = "mixed"
    return Comparison(baseline, rl, lo, outcome)


def build_report(
    plan: Plan, rows: list[RowResult], settings: Settings, *, target: str, source: str, tokenization: str, partial: bool
) -> EvalReport:
    systems = [summarize(s, rows) for s in plan.systems] if rows else []
    tuned = next((s for s in systems if s.role == "tuned"), None)
    comparisons = [compare(rows, tuned.name, s.name) for s in systems if tuned and s.role != "tuned"] if rows else []
    verdict, passed = _verdict(tuned, systems, comparisons, len(rows), partial)
    return EvalReport(
        target,
        source,
        tokenization,
        asdict(settings),
        systems,
        comparisons,
        verdict,
        passed,
        partial,
        rows,
        plan.skipped,
        plan.notes,
        [s.where for s in plan.shots],
    )


def _verdict(tuned, systems, comparisons, n: int, partial: bool) -> tuple[str, bool]:
    scope = f"on {n} held-out row(s)" + (" (interrupted: a partial report)" if partial else "")
    if tuned is None or n == 0:
        return f"no row was evaluated {scope}", False
    ran_on = round((1 - tuned.values["stopped"]) * n)
    if tuned.values["stopped"] < MIN_STOP_RATE:
        return (
            f"FAIL: {tuned.name} never stopped on {ran_on} of {n} rows (no EOS/end-of-turn within the token "
            "limit): it would run on in every chat; check the chat template and EOS of the export"
        ), False
    by_name = {s.name: s for s in systems}
    parts = []
    for c in comparisons:
        b = by_name[c.baseline]
        label = "the base" if b.role == "base" else f"{b.shots}-shot prompting of the base"
        won, _, lost = c.rouge_l
        parts.append(
            f"{c.outcome} of {label} (loss {b.values['loss']:.3f} -> {tuned.values['loss']:.3f}, ROUGE-L "
            f"{b.values['rouge_l']:.2f} -> {tuned.values['rouge_l']:.2f}, {won} row(s) better, {lost} worse)"
        )
    if not parts:
        return (
            f"{tuned.name}: loss {tuned.values['loss']:.3f}, ROUGE-L {tuned.values['rouge_l']:.2f} {scope} "
            "(no baseline to compare with)",
            True,
        )
    stops = "" if tuned.values["stopped"] == 1 else f"; it ran to the token limit on {ran_on} row(s)"
    return f"{tuned.name} is " + "; ".join(parts) + f" {scope}{stops}", True


# ---- rendering -------------------------------------------------------------------------------------
def _cell(s: SystemSummary, key: str) -> str:
    v, (lo, hi) = s.values[key], s.intervals[key]
    if not math.isfinite(v):
        return "-"
    if key == "loss":
        return f"{v:.3f} ({lo:.2f}-{hi:.2f})"
    if key == "stopped":
        return f"{v:.0%}"
    return f"{v:.2f} ({lo:.2f}-{hi:.2f})"


def table_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    head = ["system", "loss (95% CI)", "ppl", "exact match", "token F1", "ROUGE-L", "length", "stopped"]
    body = [
        [
            s.name,
            _cell(s, "loss"),
            f"{s.values['ppl']:.2f}" if math.isfinite(s.values["ppl"]) else "-",
            _cell(s, "exact"),
            _cell(s, "f1"),
            _cell(s, "rouge_l"),
            f"{s.values['length']:.1f}",
            _cell(s, "stopped"),
        ]
        for s in report.systems
    ]
    return head, body


def render_text(report: EvalReport) -> str:
    head, body = table_rows(report)
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    lines = [f"eval {report.target}: {len(report.rows)} row(s) from {report.source}", fmt(head)]
    lines += [fmt(r) for r in body]
    for c in report.comparisons:
        lines.append(
            f"tuned vs {c.baseline}: ROUGE-L wins/ties/losses {'/'.join(map(str, c.rouge_l))}, "
            f"loss {'/'.join(map(str, c.loss))}"
        )
    lines += [f"note: {n}" for n in report.notes]
    if report.skipped:
        lines.append(
            f"skipped {len(report.skipped)} row(s): {report.skipped[0]}"
            + (f" and {len(report.skipped) - 1} more" if len(report.skipped) > 1 else "")
        )
    lines.append("verdict: " + report.verdict)
    if report.folder:
        lines.append(f"report: {report.folder / 'report.md'}")
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]


def render_markdown(report: EvalReport) -> str:
    head, body = table_rows(report)
    lines = [
        f"# Evaluation of `{report.target}`",
        "",
        f"{len(report.rows)} held-out row(s) from {report.source}"
        + (" (partial: interrupted)" if report.partial else "")
        + ".",
        f"Tokens: {report.tokenization}. Greedy answers; loss is teacher-forced on the reference answer.",
        "",
        "## Verdict",
        "",
        report.verdict,
        "",
        "## Metrics",
        "",
        "![metrics per system](chart.png)",
        "",
    ]
    lines += _md_table(head, body)
    if report.comparisons:
        lines += [
            "",
            "| tuned vs | ROUGE-L wins / ties / losses | loss wins / ties / losses | outcome |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {c.baseline} | {' / '.join(map(str, c.rouge_l))} | {' / '.join(map(str, c.loss))} | {c.outcome} |"
            for c in report.comparisons
        ]
    if report.notes or report.skipped:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes] + [f"- skipped {s}" for s in report.skipped]
    if report.shots:
        lines += ["", f"Few-shot turns came from these training rows: {', '.join(report.shots)}."]
    lines += ["", "## Sample of rows", ""]
    for r in report.rows[:SAMPLE_ROWS]:
        lines += [
            f"### {r.where}",
            "",
            f"**prompt**: {_md_escape(r.prompt)}",
            "",
            f"**reference**: {_md_escape(r.reference)}",
            "",
            "| system | answer | ROUGE-L | stopped |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {_md_escape(a.text) or '(empty)'} | {a.rouge_l:.2f} | {'yes' if a.stopped else 'no'} |"
            for name, a in r.answers.items()
        ]
        lines.append("")
    return "\n".join(lines) + "\n"


def draw_chart(report: EvalReport, path: Path) -> Path:
    """One panel per metric, a bar per system with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in report.systems]
    colors = ["#1f77b4" if s.role == "tuned" else "#7f7f7f" if s.role == "base" else "#ff7f0e" for s in report.systems]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.6), constrained_layout=True)
    for ax, (key, label, higher) in zip(axes, METRICS, strict=True):
        values = [s.values[key] for s in report.systems]
        lo = [max(0.0, v - s.intervals[key][0]) for v, s in zip(values, report.systems, strict=True)]
        hi = [max(0.0, s.intervals[key][1] - v) for v, s in zip(values, report.systems, strict=True)]
        ax.bar(range(len(names)), values, color=colors, yerr=[lo, hi], capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        if higher:
            ax.set_ylim(0, 1.05)
    fig.suptitle(
        f"{report.target}: {len(report.rows)} held-out rows" + (" (partial)" if report.partial else ""), fontsize=10
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: EvalReport, out_dir: Path) -> Path:
    """report.md, report.json and chart.png in out_dir, written to a temporary folder, fsync'd and renamed
    (files.atomic_folder): a reader (latest_report, the TUI) sees a whole report or none."""
    try:
        with atomic_folder(out_dir) as tmp:
            report.folder = out_dir
            (tmp / "report.json").write_text(
                json.dumps(report.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8"
            )
            (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
            if report.systems:
                draw_chart(report, tmp / "chart.png")
    except BaseException:
        report.folder = None
        raise
    return out_dir


def card_section(report: EvalReport) -> str:
    head, body = table_rows(report)
    lines = [
        "## Evaluation",
        "",
        f"`localtune eval` on {len(report.rows)} held-out row(s) from {report.source}"
        + (f" (report: `{report.folder.name}`)" if report.folder else "")
        + ":",
        "",
    ] + _md_table(head, body)
    return "\n".join(lines + ["", f"Verdict: {report.verdict}", ""])


def update_card(card: Path, report: EvalReport) -> None:
    """Put the summary into the bundle's README card, replacing an earlier evaluation section."""
    if not card.is_file():
        return
    text = card.read_text(encoding="utf-8")
    start = text.find("## Evaluation")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    at = text.find("## Use")
    section = card_section(report) + "\n"
    text = text[:at] + section + text[at:] if at >= 0 else text.rstrip("\n") + "\n\n" + section
    write_text(card, text)


def latest_report(run_dir: Path) -> dict | None:
    """The newest complete report.json under RUN_DIR/eval, or None."""
    folder = RunDir(run_dir).eval
    found = (
        sorted(
            (p for p in folder.glob("*/report.json") if not p.parent.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        if folder.is_dir()
        else []
    )
    for path in reversed(found):
        try:
            return {**json.loads(path.read_text(encoding="utf-8")), "folder": str(path.parent)}
        except (OSError, ValueError):
            continue
    return None
