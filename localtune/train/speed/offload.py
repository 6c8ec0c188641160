"""Activation checkpointing whose saved layer inputs live in (pinned) CPU memory instead of on the GPU.

With gradient checkpointing a decoder keeps one tensor per layer for the backward: the layer's input,
[tokens, d] in the compute dtype, L·d·2 bytes per token in bf16. For long sequences on a small card that
is what runs out (Llama-3.1-8B at 32k tokens: 8 GiB). Here each layer's input is copied to CPU memory
right after the layer's forward, and copied back just before the layer is recomputed in the backward, so
the GPU holds the inputs of one layer at a time.

Copies go to page-locked (pinned) host memory without blocking, on the compute stream: the GPU runs them
in order with the layers' kernels, the host does not wait. A layer's input is 2·d bytes per token against
about 24·d² FLOPs per token of layer work, so for d = 4096 the copy is a few percent of the layer's time
over PCIe 4 (an estimate, not measured here).

This is the same recomputation as transformers' checkpointing (reentrant style: the backward re-runs the
layer with gradients on and backpropagates through it); the RNG state is restored before the recompute, so
dropout draws the same values. Used when `train.activation_offload` is on, or on `auto` when the memory
planner says the run fits only with it (localtune/planner.py).

    install(model)  # on a model whose gradient checkpointing is enabled
"""

from __future__ import annotations

import torch


class _OffloadedLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, hidden, *args):
        ctx.run, ctx.args, ctx.device = run, args, hidden.device
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None
        with torch.no_grad():
            out = run(hidden, *args)
        saved = torch.empty(hidden.shape, dtype=hidden.dtype, device="cpu", pin_memory=hidden.is_cuda)
        saved.copy_(hidden, non_blocking=hidden.is_cuda)
        ctx.saved_hidden = saved
        return out

    @staticmethod
    def backward(ctx, *grads):
        hidden = ctx.saved_hidden.to(ctx.device, non_blocking=True).requires_grad_(True)
        ctx.saved_hidden = None
        cpu_rng, cuda_rng = torch.get_rng_state(), None
        torch.set_rng_state(ctx.cpu_rng)
        if ctx.cuda_rng is not None:
            cuda_rng = torch.cuda.get_rng_state(ctx.device)
            torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
        try:
            with torch.enable_grad():
                out = ctx.run(hidden, *ctx.args)
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, ctx.device)
        outs = out if isinstance(out, tuple) else (out,)
        pairs = [(o, g) for o, g in zip(outs, grads) if torch.is_tensor(o) and o.requires_grad and g is not None]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, hidden.grad) + (None,) * len(ctx.args)


def offloaded_checkpoint(run, hidden, *args):
    """Drop-in for transformers' `_gradient_checkpointing_func(layer_call, hidden_states, *rest)`."""
    if not (torch.is_grad_enabled() and hidden.requires_grad):
        return run(hidden, *args)
    return _OffloadedLayer.apply(run, hidden, *args)


def install(model) -> int:
    """Route every checkpointed layer of `model` through `offloaded_checkpoint`; returns how many layers."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module._gradient_checkpointing_func = offloaded_checkpoint
            layers += 1
    return layers
