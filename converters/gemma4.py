"""Gemma 4 (text) in GGUF: llama.cpp's "gemma4" architecture and its "gemma4" tokenizer.

What differs from Gemma 3 (checked against llama.cpp's src/models/gemma4.cpp and the vendored converter):
- Norms are stored as they are: Gemma4RMSNorm computes x * w, not x * (1 + w). v_norm has no weight.
- Sliding and full layers have their own head size and KV head count (config `head_dim` for sliding,
  `global_head_dim` / `num_global_key_value_heads`, or transformers' saved `per_layer_config`, for
  full), written as `key_length`/`key_length_swa` and a per-layer `head_count_kv` array; which layers
  slide is the `sliding_window_pattern` array.
- Full layers use "proportional" rope over a fraction of the head: llama.cpp rotates the whole head
  (NEOX pairs) with a `rope_freqs` tensor whose factors are 1 for the rotated pairs and 1e30 (no
  rotation) for the rest; rope `factor` is folded into those factors.
- Per-layer input embeddings (E2B/E4B): `embedding_length_per_layer_input` and the per_layer_* tensors.
- KV sharing: `shared_kv_layers`; llama.cpp lets shared layer i reuse the KV of the last two unshared
  layers (the last if i is full, the one before if i slides), so those must be sliding then full.
- `layer_scalar` (a per-layer output scale, saved as a buffer) becomes `blk.N.layer_output_scale.weight`.
- MoE (26B-A4B): experts.gate_up_proj / down_proj as ffn_gate_up_exps / ffn_down_exps, the router as
  ffn_gate_inp with its `scale` as ffn_gate_inp.scale and `per_expert_scale` as ffn_down_exps.scale.
- Attention scale is 1 (q/k are RMS-normed); final logit soft-capping as in Gemma 3.
- Vocabulary: tokenizer.json's SentencePiece-style BPE (spaces as "▁", <0xXX> byte fallback, no
  pre-tokenizer) as tokenizer.ggml.model "gemma4", with merges, add_bos and no space prefix.
The vision and audio towers of the multimodal checkpoints are not written: llama.cpp reads those
from a separate mmproj file, and the text model runs without them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from localtune.converters.gguf_file import ConversionError

# Linear layers whose LoRA llama.cpp would ignore: the per-layer-input projection is a plain matmul
# in its graph (project_per_layer_inputs), not build_lora_mm. Training leaves it out of "all-linear".
NO_LORA = ("per_layer_model_projection",)
# Gemma 4 chat-syntax tokens llama.cpp must render as text so its chat parser sees them (as the vendored converter)
VISIBLE_TOKENS = {
    "<|channel>",
    "<channel|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<tool_response|>",
    '<|"|>',
}


def resolved(cfg: dict) -> dict:
    """config.json with the defaults Gemma4TextConfig fills in for keys a checkpoint may leave out."""
    cfg = dict(cfg)
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)]
    cfg["layer_types"] = types[:-1] + ["full_attention"]  # transformers forces the last layer to full
    cfg["rope_parameters"] = cfg.get("rope_parameters") or {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    }
    cfg.setdefault("head_dim", 256)
    cfg.setdefault("sliding_window", 512)
    return cfg


def layer_shapes(cfg: dict) -> list[tuple[bool, int, int]]:
    """(sliding, head_dim, kv_heads) per layer, as transformers' Gemma4TextConfig resolves them."""
    types = cfg["layer_types"]
    kv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if cfg.get("per_layer_config"):
        over = {int(k): v for k, v in cfg["per_layer_config"].items()}
    else:
        full = {"head_dim": cfg.get("global_head_dim", 512)}
        if cfg.get("attention_k_eq_v") and cfg.get("num_global_key_value_heads"):
            full["num_key_value_heads"] = cfg["num_global_key_value_heads"]
        over = {i: full for i, t in enumerate(types) if t == "full_attention"}
    return [
        (
            t == "sliding_attention",
            over.get(i, {}).get("head_dim", cfg["head_dim"]),
            over.get(i, {}).get("num_key_value_heads", kv),
        )
        for i, t in enumerate(types)
    ]


def check(cfg: dict) -> None:
    """Refuse Gemma 4 configurations llama.cpp would load into a different model."""
    n, shared = cfg["num_hidden_layers"], cfg.get("num_kv_shared_layers") or 0
    shapes = layer_shapes(cfg)
    problems = []
    if cfg.get("use_bidirectional_attention") == "all":
        problems.append("bidirectional attention on every layer has no llama.cpp equivalent")
    if (
        cfg.get("hidden_size_per_layer_input")
        and cfg.get("vocab_size_per_layer_input", cfg["vocab_size"]) != cfg["vocab_size"]
    ):
        problems.append("per-layer embeddings need vocab_size_per_layer_input == vocab_size")
    if shared and (n - shared < 2 or not shapes[n - shared - 2][0] or shapes[n - shared - 1][0]):
        problems.append("KV-sharing layers must follow a sliding then a full layer (llama.cpp reuses those two)")
    if any(h % 2 for _s, h, _kv in shapes):
        problems.append("head sizes must be even")
    if problems:
        raise ConversionError("this Gemma 4 model cannot be written for llama.cpp: " + "; ".join(problems))


def write_hparams(w, cfg: dict) -> list[tuple[str, object]]:
    """All gemma4.* keys; returns the generated rope_freqs tensor for the full-attention layers."""
    import numpy as np

    cfg = resolved(cfg)
    check(cfg)
    shapes = layer_shapes(cfg)
    swa = [s for s, _h, _kv in shapes]
    head_full = next((h for s, h, _kv in shapes if not s), cfg["head_dim"])
    head_swa = next((h for s, h, _kv in shapes if s), cfg["head_dim"])
    params = cfg.get("rope_parameters") or {}
    full, sliding = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    n, shared = cfg["num_hidden_layers"], cfg.get("num_kv_shared_layers") or 0
    n_ff = cfg["intermediate_size"]
    w.add_context_length(cfg.get("max_position_embeddings", 131072))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n)
    if cfg.get("use_double_wide_mlp") and shared:
        w.add_feed_forward_length([n_ff if i < n - shared else 2 * n_ff for i in range(n)])
    else:
        w.add_feed_forward_length(n_ff)
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv([kv for _s, _h, kv in shapes])
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_key_length(head_full)
    w.add_value_length(head_full)
    w.add_key_length_swa(head_swa)
    w.add_value_length_swa(head_swa)
    w.add_rope_freq_base(float(full.get("rope_theta", 1_000_000.0)))
    w.add_rope_freq_base_swa(float(sliding.get("rope_theta", 10_000.0)))
    w.add_rope_dimension_count(head_full)  # the whole head; rope_freqs leaves the unrotated pairs still
    w.add_rope_dimension_count_swa(int(head_swa * sliding.get("partial_rotary_factor", 1.0)))
    w.add_sliding_window(int(cfg["sliding_window"]))
    w.add_sliding_window_pattern(swa)
    w.add_shared_kv_layers(shared)
    w.add_embedding_length_per_layer_input(cfg.get("hidden_size_per_layer_input") or 0)
    if cfg.get("final_logit_softcapping") is not None:
        w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    if cfg.get("enable_moe_block"):  # 26B-A4B: a routed expert block beside every layer's MLP
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["top_k_experts"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if sliding.get("rope_type", "default") != "default":
        raise ConversionError(f"Gemma 4 sliding layers with {sliding['rope_type']!r} rope cannot be exported")
    kind = full.get("rope_type", "default")
    if kind not in ("proportional", "default"):
        raise ConversionError(f"Gemma 4 full layers with {kind!r} rope cannot be exported")
    rotated = int(full.get("partial_rotary_factor", 1.0) * head_full // 2) if kind == "proportional" else head_full // 2
    factor = float(full.get("factor", 1.0)) if kind == "proportional" else 1.0
    freqs = np.array([factor] * rotated + [1e30] * (head_full // 2 - rotated), dtype=np.float32)
    return [("rope_freqs.weight", freqs)]


def hf_name(name: str) -> str:
    """The name to map to GGUF (text-model prefixes already removed)."""
    if name.endswith((".layer_scalar", ".experts.gate_up_proj", ".experts.down_proj")):
        return name + ".weight"  # no suffix in HF (a buffer, 3-D parameters); GGUF names end in .weight
    return name


def direct_name(name: str) -> str | None:
    """GGUF names gguf's table lacks: the router's input scale and per-expert output scale."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.router\.(scale|per_expert_scale)", name)
    if m is None:
        return None
    return f"blk.{m.group(1)}." + ("ffn_gate_inp.scale" if m.group(2) == "scale" else "ffn_down_exps.scale")


def write_vocab(writer, folder: Path, n_vocab: int, chat_template: str | None) -> str:
    """tokenizer.json as llama.cpp's "gemma4" BPE vocabulary; returns "gemma4"."""
    import gguf

    from localtune.converters.vocab import VocabError, _added_tokens, _fill_special_ids

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise VocabError(f"{folder} has no tokenizer.json", hint="Gemma 4's tokenizer is tokenizer.json (BPE)")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model, norm, pre = tj.get("model", {}), tj.get("normalizer") or {}, tj.get("pre_tokenizer")
    spm_style = (
        model.get("type") == "BPE"
        and model.get("byte_fallback")
        and norm.get("type") == "Replace"
        and norm.get("pattern", {}).get("String") == " "
        and norm.get("content") == "▁"
        # GemmaTokenizer's split at " " runs after the normalizer has replaced every space: a no-op
        and (pre is None or (pre.get("type") == "Split" and pre.get("pattern", {}).get("String") == " "))
    )
    if not spm_style:
        raise VocabError(
            f"{path} is not the SentencePiece-style BPE of Gemma 4 (spaces as '▁', byte fallback, no pre-tokenizer)",
            hint="llama.cpp's gemma4 tokenizer would split this text differently",
        )
    by_id = {i: t for t, i in model["vocab"].items()}
    added = _added_tokens(folder, tj)
    tokens, scores, types = [], [], []
    T = gguf.TokenType
    for i in range(max(n_vocab, len(by_id), max(added, default=-1) + 1)):
        if i in added:
            text, special = added[i]
            kind = T.CONTROL if special else T.USER_DEFINED
        elif i in by_id:
            text = by_id[i]
            kind = T.BYTE if len(text) == 6 and text.startswith("<0x") and text.endswith(">") else T.NORMAL
        else:
            text, kind = f"[PAD{i}]", T.UNUSED
        tokens.append(text)
        scores.append(-1000.0)
        types.append(T.USER_DEFINED if text in VISIBLE_TOKENS else kind)
    writer.add_tokenizer_model("gemma4")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise VocabError(f"{path} has no BPE merges", hint="re-save the tokenizer")
    if chat_template:
        special.chat_template = chat_template
    _fill_special_ids(special, folder)
    special.add_special_token["bos"] = True  # llama.cpp forces it for gemma4 anyway
    special.add_to_gguf(writer)
    writer.add_add_space_prefix(False)
    return "gemma4"
