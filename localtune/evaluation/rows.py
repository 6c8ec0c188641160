"""The rows `localtune eval` scores, and the training rows it shows the base as few-shot turns.

A row's reference answer is its last assistant turn (chat, sharegpt, alpaca) or its completion
(prompt_completion); raw-text rows have no answer and are refused with their file:line. By default
the rows are the run's own validation split (its `data.val_file`, or the same seeded split training
made); `--data FILE` goes through the same reading and validation as training data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from localtune.data.formats import Example
from localtune.errors import DataError, Problem, UsageError


class NothingToEvaluate(UsageError):
    """No row to score: the run has no validation rows, or none fits. `quick` skips its eval phase on it."""

    title = "nothing to evaluate"


@dataclass
class EvalRows:
    rows: list[Example]  # the held-out rows, in order
    train: list[Example]  # the rows few-shot turns may come from (never one of `rows`)
    source: str  # where the rows came from, for the report


def reference(example: Example) -> str:
    return example.completion if example.kind == "completion" else example.messages[-1][1]


def _answerable(examples: list[Example], source: str) -> list[Example]:
    bad = [
        Problem(
            e.where,
            "text",
            "a raw-text row has no answer to compare with",
            "evaluate chat, sharegpt, alpaca or prompt_completion rows (the last assistant turn, or the "
            "completion, is the reference)",
            "no_answer",
        )
        for e in examples
        if e.kind == "text"
    ]
    if bad:
        raise DataError(bad[:20], heading=f"{len(bad)} row(s) of {source} cannot be evaluated")
    return examples


def run_rows(run_dir: Path, cfg, data: str | None = None) -> EvalRows:
    """Rows of `data` (or the run's validation split) and the run's training rows for few-shot turns."""
    from localtune.data.dataset import load_examples, split_examples

    loaded = load_examples(cfg.data.path, cfg.data.format, skip_invalid=True, strict=False).examples
    if cfg.data.val_file:
        train = loaded
        val = load_examples(cfg.data.val_file, cfg.data.format, skip_invalid=True, strict=False).examples
        source = f"the run's validation file {cfg.data.val_file}"
    else:
        train, val = split_examples(loaded, cfg.data.val_fraction, cfg.train.seed)
        source = f"the run's validation split of {cfg.data.path}"
    if data is not None:
        val, source = file_rows(data), str(data)
    elif not val:
        raise NothingToEvaluate(
            f"the run {run_dir} has no validation rows (its data has fewer than 10 rows, or data.val_fraction is 0)",
            hint="pass --data FILE with held-out rows",
        )
    held = {_key(e) for e in val}
    return EvalRows(_answerable(val, source), [e for e in train if _key(e) not in held and e.kind != "text"], source)


def file_rows(data: str) -> list[Example]:
    """Held-out rows from a file or folder, validated strictly like training data."""
    from localtune.data.dataset import load_examples

    return _answerable(load_examples(str(data)).examples, str(data))


def _key(example: Example) -> tuple:
    return (example.messages, example.prompt, example.completion, example.text)


def pick_shots(pool: list[Example], k: int, seed: int = 0) -> list[Example]:
    """k training rows, the same for every evaluated row; seeded so reports repeat."""
    if k <= 0 or not pool:
        return []
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[i] for i in order[:k]]


def with_shots(example: Example, shots: list[Example]) -> Example:
    """The row with the shots before it: earlier chat turns (after the row's system prompt, if any), or, for
    completion rows, prompt+completion texts separated by blank lines."""
    if not shots:
        return example
    if example.kind == "completion":
        head = "".join(s.prompt + s.completion + "\n\n" for s in shots if s.kind == "completion")
        return replace(example, prompt=head + example.prompt)
    turns = [t for s in shots if s.kind == "chat" for t in s.messages if t[0] != "system"]
    system = example.messages[:1] if example.messages[0][0] == "system" else ()
    return replace(example, messages=system + tuple(turns) + example.messages[len(system) :])
