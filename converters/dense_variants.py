"""GGUF keys for llama-like models with extra scalars: Granite's multipliers, Mistral 3's yarn and attention
temperature, and sliding windows that llama.cpp's architecture for them does not run.

- granite (llama.cpp "granite", NORM rope so q/k are permuted like llama): HF's embedding_multiplier,
  residual_multiplier and attention_multiplier become granite.embedding_scale, residual_scale and
  attention.scale (the softmax scale itself, replacing 1/sqrt(head_dim)); logits_scaling becomes
  granite.logit_scale, which llama.cpp divides the logits by and requires.
- ministral3 / mistral3's text model (llama.cpp "mistral3", NORM rope): yarn with
  rope.scaling.yarn_log_multiplier = mscale_all_dim, yarn_beta_fast/slow, and the llama4 query
  temperature 1 + beta * log(1 + floor(pos / original_max_position_embeddings)) as
  attention.temperature_scale = llama_4_scaling_beta (llama.cpp floors by rope.scaling.original_context_length).
  llama.cpp assumes yarn's mscale is 1; any other attention factor HF computes is written as
  rope.scaling.attn_factor, the ratio to what llama.cpp computes.
- A sliding window the GGUF architecture does not implement (ministral's sliding layers, a mistral or
  ministral3 config with sliding_window set): llama.cpp attends to the whole context, which equals HF's
  sliding window only up to the window's length, so the GGUF's context_length is capped at it.
"""

from __future__ import annotations

import math

# llama.cpp architectures that run a sliding window whose keys their own code writes (converters.hf_to_gguf
# for phi3, converters.layer_patterns for OLMo 3's olmo2), besides the table's sliding_window rows.
OWN_WINDOW_KEYS = ("phi3", "olmo2")


def context_length(cfg: dict, gguf_arch: str, runs_sliding_window: bool) -> int:
    """The context llama.cpp computes exactly: max_position_embeddings, or a window it cannot apply."""
    ctx = int(cfg.get("max_position_embeddings", 4096))
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types") or []
    used = cfg.get("use_sliding_window", True)  # qwen2/qwen3 carry a window they do not use
    slides = bool(window) and used and (not layer_types or "sliding_attention" in layer_types)
    if slides and not runs_sliding_window and gguf_arch not in OWN_WINDOW_KEYS:
        ctx = min(ctx, int(window))
    return ctx


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def write_variant_hparams(w, cfg: dict, gguf_arch: str, rope: dict) -> None:
    """The arch-specific keys above; `rope` is the full-attention rope parameters (converters.hf_to_gguf._rope)."""
    if gguf_arch == "granite":
        w.add_embedding_scale(float(cfg.get("embedding_multiplier", 1.0)))
        w.add_residual_scale(float(cfg.get("residual_multiplier", 1.0)))
        w.add_attention_scale(float(cfg.get("attention_multiplier", 1.0)))
        w.add_logit_scale(float(cfg.get("logits_scaling", 1.0)))
    if gguf_arch != "mistral3":
        return
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "yarn":
        factor = float(rope["factor"])
        if rope.get("beta_fast"):
            w.add_rope_scaling_yarn_beta_fast(float(rope["beta_fast"]))
        if rope.get("beta_slow"):
            w.add_rope_scaling_yarn_beta_slow(float(rope["beta_slow"]))
        mscale, mscale_all = rope.get("mscale"), rope.get("mscale_all_dim")
        if mscale_all:
            w.add_rope_scaling_yarn_log_mul(float(mscale_all))
        hf = rope.get("attention_factor")
        if hf is None:
            hf = _mscale(factor, mscale) / _mscale(factor, mscale_all) if mscale and mscale_all else _mscale(factor)
        ours = _mscale(factor) / _mscale(factor, mscale_all) if mscale_all else _mscale(factor)
        if abs(hf / ours - 1.0) > 1e-7:
            w.add_rope_scaling_attn_factors(hf / ours)
    beta = rope.get("llama_4_scaling_beta")
    if beta:
        w.add_attn_temperature_scale(float(beta))
        if kind != "yarn":  # llama.cpp floors positions by original_context_length, which yarn writes
            orig = rope.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 4096))
            w.add_rope_scaling_orig_ctx_len(int(orig))
