"""The optimizer's parameter groups: layer-wise learning-rate scaling and LoRA+.

- Layer-wise scaling (`train.layer_lr_decay` = gamma): a parameter of decoder layer i of L learns at
  lr * gamma^(L-1-i), so the top layer keeps the full rate and lower layers move less. Parameters outside
  the decoder layers (prompt embeddings, a P-tuning encoder, the final norm, embeddings) keep the full lr.
- LoRA+ (`adapter.lora_plus_ratio` = ratio): the B side learns ratio times faster, as peft's
  `create_loraplus_optimizer` groups it: every `lora_B` matrix and every 1-D LoRA parameter (DoRA's
  magnitude vector `lora_magnitude_vector`).

Both multiply: a B matrix of layer i gets lr * ratio * gamma^(L-1-i). Each group carries its factor as
`lt_scale`; the LambdaLR schedule multiplies every group's initial lr by the same factor, so the ratios hold
throughout. Groups come in a fixed order (by layer, then A before B), so a checkpoint's optimizer state dict
loads back into the same groups.
"""

from __future__ import annotations

import re

LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter name, None for a parameter outside the decoder layers."""
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def is_lora_b(name: str, param) -> bool:
    """peft's LoRA+ split: B matrices and 1-D LoRA parameters (DoRA's magnitude) take the higher rate."""
    return "lora_B" in name or ("lora_" in name and param.ndim == 1)


def layer_count(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.num_hidden_layers)


def param_groups(model, *, lr: float, weight_decay: float, layer_decay: float = 1.0, lora_plus: float = 0.0):
    """Optimizer groups of `model`'s trainable parameters: one per distinct lr factor, each with
    `lr` = lr * factor, `lt_scale` = factor and a readable `lt_name`."""
    n_layers = layer_count(model)
    groups: dict[tuple[int, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_of(name) if layer_decay != 1.0 else None
        depth = n_layers - 1 - layer if layer is not None and layer < n_layers else 0
        b_side = lora_plus > 0 and is_lora_b(name, p)
        groups.setdefault((depth, b_side), []).append(p)
    out = []
    for (depth, b_side), params in sorted(groups.items()):
        scale = layer_decay**depth * (lora_plus if b_side else 1.0)
        label = ("top/other" if depth == 0 else f"layer {n_layers - 1 - depth}") + (" B" if b_side else "")
        out.append(dict(params=params, lr=lr * scale, weight_decay=weight_decay, lt_scale=scale, lt_name=label))
    return out
