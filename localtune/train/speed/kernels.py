"""Fused GPU kernels from Liger-Kernel, an optional dependency (`pip install 'localtune[liger]'`), on CUDA.

Liger's Triton kernels replace RoPE, RMSNorm and the SwiGLU / GeGLU MLP activation of the supported
transformers models, patched into the loaded model. Its cross-entropy kernels are not used: localtune's
own chunked loss (chunked_loss.py) already never holds full-vocabulary logits, and it skips prompt positions.

`train.kernels`: `auto` (the default) uses Liger when training on CUDA with liger-kernel installed and the
model type supported, and otherwise runs the plain PyTorch code; `liger` insists (a clear error when it
cannot); `off` never patches.

    applied = use_fused_kernels(model, device, cfg.train.kernels)  # "" when nothing was patched
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

from localtune.errors import UsageError

# model_type -> Liger's patch function for it
LIGER_PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "qwen2": "apply_liger_kernel_to_qwen2",
    "qwen3": "apply_liger_kernel_to_qwen3",
    "gemma": "apply_liger_kernel_to_gemma",
    "gemma2": "apply_liger_kernel_to_gemma2",
    "gemma3_text": "apply_liger_kernel_to_gemma3_text",
    "phi3": "apply_liger_kernel_to_phi3",
}
WANTED = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "geglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}


def _why_not(device: str, model_type: str) -> str | None:
    if device != "cuda":
        return "Liger's kernels run on CUDA GPUs and this run trains on the CPU"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install 'localtune[liger]')"
    if model_type not in LIGER_PATCHES:
        return f"Liger has no kernels for model type {model_type!r}"
    return None


def use_fused_kernels(model, device: str, mode: str) -> str:
    """Patch Liger's kernels into `model` (a transformers model, before LoRA is added) where `mode` and the
    setup allow; returns what was patched, e.g. "liger: rope, rms_norm, swiglu", or "" for nothing."""
    if mode == "off":
        return ""
    model_type = model.config.model_type
    why_not = _why_not(device, model_type)
    patch = None
    if why_not is None:
        patch = getattr(importlib.import_module("liger_kernel.transformers"), LIGER_PATCHES[model_type], None)
        if patch is None:
            why_not = f"this liger-kernel version has no {LIGER_PATCHES[model_type]}"
    if why_not is not None:
        if mode == "liger":
            raise UsageError(
                f"train.kernels is 'liger', but {why_not}",
                title="fused kernels unavailable",
                hint="set train.kernels to auto (Liger where it can run) or off",
            )
        return ""
    accepted = inspect.signature(patch).parameters
    options = {k: v for k, v in WANTED.items() if k in accepted}
    patch(model=model, **options)
    return "liger: " + ", ".join(k for k, v in options.items() if v)
