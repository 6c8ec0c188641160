"""The data pipeline from files to training rows, in two stages.

1. `load_examples` (no model needed): read files, detect each file's row format, validate every row.
   Strict by default: any invalid row stops here with every problem listed (`file:line`, field, fix).
   With skip_invalid the bad rows are dropped and counted by reason.
2. `prepare_data` (needs the tokenizer): split off validation rows, render with the chat template,
   tokenize, truncate, drop rows with nothing left to learn, optionally pack.

Run as:  localtune data inspect FILE [--model M]
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from localtune.config import DataConfig
from localtune.data.formats import Example, describe_signatures, detect_format, to_example
from localtune.data.packing import PackedRow, pack_rows
from localtune.data.readers import read_file, resolve_data_files
from localtune.data.template import ChatTemplate, TemplateError, make_renderer, resolve_chat_template
from localtune.data.tokenize import TokenizedRow, tokenize_example
from localtune.errors import DataError, Problem

MIN_ROWS_FOR_SPLIT = 10
PROGRESS_EVERY = 250


@dataclass
class FileSummary:
    path: str
    format: str
    detected_from: str  # "fields of line 1", "--format", ".txt file"
    rows: int = 0
    valid: int = 0
    blank_lines: int = 0


@dataclass
class LoadedData:
    files: list[FileSummary]
    examples: list[Example]
    problems: list[Problem]  # invalid rows (only non-empty with skip_invalid, or from load(strict=False))

    def problem_counts(self) -> Counter:
        return Counter(p.reason for p in self.problems)


def load_examples(spec: str, fmt: str = "auto", *, skip_invalid: bool = False, strict: bool = True) -> LoadedData:
    """Read and validate every row of `spec`. Raises DataError on unreadable files, and on invalid
    rows unless skip_invalid (or strict=False, used by `data inspect` to report rather than stop)."""
    files, examples, problems = [], [], []
    for path in resolve_data_files(spec):
        first_of_file = len(problems)
        read = read_file(path)
        problems += read.problems
        file_format, origin = _file_format(read, fmt)
        summary = FileSummary(
            str(path), file_format, origin, blank_lines=read.blank_lines, rows=len(read.records) + len(read.problems)
        )
        for record in read.records:
            result = to_example(record, file_format)
            if isinstance(result, Problem):
                problems.append(result)
            else:
                examples.append(result)
                summary.valid += 1
        files.append(summary)
        problems[first_of_file:] = sorted(problems[first_of_file:], key=_line_of)
    if problems and strict and not skip_invalid:
        raise DataError(problems, heading=f"{len(problems)} invalid row(s) in the data; nothing was trained")
    if not examples and strict:
        raise DataError(
            problems or [Problem(spec, None, "no rows", "add some rows to the data", "empty")],
            heading="no valid rows in the data",
        )
    return LoadedData(files, examples, problems)


def _line_of(problem: Problem) -> int:
    tail = problem.where.rsplit(":", 1)[-1].rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _file_format(read, fmt: str) -> tuple[str, str]:
    if read.forced_format:
        return read.forced_format, ".txt file (one row per paragraph)"
    if fmt != "auto":
        return fmt, "--format"
    for record in read.records:
        found = detect_format(record.value)
        if found:
            return found, f"fields of {record.where.rsplit('/', 1)[-1]}"
    if not read.records:
        return "text", "no rows to detect from"
    first = read.records[0]
    raise DataError(
        [
            Problem(
                first.where,
                None,
                f"cannot tell the row format from the fields {', '.join(sorted(first.value)) or '(none)'}",
                f"use the fields of one format ({describe_signatures()}), or pass --format",
                "unknown_format",
            )
        ],
        heading="unknown data format",
    )


@dataclass
class TokenStats:
    rows: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens per row before truncation
    truncated: int = 0
    windows_split: int = 0  # raw-text rows split into several windows
    dropped_no_trainable: list[str] = field(default_factory=list)  # where
    trainable_tokens: int = 0
    total_tokens: int = 0

    def summary(self) -> dict[str, float]:
        if not self.lengths:
            return {}
        s = sorted(self.lengths)
        return {
            "min": s[0],
            "median": statistics.median(s),
            "mean": round(statistics.fmean(s), 1),
            "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
            "max": s[-1],
        }


@dataclass
class PreparedData:
    train: list[TokenizedRow] | list[PackedRow]
    val: list[TokenizedRow]
    template: ChatTemplate
    train_stats: TokenStats
    val_stats: TokenStats
    problems: list[Problem]  # rows dropped as invalid (template rejections), with skip_invalid


def split_examples(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic hold-out: `fraction` of the rows (at least 1) when there are enough rows."""
    if fraction <= 0 or len(examples) < MIN_ROWS_FOR_SPLIT:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * fraction))
    val_idx = set(order[:n_val])
    return (
        [e for i, e in enumerate(examples) if i not in val_idx],
        [e for i, e in enumerate(examples) if i in val_idx],
    )


def prepare_data(
    cfg: DataConfig, tokenizer, *, seed: int, loaded: LoadedData | None = None, chat_template: str | None = None
) -> PreparedData:
    """Everything from validated examples to training rows. Raises DataError when nothing trains."""
    loaded = loaded or load_examples(cfg.path, cfg.format, skip_invalid=cfg.skip_invalid)
    if cfg.val_file:
        train_ex = loaded.examples
        val_ex = load_examples(cfg.val_file, cfg.format, skip_invalid=cfg.skip_invalid).examples
    else:
        train_ex, val_ex = split_examples(loaded.examples, cfg.val_fraction, seed)
    template = template_for(train_ex + val_ex, tokenizer, chat_template, cfg.reasoning)
    render = make_renderer(tokenizer, template)
    problems: list[Problem] = []
    train, train_stats = tokenize_all(train_ex, tokenizer, render, cfg, problems)
    val, val_stats = tokenize_all(val_ex, tokenizer, render, cfg, problems)
    if problems and not cfg.skip_invalid:
        raise DataError(
            problems,
            heading=f"{len(problems)} row(s) cannot be rendered with the chat template "
            f"({template.origin}); nothing was trained",
        )
    if not train:
        n = len(train_stats.dropped_no_trainable)
        raise DataError(
            [
                Problem(
                    cfg.path,
                    None,
                    f"none of the {n} training row(s) has a trainable token left "
                    f"after truncation to max_seq_len={cfg.max_seq_len} (longest row: "
                    f"{max(train_stats.lengths, default=0)} tokens)",
                    "raise data.max_seq_len (--max-seq-len) or shorten the prompts",
                    "no_trainable",
                )
            ],
            heading="nothing to train on",
        )
    rows = pack_rows(train, cfg.max_seq_len) if cfg.packing else train
    return PreparedData(rows, val, template, train_stats, val_stats, problems)


def template_for(examples: list[Example], tokenizer, override: str | None, reasoning: str) -> ChatTemplate:
    """The chat template for these rows: wrapped with the reasoning policy and the tool format when any
    row has tools, calls or reasoning (data/template_policy.py), the chosen template itself otherwise."""
    details = [d for e in examples for d in e.details or ()]
    tools = any(e.tools for e in examples) or any("tool_calls" in d for d in details)
    thoughts = any("reasoning_content" in d for d in details)
    if not tools and not thoughts:
        return resolve_chat_template(tokenizer, override)
    return resolve_chat_template(tokenizer, override, reasoning=reasoning, tools=tools, thoughts=thoughts)


def tokenize_all(
    examples: list[Example],
    tokenizer,
    render,
    cfg: DataConfig,
    problems: list[Problem],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[TokenizedRow], TokenStats]:
    """Tokenize examples; template rejections go to `problems`, rows with no trainable token are dropped.

    `progress(done, total)` is called every PROGRESS_EVERY rows and at the end.
    """
    stats = TokenStats()
    out: list[TokenizedRow] = []
    for n, ex in enumerate(examples):
        if progress and n % PROGRESS_EVERY == 0:
            progress(n, len(examples))
        try:
            rows = tokenize_example(
                ex, tokenizer, render, max_seq_len=cfg.max_seq_len, train_on_prompt=cfg.train_on_prompt
            )
        except TemplateError as exc:
            problems.append(
                Problem(
                    ex.where,
                    "messages",
                    str(exc),
                    "change the row (e.g. fold a system prompt into the first user turn), "
                    "use another chat template (model.chat_template), or pass --skip-invalid",
                    "template",
                )
            )
            continue
        stats.rows += 1
        stats.lengths.append(max(r.full_length for r in rows))  # a conversation split per user turn: its longest
        stats.truncated += any(r.truncated for r in rows)
        stats.windows_split += len(rows) > 1 and ex.kind == "text"
        for row in rows:
            if row.trainable == 0:
                stats.dropped_no_trainable.append(row.where)
                continue
            stats.trainable_tokens += row.trainable
            stats.total_tokens += len(row.input_ids)
            out.append(row)
    if progress:
        progress(len(examples), len(examples))
    return out, stats
