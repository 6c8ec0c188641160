"""Linear-attention (recurrent) layers run one sequence at a time over a padding-free micro-batch.

A gated-delta-net layer (Qwen3.5's `linear_attn`) carries a causal conv1d window and a recurrent state
from token to token. Over rows concatenated into one sequence, nothing in it stops at a row's end: the
attention mask transformers builds from the restarting position ids reaches only the full-attention
layers, and the PyTorch fallback kernels (no flash-linear-attention / causal-conv1d, as on the CPU)
ignore sequence boundaries altogether. So each row's first tokens would read the previous row's state.

`use_row_recurrence(model)` wraps the forward of every such layer: given `segment_bounds=(0, end_1, ...,
total)` it runs the layer's own forward on each segment (a row, or a packed segment of one) from a zero
state, and concatenates the outputs; without `segment_bounds` (generation, a plain forward) it is the
original forward. `segment_bounds(rows)` computes the bounds from the rows on the CPU.

    if use_row_recurrence(model):
        decoder(input_ids=..., position_ids=..., use_cache=False, segment_bounds=segment_bounds(rows))
"""

from __future__ import annotations

import itertools

WRAPPED = "_localtune_row_recurrence"


def is_recurrent_layer(module) -> bool:
    """A linear-attention token mixer whose state crosses sequence boundaries (Qwen3.5's GatedDeltaNet)."""
    return type(module).__name__.endswith("GatedDeltaNet")


def _per_segment(forward):
    def run(hidden_states, *args, segment_bounds=None, **kwargs):
        import torch

        cache = kwargs.get("cache", args[0] if args else None)
        if segment_bounds is None or len(segment_bounds) <= 2 or cache is not None:
            return forward(hidden_states, *args, **kwargs)
        mask = kwargs.pop("attention_mask", None)
        outputs = []
        for start, end in itertools.pairwise(segment_bounds):
            part = None if mask is None else mask[:, start:end]
            outputs.append(forward(hidden_states[:, start:end], *args, attention_mask=part, **kwargs))
        return torch.cat(outputs, dim=1)

    return run


def use_row_recurrence(model) -> bool:
    """Wrap every recurrent layer of `model` (once); True when it has any."""
    found = False
    for module in model.modules():
        if is_recurrent_layer(module):
            found = True
            if not getattr(module, WRAPPED, False):
                module.forward = _per_segment(module.forward)
                setattr(module, WRAPPED, True)
    return found


def segment_bounds(rows) -> tuple[int, ...]:
    """Start of every row and packed segment (where its position ids restart at 0), and the total length."""
    bounds, offset = [0], 0
    for r in rows:
        positions = getattr(r, "position_ids", None)
        if positions is not None:
            bounds += [offset + i for i, p in enumerate(positions) if p == 0 and i > 0]
        offset += len(r.input_ids)
        bounds.append(offset)
    return tuple(bounds)
