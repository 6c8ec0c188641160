"""Packing short rows into full-length sequences, with no attention across row boundaries.

Rows are placed best-fit-decreasing into sequences of at most max_seq_len tokens. Each packed
sequence carries position ids that restart at 0 for every row: given position ids and no attention
mask (and no KV cache: `use_cache=False`, as in training), transformers builds a block-diagonal
causal mask, so a token attends only to its own row.
The first token of every row gets no label, so no row learns to predict the start of the next.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from localtune.data.tokenize import IGNORE, TokenizedRow


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)

    def add(self, row: TokenizedRow) -> None:
        self.input_ids += row.input_ids
        self.labels += [IGNORE] + row.labels[1:]
        self.position_ids += list(range(len(row.input_ids)))
        self.wheres.append(row.where)

    @property
    def trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def pack_rows(rows: list[TokenizedRow], max_seq_len: int) -> list[PackedRow]:
    """Best-fit-decreasing bin packing; every row fits since rows are already truncated."""
    bins: list[PackedRow] = []
    free: list[tuple[int, int]] = []  # sorted (space left, bin index)
    for row in sorted(rows, key=lambda r: len(r.input_ids), reverse=True):
        n = len(row.input_ids)
        i = bisect.bisect_left(free, (n, -1))
        if i < len(free):
            space, b = free.pop(i)
        else:
            space, b = max_seq_len, len(bins)
            bins.append(PackedRow())
        bins[b].add(row)
        if space - n > 0:
            bisect.insort(free, (space - n, b))
    return bins
