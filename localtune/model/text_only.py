"""The language model of a multimodal checkpoint, as a text-only Hugging Face folder.

A Mistral 3 checkpoint (Mistral3ForConditionalGeneration: Mistral Small 3.x, Ministral 3) is a Pixtral
vision tower, a projector and a text decoder (`text_config`: ministral3 or mistral). AutoModelForCausalLM
cannot load it, and localtune trains and exports text only, so the folder is rewritten once, cached by
the weights' fingerprint: config.json becomes the text config, `language_model.model.*` /
`model.language_model.*` become `model.*`, `language_model.lm_head.*` becomes `lm_head.*`, and the
vision tower and projector are left out (their images cannot be used by a text-only model or GGUF).
Tokenizer and template files are copied. Shards are rewritten one at a time (peak memory: one shard).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from localtune.converters.architectures import NOT_TEXT_PREFIXES

# model_type of the wrapper -> its text model's causal-LM class name prefix is taken from text_config
TEXT_ONLY_WRAPPERS = ("mistral3",)
KEEP_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "tokenizer.model",
    "tekken.json",
)


def wrapper_type(folder: Path) -> str | None:
    """The wrapper's model_type when `folder` holds one of TEXT_ONLY_WRAPPERS, else None."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the folder checks report it
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    return kind if kind in TEXT_ONLY_WRAPPERS and isinstance(raw.get("text_config"), dict) else None


def text_name(name: str) -> str | None:
    """The text model's name for a wrapper tensor, None for the vision tower and projector."""
    if name.startswith(NOT_TEXT_PREFIXES):
        return None
    if name.startswith("language_model."):
        return name.removeprefix("language_model.")
    return name.replace("model.language_model.", "model.", 1)


def text_only_folder(folder: Path, target: Path) -> Path:
    """Write the text model of the wrapper checkpoint in `folder` to `target` (atomically); return target."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import CONFIG_MAPPING

    from localtune.files import atomic_folder, recover_folder
    from localtune.model.checks import weight_files

    recover_folder(target)
    if (target / "config.json").is_file():
        return target
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = dict(raw["text_config"])
    kind = text.get("model_type", "mistral")
    config_class = CONFIG_MAPPING[kind].__name__  # e.g. Ministral3Config -> Ministral3ForCausalLM
    text["architectures"] = [config_class.removesuffix("Config") + "ForCausalLM"]
    text.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", False))
    for key in ("dtype", "torch_dtype", "transformers_version"):
        if key in raw:
            text.setdefault(key, raw[key])
    with atomic_folder(target) as tmp:
        (tmp / "config.json").write_text(json.dumps(text, indent=2), encoding="utf-8")
        for name in KEEP_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        files = weight_files(folder)
        index = {}
        for i, f in enumerate(files):
            out = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" if len(files) > 1 else "model.safetensors"
            tensors = {}
            with safe_open(f, framework="pt") as st:
                for name in st.keys():
                    if (new := text_name(name)) is not None:
                        tensors[new] = st.get_tensor(name)
            save_file(tensors, tmp / out, metadata={"format": "pt"})
            index.update(dict.fromkeys(tensors, out))
        if len(files) > 1:
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": index}, indent=1), encoding="utf-8"
            )
    return target
