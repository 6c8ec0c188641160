"""Per-layer attention patterns llama.cpp must be told about: SmolLM3's NoPE layers, OLMo 3's sliding windows.

- smollm3: llama.cpp's smollm3 skips rope on every 4th layer, a step it hard-codes
  (`n_no_rope_layer_step = 4`, src/models/smollm3.cpp); it reads no key for it, runs no sliding window and
  loads no rope_freqs tensor. A checkpoint with another NoPE pattern, sliding layers or Llama-3 rope scaling
  is refused rather than exported wrong.
- olmo2 / olmo3: both are llama.cpp's "olmo2" (convert_hf_to_gguf.py registers Olmo3ForCausalLM on
  Olmo2Model). Its head size is hidden / heads, and it requires `output.weight` (no tied fallback).
  OLMo 3's sliding layers are `olmo2.attention.sliding_window` plus the per-layer bool array
  `olmo2.attention.sliding_window_pattern` (true = sliding), from `layer_types`. llama.cpp ropes the
  sliding layers with the full layers' freq_base and no scaling (src/models/olmo2.cpp: freq_scale 1,
  ext_factor 0), which is transformers' Olmo3 with a "default" sliding rope of the same theta.
"""

from __future__ import annotations

from localtune.converters.gguf_file import ConversionError

SMOLLM3_NO_ROPE_STEP = 4  # llama.cpp: hparams.n_no_rope_layer_step, fixed for smollm3


def write_layer_patterns(w, cfg: dict, gguf_arch: str, rope: dict) -> None:
    """Check that llama.cpp can represent the layer pattern, and write its keys (after write_hparams' own)."""
    if gguf_arch == "smollm3":
        _check_smollm3(cfg, rope)
    elif gguf_arch == "olmo2":
        _write_olmo2(w, cfg, rope)


def _refuse(what: str, hint: str = "this checkpoint cannot be represented in llama.cpp's GGUF") -> None:
    raise ConversionError(what, hint=hint, title="unsupported layer pattern")


def _check_smollm3(cfg: dict, rope: dict) -> None:
    n = cfg["num_hidden_layers"]
    interval = cfg.get("no_rope_layer_interval") or SMOLLM3_NO_ROPE_STEP
    uses_rope = cfg.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    wanted = [int((i + 1) % SMOLLM3_NO_ROPE_STEP != 0) for i in range(n)]
    if [int(x) for x in uses_rope[:n]] != wanted:
        _refuse(
            f"no_rope_layers {list(uses_rope[:n])} is not llama.cpp's SmolLM3 pattern "
            f"(no rope on every {SMOLLM3_NO_ROPE_STEP}th layer: {wanted})"
        )
    windowed = "sliding_attention" in (cfg.get("layer_types") or [])
    if cfg.get("use_sliding_window") and cfg.get("sliding_window") and windowed:
        _refuse("llama.cpp's smollm3 has no sliding-window attention, and this model uses it")
    if rope["full"].get("rope_type", rope["full"].get("type")) == "llama3":
        _refuse("llama.cpp's smollm3 does not load Llama-3 rope scaling (rope_freqs)")


def _write_olmo2(w, cfg: dict, rope: dict) -> None:
    heads = cfg["num_attention_heads"]
    if (cfg.get("head_dim") or cfg["hidden_size"] // heads) * heads != cfg["hidden_size"]:
        _refuse(f"head_dim {cfg['head_dim']} x {heads} heads != hidden_size {cfg['hidden_size']}: llama.cpp's olmo2")
    types = cfg.get("layer_types")
    if types is None and cfg.get("model_type") == "olmo3":  # transformers' Olmo3 default: 3 sliding, 1 full
        types = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(cfg["num_hidden_layers"])]
    sliding = [t == "sliding_attention" for t in types or []]
    if not any(sliding) or not cfg.get("sliding_window"):
        return
    full, swa = rope["full"], rope["sliding"]
    if swa.get("rope_type", swa.get("type", "default")) != "default":
        _refuse("llama.cpp's olmo2 ropes sliding-window layers without scaling; this model scales them")
    theta = float(full.get("rope_theta", 10000.0))
    if float(swa.get("rope_theta", theta)) != theta:
        _refuse(f"sliding layers use rope_theta {swa['rope_theta']}, full layers {theta}; llama.cpp's olmo2 uses one")
    w.add_sliding_window(int(cfg["sliding_window"]))
    w.add_sliding_window_pattern(sliding)
    w.add_rope_freq_base_swa(theta)
