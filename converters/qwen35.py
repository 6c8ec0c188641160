"""Qwen3.5 (HF `qwen3_5` / `qwen3_5_text`) -> llama.cpp `qwen35`: the hybrid gated-delta-net layout.

Three of every four layers are gated-delta-net linear attention (`linear_attn.*`), the fourth full
attention whose q_proj yields [query, gate] per head (the same interleaving llama.cpp views, so it
passes as is). What llama.cpp's qwen35 expects (src/models/qwen35.cpp, conversion/qwen.py
Qwen3_5TextModel in the vendored tree):

- keys: ssm.conv_kernel, ssm.state_size (key head dim), ssm.group_count (key heads),
  ssm.time_step_rank (value heads), ssm.inner_size (value heads x value head dim),
  attention.recurrent_layers (per layer: linear attention?), full_attention_interval, and
  rope.dimension_sections (interleaved M-RoPE; [11, 11, 10, 0] when the config has none);
- tensors: A_log is stored as A = -exp(A_log) (`ssm_a`), dt_bias as `ssm_dt.bias`, the depthwise
  conv1d weight [C, 1, K] squeezed to [C, K] (kept F32);
- norms: Qwen3.5's RMSNorm computes x * (1 + w), so every norm weight is stored + 1, except the gated
  norm inside the delta net (`linear_attn.norm`), which is a plain x * w;
- value heads: HF groups the value heads by key head (head j uses key head j // r, repeat_interleave);
  ggml broadcasts key heads tiled (head j uses key head j % n_k). Every value-head-indexed row or
  column (the V part of in_proj_qkv and of conv1d, in_proj_z, in_proj_a/b, A_log, dt_bias, the
  columns of out_proj) is reordered from grouped to tiled.

Vision tower and multi-token-prediction weights are not exported (text-only GGUF).
"""

from __future__ import annotations

SKIPPED_PREFIXES = ("mtp.", "model.mtp.")  # the multi-token-prediction head; the vision part is NOT_TEXT_PREFIXES
DEFAULT_MROPE_SECTION = [11, 11, 10, 0]


def skip(name: str) -> bool:
    return name.startswith(SKIPPED_PREFIXES)


def write_hparams(w, cfg: dict) -> None:
    w.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    w.add_ssm_state_size(cfg["linear_key_head_dim"])
    w.add_ssm_group_count(cfg["linear_num_key_heads"])
    w.add_ssm_time_step_rank(cfg["linear_num_value_heads"])
    w.add_ssm_inner_size(cfg["linear_value_head_dim"] * cfg["linear_num_value_heads"])
    interval = int(cfg.get("full_attention_interval") or 4)
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)
    ]
    # gguf 0.19 (PyPI) has no add_recurrent_layers; the key is llama.cpp's LLM_KV_ATTENTION_RECURRENT_LAYERS
    w.add_array(f"{w.arch}.attention.recurrent_layers", [t == "linear_attention" for t in types])
    w.add_full_attention_interval(interval)
    rope = cfg.get("rope_parameters") or {}
    sections = list(rope.get("mrope_section") or cfg.get("mrope_section") or DEFAULT_MROPE_SECTION)
    w.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])


def check(cfg: dict) -> str | None:
    """Why llama.cpp's qwen35 cannot represent this configuration, or None."""
    if cfg["linear_key_head_dim"] != cfg["linear_value_head_dim"]:
        return "llama.cpp's qwen35 needs linear_key_head_dim == linear_value_head_dim"
    if cfg["linear_num_value_heads"] % cfg["linear_num_key_heads"]:
        return "linear_num_value_heads must be a multiple of linear_num_key_heads"
    if cfg.get("attention_bias"):
        return "attention biases are not loaded by llama.cpp's qwen35"
    return None


def reorder_v_heads(t, dim: int, n_k: int, per_k: int, head_dim: int):
    """Value heads along `dim` from grouped-by-key-head [n_k, per_k, d] to tiled [per_k, n_k, d] order."""
    shape = list(t.shape)
    dim = dim % len(shape)
    t = t.reshape(*shape[:dim], n_k, per_k, head_dim, *shape[dim + 1 :])
    return t.transpose(dim, dim + 1).contiguous().reshape(shape)


def _v_reorder(name: str, cfg: dict):
    """The value-head reordering transform for tensor `name` (HF name), or None."""
    n_k, n_v = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    if n_k == n_v or ".linear_attn." not in name:
        return None
    per_k, dk, dv = n_v // n_k, cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    qk = 2 * n_k * dk
    import torch

    def v_tail(t):  # rows after the q and k blocks (in_proj_qkv, conv1d)
        return torch.cat([t[:qk], reorder_v_heads(t[qk:], 0, n_k, per_k, dv)], dim=0)

    if name.endswith(("in_proj_qkv.weight", "conv1d.weight")):
        return v_tail
    if name.endswith("in_proj_z.weight"):
        return lambda t: reorder_v_heads(t, 0, n_k, per_k, dv)
    if name.endswith(("in_proj_a.weight", "in_proj_b.weight", "A_log", "dt_bias")):
        return lambda t: reorder_v_heads(t, 0, n_k, per_k, 1)
    if name.endswith("out_proj.weight"):
        return lambda t: reorder_v_heads(t, 1, n_k, per_k, dv)
    return None


def tensor(name: str, shape: list[int], cfg: dict):
    """(name for the GGUF name map, stored shape, transforms) for one HF tensor (prefixes already stripped)."""
    transforms = []
    if name.endswith("conv1d.weight"):  # [C, 1, K] -> [C, K]
        shape = [shape[0], shape[-1]]
        transforms.append(lambda t: t.reshape(t.shape[0], t.shape[-1]))
    reorder = _v_reorder(name, cfg)
    if reorder is not None:
        transforms.append(reorder)
    if name.endswith(".A_log"):
        transforms.append(lambda t: -t.float().exp().to(t.dtype))
    elif name.endswith(".dt_bias"):
        name = name.removesuffix(".dt_bias") + ".dt_proj.bias"
    elif name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
        transforms.append(lambda t: t + 1.0)
    return name, shape, transforms


def lora_b_transform(module: str, cfg: dict):
    """For an adapter's B matrix (rows = the module's outputs): the row reordering its base weight gets."""
    if module.endswith(("in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b")):
        return _v_reorder(module + ".weight", cfg)
    return None


def lora_a_transform(module: str, cfg: dict):
    """For an adapter's A matrix (columns = the module's inputs): out_proj's inputs are value heads."""
    if module.endswith("out_proj"):
        return _v_reorder(module + ".weight", cfg)
    return None
