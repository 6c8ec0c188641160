"""Mixture-of-experts parts of a GGUF: expert hyper-parameters and the stacked expert tensors.

llama.cpp keeps each layer's experts as three stacked tensors, numpy [n_expert, out, in] (ggml
{in, out, n_expert}): `blk.N.ffn_gate_exps`, `ffn_up_exps` and `ffn_down_exps`, plus for gpt-oss their
biases [n_expert, out]. Hugging Face checkpoints hold them in one of three layouts:
- Qwen3-MoE as saved by transformers 5 (and on the hub): one 2-D [out, in] tensor per expert,
  `mlp.experts.{e}.{gate,up,down}_proj.weight`: stacked here, read one expert at a time;
- Qwen3-MoE fused (transformers 5's in-memory layout): `mlp.experts.gate_up_proj` [E, 2I, H] with the
  gate in the first half of the rows, and `mlp.experts.down_proj` [E, H, I] ([out, in] already);
- gpt-oss: `mlp.experts.gate_up_proj` [E, H, 2I], transposed ([in, out]) with gate and up interleaved
  (gate = even columns, up = odd; HF `_apply_gate`), `gate_up_proj_bias` [E, 2I] interleaved the same
  way, `down_proj` [E, I, H] ([in, out]) and `down_proj_bias` [E, H].
The router (`mlp.gate` / `mlp.router`) is `ffn_gate_inp` and always stored F32, like llama.cpp's own
converter and quantizer do; gpt-oss's attention sinks become `blk.N.attn_sinks.weight`.

What llama.cpp hard-codes, and is refused here rather than converted wrongly: qwen3moe always
renormalises the top-k weights (`norm_topk_prob`), has experts in every layer (no `mlp_only_layers`),
and gpt-oss's clamped SwiGLU uses alpha 1.702 and limit 7.0.
"""

from __future__ import annotations

import re

from localtune.converters.gguf_file import ConversionError

MOE_ARCHS = ("qwen3moe", "gpt-oss")
_PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)(_bias)?(\.weight)?$")


def n_experts(cfg: dict) -> int:
    return int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)


def check_supported(cfg: dict, gguf_arch: str) -> None:
    """Refuse what llama.cpp's graph for this architecture cannot compute."""
    if gguf_arch == "qwen3moe":
        if not cfg.get("norm_topk_prob", True):
            raise ConversionError(
                "this Qwen3-MoE does not renormalise its top-k expert weights (norm_topk_prob false)",
                hint="llama.cpp's qwen3moe always renormalises them; the GGUF would compute a different model",
            )
        if cfg.get("mlp_only_layers") or int(cfg.get("decoder_sparse_step", 1)) != 1:
            raise ConversionError(
                "this Qwen3-MoE has dense (non-expert) layers",
                hint="llama.cpp's qwen3moe expects experts in every layer",
            )
    if gguf_arch == "gpt-oss":
        alpha, limit = float(cfg.get("swiglu_alpha", 1.702)), float(cfg.get("swiglu_limit", 7.0))
        if abs(alpha - 1.702) > 1e-6 or abs(limit - 7.0) > 1e-6:
            raise ConversionError(
                f"gpt-oss with swiglu_alpha {alpha} / swiglu_limit {limit}",
                hint="llama.cpp hard-codes alpha 1.702 and limit 7.0",
            )


def write_moe_hparams(w, cfg: dict, gguf_arch: str) -> list[str]:
    """Expert counts and widths, gpt-oss's sliding-window layout (the window itself is written by
    write_hparams) and yarn details; returns notes on what
    the GGUF represents only approximately."""
    check_supported(cfg, gguf_arch)
    notes = []
    w.add_expert_count(n_experts(cfg))
    w.add_expert_used_count(int(cfg["num_experts_per_tok"]))
    if gguf_arch == "qwen3moe":
        w.add_expert_feed_forward_length(int(cfg["moe_intermediate_size"]))
    if gguf_arch == "gpt-oss":
        w.add_expert_feed_forward_length(int(cfg["intermediate_size"]))
        layer_types = cfg.get("layer_types") or []
        if layer_types:  # per-layer flags; without them llama.cpp assumes sliding, full, sliding, ...
            w.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type")) == "yarn":
            if rope.get("beta_fast"):
                w.add_rope_scaling_yarn_beta_fast(float(rope["beta_fast"]))
            if rope.get("beta_slow"):
                w.add_rope_scaling_yarn_beta_slow(float(rope["beta_slow"]))
            if rope.get("truncate") is False:
                notes.append(
                    "rope: yarn with truncate=false; llama.cpp always rounds the correction range "
                    "(ggml_rope_yarn_corr_dims), so a few rotary frequencies differ slightly"
                )
    return notes


def _stacked(loaders):
    import torch

    return lambda: torch.stack([load() for load in loaders])


def expert_entries(name: str, loader, shape: list[int], cfg: dict, pending: dict):
    """None if `name` is no expert tensor; else [(HF-style name, loader, numpy shape)] to map and write,
    empty while the per-expert pieces of a stack are still arriving (kept in `pending`)."""
    m = _PER_EXPERT.match(name)
    if m:
        prefix, expert, proj = m.groups()
        parts = pending.setdefault((prefix, proj), {})
        parts[int(expert)] = loader
        total = n_experts(cfg)
        if len(parts) < total:
            return []
        del pending[(prefix, proj)]
        return [(f"{prefix}.{proj}.weight", _stacked([parts[e] for e in range(total)]), [total, *shape])]
    m = _FUSED.match(name)
    if not m:
        return None
    prefix, proj, bias, _ = m.groups()
    interleaved = cfg.get("model_type") == "gpt_oss"  # gpt-oss: [in, out] with gate/up interleaved
    if proj == "down_proj":
        if bias:
            return [(f"{prefix}.down_proj.bias", loader, shape)]
        if interleaved:
            return [(f"{prefix}.down_proj.weight", lambda: loader().transpose(1, 2), [shape[0], shape[2], shape[1]])]
        return [(f"{prefix}.down_proj.weight", loader, shape)]
    if bias:  # [E, 2I], interleaved in gpt-oss
        half = [shape[0], shape[1] // 2]
        return [
            (f"{prefix}.gate_proj.bias", lambda: loader()[:, ::2], half),
            (f"{prefix}.up_proj.bias", lambda: loader()[:, 1::2], half),
        ]
    if interleaved:  # [E, H, 2I] -> [E, I, H] each
        half = [shape[0], shape[2] // 2, shape[1]]
        return [
            (f"{prefix}.gate_proj.weight", lambda: loader()[:, :, ::2].transpose(1, 2), half),
            (f"{prefix}.up_proj.weight", lambda: loader()[:, :, 1::2].transpose(1, 2), half),
        ]
    n_ff = shape[1] // 2  # [E, 2I, H]: gate rows first
    half = [shape[0], n_ff, shape[2]]
    return [
        (f"{prefix}.gate_proj.weight", lambda: loader()[:, :n_ff], half),
        (f"{prefix}.up_proj.weight", lambda: loader()[:, n_ff:], half),
    ]


def expand_experts(tensors, cfg: dict):
    """The checkpoint's (name, loader, shape) with experts as llama.cpp's stacks (HF-style names the gguf
    name map knows, e.g. `model.layers.0.mlp.experts.gate_proj.weight`) and sinks named `.weight`."""
    pending: dict = {}
    for name, loader, shape in tensors:
        short = name.removeprefix("language_model.").replace("model.language_model.", "model.")
        entries = expert_entries(short, loader, list(shape), cfg, pending)
        if entries is None:
            yield (name + ".weight" if name.endswith("self_attn.sinks") else name), loader, shape
        else:
            yield from entries
    _check_complete(pending)


def _check_complete(pending: dict) -> None:
    if pending:
        (prefix, proj), parts = next(iter(pending.items()))
        raise ConversionError(
            f"{prefix}.*.{proj}: only {len(parts)} experts' weights are in the checkpoint",
            hint="the checkpoint is incomplete or its num_experts is wrong",
        )


def expert_lora(module: str, a, b, cfg: dict, r: int) -> list[tuple[str, object, object]]:
    """A peft ParamWrapper's LoRA on a stacked expert parameter as llama.cpp expert LoRA tensors.

    peft keeps all experts in one pair: lora_A [r*E, in] (expert e's rows e*r..e*r+r) and lora_B
    [out, r*E] (expert e's columns e, e+E, ...); the update of expert e's in->out map is B_e @ A_e, for
    the Qwen3-MoE [E, out, in] and the gpt-oss [E, in, out] layout alike. llama.cpp's expert LoRA is
    lora_a [E, r, in] and lora_b [E, out, r] (numpy), applied with mul_mat_id to the routed experts only.
    Which parameter a pair adapts (gate_up_proj or down_proj) follows from its shape. Returns
    [(HF-style stacked name, a, b)] with gate_up split into its gate and up rows."""
    experts, hidden = n_experts(cfg), int(cfg["hidden_size"])
    ff = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
    prefix = module.removesuffix(".base_layer")
    a_e = a.reshape(experts, r, a.shape[-1])
    b_e = b.reshape(b.shape[0], r, experts).transpose(2, 0, 1)
    if a.shape[-1] == hidden and b.shape[0] == 2 * ff:  # gate_up_proj
        gate, up = (
            (slice(0, None, 2), slice(1, None, 2))
            if cfg.get("model_type") == "gpt_oss"
            else (
                slice(0, ff),
                slice(ff, None),
            )
        )
        return [
            (f"{prefix}.gate_proj.weight", a_e, b_e[:, gate]),
            (f"{prefix}.up_proj.weight", a_e, b_e[:, up]),
        ]
    if a.shape[-1] == ff and b.shape[0] == hidden:  # down_proj
        return [(f"{prefix}.down_proj.weight", a_e, b_e)]
    raise ConversionError(f"adapter tensors of {module!r} fit neither the experts' gate_up_proj nor their down_proj")
