"""Attention computed row by row over a padding-free micro-batch, for the sdpa and eager implementations.

With rows concatenated into one sequence, transformers' block-diagonal mask keeps every token inside its
row, but sdpa and eager still compute the whole [tokens, tokens] square of scores and mask most of it
out: for B equal rows, B times the attention work of padded rows. Flash-attention's varlen kernel skips
the off-diagonal blocks (transformers uses it by itself when given packed position ids); for sdpa and
eager this module does the same by hand. It registers `localtune_rows_sdpa` and `localtune_rows_eager`,
attention functions that, when the forward is given `row_bounds=(0, end_1, ..., total)`, run the
model's own attention function on each row's diagonal block, with that block of transformers' mask
(causal, sliding window and packed segments already in it), and concatenate the outputs. Without
`row_bounds` they are the original function, so the model behaves exactly as before elsewhere.

    if use_row_attention(model):  # a transformers model on sdpa or eager
        model.get_decoder()(input_ids=..., position_ids=..., use_cache=False, row_bounds=bounds)
"""

from __future__ import annotations

import itertools
import sys

PREFIX = "localtune_rows_"
WRAPPED = ("sdpa", "eager")


def _original(name: str, module):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    # "eager" is not in the registry: every modeling file has its own eager_attention_forward (Gemma 2's
    # soft-caps the scores), which the attention layer would have called; find it the same way.
    return sys.modules[type(module).__module__].eager_attention_forward


def _row_by_row(name: str):
    def attention(module, query, key, value, attention_mask, row_bounds=None, **kwargs):
        import torch

        inner = _original(name, module)
        if row_bounds is None or len(row_bounds) <= 2:
            return inner(module, query, key, value, attention_mask, **kwargs)
        outputs = []
        for start, end in itertools.pairwise(row_bounds):  # [batch 1, heads, tokens, head_dim] in
            block = None if attention_mask is None else attention_mask[..., start:end, start:end]
            out, _ = inner(
                module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], block, **kwargs
            )
            outputs.append(out)  # [1, row tokens, heads, head_dim]
        return torch.cat(outputs, dim=1), None

    return attention


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for name in WRAPPED:
        if PREFIX + name not in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionInterface.register(PREFIX + name, _row_by_row(name))
            # the same mask as the original: the row blocks are cut from it
            AttentionMaskInterface.register(PREFIX + name, ALL_MASK_ATTENTION_FUNCTIONS[name])


def use_row_attention(model) -> bool:
    """Switch a transformers model from sdpa/eager to its row-by-row wrapper; False (model untouched) when
    it uses another implementation (flash-attention and flex handle packed rows themselves)."""
    impl = model.config._attn_implementation
    if impl.startswith(PREFIX):
        return True
    if impl not in WRAPPED:
        return False
    _register()
    model.set_attn_implementation(PREFIX + impl)
    return model.config._attn_implementation == PREFIX + impl
