"""A LoRA linear layer's forward and backward as one autograd function (used on the CPU).

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scale` as separate modules: the dropout writes
a copy of the input for every LoRA layer (five copies of the same normed hidden state per decoder layer,
each kept for the backward), the LoRA output is a second [tokens, out] tensor added to the base output,
and for a 4-bit base peft clones the base output first. On a 2-core CPU these passes over memory cost
about as much as the rank-16 products themselves.

`_LoraLinear` computes the same function with fewer passes:
- the LoRA output is accumulated into the base output in place (`addmm_`), with no clone;
- the dropped copy of the input (drawn as in lora_dropout.py: only the dropped positions are random
  draws) lives only while h = dropout(x) Aᵀ is computed. The backward keeps x itself (one tensor shared
  by every layer that reads the same input), h and the positions, and rebuilds the copy for A's gradient;
- the input gradient's LoRA part (dropout's backward applied) is added in place to its base part;
- a 4-bit base weight is dequantized again in the backward instead of being kept.
On SmolLM2-135M micro-batches on 2 CPU cores (forward and backward, alternating with peft's modules in one
process; BENCHMARKS.md) it was 1.14-1.45x and 0.96-1.40x faster in two QLoRA comparisons, and 0.91-1.15x and
1.05-1.39x with an fp32 base.

The dropped positions come from torch's default generator, so gradient checkpointing replays them exactly
(it restores the RNG state before recomputing). A layer that does not fit the fast path (merged or
disabled adapters, several adapters, DoRA, mixed dtypes or autocast, a base that is neither nn.Linear
nor bitsandbytes' Linear4bit, evaluation) runs peft's own forward.

    install(peft_model)  # every eligible LoRA linear layer uses the fused function while training
"""

from __future__ import annotations

from types import MethodType

import torch

from localtune.train.speed.lora_dropout import SparseDropout, dropped_positions


def _base_weight(base: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The base layer's [out, in] weight in `dtype` (dequantized when it is 4-bit)."""
    weight = base.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnb_f

        return bnb_f.dequantize_4bit(weight.data, quant_state).to(dtype)
    return weight if weight.dtype == dtype else weight.to(dtype)


def _dropped_input(x2: torch.Tensor, positions: torch.Tensor | None, p: float) -> torch.Tensor:
    """dropout(x): x scaled by 1 / (1 - p), zero at the dropped positions (x itself when p is 0)."""
    if positions is None:
        return x2
    out = x2.mul(1.0 / (1.0 - p))
    out.view(-1).index_fill_(0, positions, 0.0)
    return out


class _LoraLinear(torch.autograd.Function):
    """y = x Wᵀ (+ bias) + scale · dropout_p(x) Aᵀ Bᵀ, with W frozen; see the module doc."""

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, bias, base, scale: float, p: float):
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        weight = _base_weight(base, x.dtype)
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias.to(x.dtype), x2, weight.t())
        positions = dropped_positions(x2.numel(), p).to(x.device) if p > 0 else None
        h = torch.mm(_dropped_input(x2, positions, p), lora_a.t())  # [tokens, r]; the dropped copy is not kept
        y.addmm_(h, lora_b.t(), alpha=scale)
        ctx.base, ctx.scale, ctx.p = base, scale, p
        ctx.has_bias, ctx.bias_dtype = bias is not None, None if bias is None else bias.dtype
        ctx.dropout = positions is not None
        ctx.save_for_backward(
            x2, h, positions if positions is not None else x2.new_empty(0, dtype=torch.int64), lora_a, lora_b
        )
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, h, positions, lora_a, lora_b = ctx.saved_tensors
        positions = positions if ctx.dropout else None
        g = grad.reshape(-1, grad.shape[-1])
        if g.dtype != x2.dtype:
            g = g.to(x2.dtype)
        gh = torch.mm(g, lora_b).mul_(ctx.scale)  # d loss / d h, [tokens, r]
        grad_b = torch.mm(g.t(), h).mul_(ctx.scale) if ctx.needs_input_grad[2] else None
        grad_a = torch.mm(gh.t(), _dropped_input(x2, positions, ctx.p)) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, _base_weight(ctx.base, g.dtype))
            through_lora = _dropped_input(torch.mm(gh, lora_a), positions, ctx.p)  # dropout's backward
            grad_x.add_(through_lora)
            grad_x = grad_x.view(*grad.shape[:-1], x2.shape[-1])
        grad_bias = g.sum(0).to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, grad_a, grad_b, grad_bias, None, None, None


def _dropout_p(module) -> float | None:
    """The LoRA input dropout's probability, or None for a kind of dropout this function does not know."""
    if isinstance(module, torch.nn.Identity):
        return 0.0
    if type(module) in (torch.nn.Dropout, SparseDropout):
        return module.p if module.training else 0.0
    return None


def _fused_args(layer, x: torch.Tensor, args, kwargs):
    """The arguments of `_LoraLinear` for this call, or None when peft's own forward must run."""
    if args or kwargs or not layer.training or layer.disable_adapters or layer.merged:
        return None
    if torch.is_autocast_enabled(x.device.type):  # autocast picks dtypes per op; peft's modules follow it
        return None
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(adapters) != 1 or adapters[0] in getattr(layer, "lora_variant", {}):
        return None
    name = adapters[0]
    lora_a, lora_b, base = layer.lora_A[name], layer.lora_B[name], layer.get_base_layer()
    p = _dropout_p(layer.lora_dropout[name])
    if p is None or lora_a.bias is not None or lora_b.bias is not None or base.weight.requires_grad:
        return None
    quantized = getattr(base.weight, "quant_state", None) is not None
    if quantized:
        if getattr(base, "compute_dtype", None) not in (None, x.dtype) or getattr(
            base.weight.quant_state, "packing_format_for_cpu", False
        ):
            return None
    elif type(base) is not torch.nn.Linear or base.weight.dtype != x.dtype:
        return None
    if lora_a.weight.dtype != x.dtype or lora_b.weight.dtype != x.dtype:
        return None
    bias = base.bias
    return x, lora_a.weight, lora_b.weight, bias, base, float(layer.scaling[name]), float(p)


def _fused_forward(layer, x, *args, **kwargs):
    fused = _fused_args(layer, x, args, kwargs)
    if fused is None:
        return layer._localtune_peft_forward(x, *args, **kwargs)
    return _LoraLinear.apply(*fused)


def install(model) -> int:
    """Give every peft LoRA linear layer of `model` the fused forward; returns how many layers."""
    from peft.tuners.lora import LoraLayer

    layers = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or "_localtune_peft_forward" in module.__dict__:
            continue
        if not isinstance(module.get_base_layer(), torch.nn.Linear):  # Linear4bit subclasses nn.Linear
            continue
        module._localtune_peft_forward = module.forward
        module.forward = MethodType(_fused_forward, module)
        layers += 1
    return layers
