"""The architectures localtune trains and exports: one table of what each needs in GGUF.

Keys are Hugging Face `config.model_type`. Each entry says which llama.cpp architecture loads it and
which transforms its tensors and metadata need; `converters.hf_to_gguf` applies them. To add an
architecture, add a row here (and a tiny model in `localtune.model.tiny` to test it).

Facts behind the rows (see shared/reference/gguf-conversion.md §1.3):
- llama runs rope in llama.cpp's "normal" (adjacent pairs) layout, so q/k rows are permuted from
  HF's rotate-half layout; qwen2/qwen3/gemma/phi3 use NEOX rope and need no permute.
- Gemma's RMSNorm computes x*(1+w): every norm weight is stored +1. llama.cpp's gemma and gemma2
  always tie the output to the embedding; gemma3 may have an output tensor but the embedding serves.
- Gemma's SentencePiece has no dummy prefix: add_space_prefix=False.
- granite and mistral3 are llama-like in llama.cpp (NORM rope: q/k permuted); their extra keys (Granite's
  multipliers, Mistral 3's yarn and attention temperature) are in converters.dense_variants.
- SmolLM3 and OLMo 3 encode per-layer patterns (NoPE layers, sliding windows): converters.layer_patterns.
- Gemma 4 stores norms as plain weights (x*w) and has its own hparams/vocab code (converters/gemma4.py).
- Qwen3.5 (hybrid gated-delta-net) has its own keys and tensor transforms: converters/qwen35.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # llama.cpp's general.architecture
    permute_qk: bool = False
    norm_plus_one: bool = False
    drop_lm_head: bool = False
    add_space_prefix: bool | None = None
    softcapping: bool = False  # gemma2/3: attention and final logit softcapping keys
    sliding_window: bool = False
    output_required: bool = False  # llama.cpp loads output.weight without a token_embd fallback (olmo2)
    aliases: tuple[str, ...] = field(default=())


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", permute_qk=True),
    "mistral": ArchSpec("llama", permute_qk=True),
    "qwen2": ArchSpec("qwen2"),
    "qwen3": ArchSpec("qwen3"),
    "gemma": ArchSpec("gemma", norm_plus_one=True, drop_lm_head=True, add_space_prefix=False),
    "gemma2": ArchSpec(
        "gemma2", norm_plus_one=True, drop_lm_head=True, add_space_prefix=False, softcapping=True, sliding_window=True
    ),
    "gemma3_text": ArchSpec(
        "gemma3", norm_plus_one=True, drop_lm_head=True, add_space_prefix=False, softcapping=True, sliding_window=True
    ),
    "gemma3": ArchSpec(
        "gemma3", norm_plus_one=True, drop_lm_head=True, add_space_prefix=False, softcapping=True, sliding_window=True
    ),
    # Gemma 4: plain x*w norms (no +1), the output tied or its own; hparams, tensors and vocabulary in
    # converters/gemma4.py. "gemma4" is the multimodal checkpoint, whose text_config is gemma4_text.
    "gemma4_text": ArchSpec("gemma4", softcapping=True, sliding_window=True),
    "gemma4": ArchSpec("gemma4", softcapping=True, sliding_window=True),
    "phi3": ArchSpec("phi3"),
    # llama-like with extra scalars or rope features: converters.dense_variants writes their keys.
    "granite": ArchSpec("granite", permute_qk=True),
    "ministral": ArchSpec("llama", permute_qk=True),  # sliding layers run as full attention: context capped
    # Ministral 3 text; also a Mistral3ForConditionalGeneration checkpoint, whose text_config (merged into
    # the config) is ministral3: its vision tower is left out of the GGUF.
    "ministral3": ArchSpec("mistral3", permute_qk=True),
    # smollm3: llama layout (q/k permuted); every 4th layer skips rope (converters.layer_patterns).
    "smollm3": ArchSpec("smollm3", permute_qk=True),
    # OLMo 2/3: post-attention/post-ffn norms, q/k norms over the whole projection, NEOX rope. OLMo 3 is
    # llama.cpp's olmo2 plus a sliding window and a per-layer pattern (converters.layer_patterns).
    "olmo2": ArchSpec("olmo2", output_required=True),
    "olmo3": ArchSpec("olmo2", output_required=True),
    # Mixture of experts: stacked expert tensors, router F32, gpt-oss sinks/sliding layout (converters/moe.py).
    "qwen3_moe": ArchSpec("qwen3moe"),
    "gpt_oss": ArchSpec("gpt-oss", sliding_window=True),
    "qwen3_5_text": ArchSpec("qwen35"),  # transforms (norms + 1 included) in converters/qwen35.py
    "qwen3_5": ArchSpec("qwen35"),
}

# Tensors of a multimodal checkpoint (Mistral3/Gemma3/Gemma4ForConditionalGeneration, Qwen3.5, Llava...)
# that are not its language model, in transformers' old and new layouts: the GGUF and the text-only
# training folder leave them out (llama.cpp takes them as a separate mmproj file).
_TOWERS = ("vision_tower.", "multi_modal_projector.", "audio_tower.", "embed_vision.", "embed_audio.", "visual.")
NOT_TEXT_PREFIXES = _TOWERS + tuple("model." + p for p in _TOWERS)

# model_type -> llama.cpp architecture name (read by training to refuse early).
SUPPORTED_ARCHITECTURES: dict[str, str] = {k: v.gguf_arch for k, v in ARCHITECTURES.items()}
