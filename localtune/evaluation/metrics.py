"""Answer metrics against a reference, and intervals over rows.

Text is compared after normalising (Unicode NFKC, case folded, whitespace collapsed, surrounding
punctuation stripped). Words are Unicode word characters (\\w+), so accents and CJK count as words,
unlike ROUGE's default ASCII-only tokenizer. ROUGE-L comes from Google's `rouge-score` package
(given our word splitter); exact match and SQuAD-style token F1 are a few lines each.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

_WORD = re.compile(r"\w+", re.UNICODE)
_EDGE = string.punctuation + " \t\n\r\u3002\uff01\uff1f"


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split()).strip(_EDGE)


def words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def token_f1(answer: str, reference: str) -> float:
    got, want = words(answer), words(reference)
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


class _Words:
    """The tokenizer interface rouge-score expects."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


_SCORER = None


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
    if not words(answer) or not words(reference):
        return float(words(answer) == words(reference))
    return float(_SCORER.score(reference, answer)["rougeL"].fmeasure)


def bootstrap_ci(
    rows: Sequence, statistic: Callable[[Sequence], float], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(rows) over resampled rows (seeded: reports repeat)."""
    import numpy as np

    n = len(rows)
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        value = statistic(rows)
        return value, value
    rng = np.random.default_rng(seed)
    stats = [statistic([rows[i] for i in rng.integers(0, n, n)]) for _ in range(resamples)]
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def wins_ties_losses(
    ours: Sequence[float], theirs: Sequence[float], *, higher_is_better: bool = True, tol: float = 1e-9
) -> tuple[int, int, int]:
    wins = ties = losses = 0
    for a, b in zip(ours, theirs):
        diff = (a - b) if higher_is_better else (b - a)
        if abs(diff) <= tol:
            ties += 1
        elif diff > 0:
            wins += 1
        else:
            losses += 1
    return wins, ties, losses
