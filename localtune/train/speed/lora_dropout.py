"""LoRA's input dropout on the CPU, drawing random numbers only for the positions it drops.

peft puts an `nn.Dropout(p)` before every LoRA layer: one Bernoulli draw per input element, and under
gradient checkpointing the draws happen again when the layer is recomputed. On the CPU that random number
generation was 15% of a SmolLM2-135M QLoRA step at p = 0.05 (torch profiler: `aten::bernoulli_`, more
than the 4-bit dequantization and the attention together).

The dropped positions of n independent Bernoulli(p) trials are the running sums of Geometric(p) gaps, so
about n·p geometric draws give exactly the same distribution as n Bernoulli draws: each element is
dropped with probability p, independently, and the kept ones are scaled by 1 / (1 - p), as nn.Dropout
does. The backward applies the same positions and scale. The saved positions (int64, n·p of them) are
smaller than nn.Dropout's boolean mask (n bytes) for p < 1/8.

The draws come from torch's default generator, so gradient checkpointing replays them exactly (it restores
the RNG state before recomputing). Used on the CPU only: on CUDA, nn.Dropout is one fused kernel and its
random numbers are cheap.

    replace_lora_dropout(peft_model)  # every nn.Dropout in a LoRA layer's lora_dropout becomes SparseDropout
"""

from __future__ import annotations

import math

import torch

MARGIN_SIGMAS = 6  # draw this many standard deviations above the expected number of gaps; more if short


def dropped_positions(n: int, p: float, generator=None) -> torch.Tensor:
    """Sorted flat indices in [0, n), each included independently with probability p (int64)."""
    if p <= 0 or n == 0:
        return torch.empty(0, dtype=torch.int64)
    log_keep = math.log1p(-p)
    chunks, end = [], -1  # end: the last position drawn so far
    while end < n - 1:
        expected = (n - 1 - end) * p
        k = int(expected + MARGIN_SIGMAS * math.sqrt(expected) + 16)
        # trials to the next drop, Geometric(p) by inversion: P(gap > m) = P(1 - u <= (1 - p)^m) = (1 - p)^m.
        # (this draw is about 4x faster than Tensor.geometric_ on the CPU; float64 keeps the tail exact to 2^-53)
        u = torch.empty(k, dtype=torch.float64).uniform_(generator=generator)
        gaps = u.neg_().log1p_().div_(log_keep).floor_().add_(1.0).to(torch.int64)
        positions = gaps.cumsum_(0).add_(end)
        chunks.append(positions)
        end = int(positions[-1])
    positions = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return positions[: int(torch.searchsorted(positions, n))]


class _SparseDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p: float):
        positions = dropped_positions(x.numel(), p).to(x.device)
        out = x.mul(1.0 / (1.0 - p)).contiguous()
        out.view(-1).index_fill_(0, positions, 0.0)
        ctx.p = p
        ctx.save_for_backward(positions)
        return out

    @staticmethod
    def backward(ctx, grad):
        (positions,) = ctx.saved_tensors
        grad_in = grad.mul(1.0 / (1.0 - ctx.p)).contiguous()
        grad_in.view(-1).index_fill_(0, positions, 0.0)
        return grad_in, None


class SparseDropout(torch.nn.Module):
    """nn.Dropout(p) with the same distribution, drawing only the dropped positions (see the module doc)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        return _SparseDropoutFn.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def replace_lora_dropout(model) -> int:
    """Swap every LoRA layer's nn.Dropout for SparseDropout with the same p; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, drop in list(dropouts.items()):
            if type(drop) is torch.nn.Dropout and 0.0 < drop.p < 1.0:
                replacement = SparseDropout(drop.p)
                replacement.train(drop.training)
                dropouts[name] = replacement
                swapped += 1
    return swapped
