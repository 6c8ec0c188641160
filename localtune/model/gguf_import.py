"""A `.gguf` base model as a Hugging Face folder that trains on the tokenizer the GGUF really has.

transformers' GGUF loader dequantizes the weights and rebuilds a tokenizer from the file's metadata,
but it knows only some of llama.cpp's pre-tokenizers: for the others (SmolLM2's `smollm`, which splits
digits apart) it silently falls back to GPT-2's split, and a model trained on that tokenization talks
worse than the one it came from. So the import
1. puts back the pre-tokenizer the GGUF names, where localtune knows it (converters.vocab);
2. checks the result against llama.cpp's own tokenizer of the source file on hard texts and special
   tokens, and whether encoding adds BOS/EOS as the file says, and refuses the file, saying so, if they
   still differ;
3. keeps every metadata key of the source (converters.vocab.SOURCE_VOCAB) in the folder, so export
   writes the source's own tokenizer facts and verification compares with the source itself.

The folder is cached under the localtune cache, keyed by the file's fingerprint.
"""

from __future__ import annotations

import functools
from pathlib import Path

from localtune.errors import ModelSourceError

# Bumped when the import itself changes, so folders a fixed bug produced are imported again.
IMPORT_VERSION = 2


def import_gguf(path: Path) -> Path:
    """Dequantize a GGUF through transformers and keep it as a Hugging Face folder (cached)."""
    from localtune.converters.vocab import SOURCE_VOCAB, save_source_vocab
    from localtune.files import atomic_folder, recover_folder
    from localtune.model.loading import cache_dir, fingerprint, quiet_progress

    target = cache_dir() / "gguf-imports" / f"{path.stem}-{fingerprint([path])}-v{IMPORT_VERSION}"
    recover_folder(target)  # an import replaced by a crashed one: the moved-aside copy is complete
    if (target / "config.json").is_file() and (target / SOURCE_VOCAB).is_file():
        return target
    model, tokenizer = _load(path)
    restore_tokenizer(tokenizer, path)
    # The GGUF loader leaves its (non-serializable) dequantizing quantizer attached; the weights it
    # produced are plain tensors, so detach it and save them as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Saved under a temporary name and renamed whole: a crash mid-save never leaves a folder that the
    # check above would take for a finished import.
    with quiet_progress(), atomic_folder(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _drop_tokens_past(tmp, model.config.vocab_size)
        save_source_vocab(path, tmp / SOURCE_VOCAB, target)
    return target


def _drop_tokens_past(folder: Path, n_vocab: int) -> None:
    """transformers' GGUF loader adds GPT-2's <|endoftext|> to byte-level vocabularies that lack it, as an
    id past the embedding; the GGUF has no such token, so the saved tokenizer loses it again."""
    import json

    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    tj = json.loads(path.read_text(encoding="utf-8"))
    kept = [t for t in tj.get("added_tokens", []) if t["id"] < n_vocab]
    if len(kept) != len(tj.get("added_tokens", [])):
        tj["added_tokens"] = kept
        path.write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from localtune.model.loading import quiet_progress

    bar = gguf_utils.tqdm  # its dequantizing bar ignores transformers' switch: silence it for this call
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        raise ModelSourceError(
            f"cannot import {path} through transformers' GGUF loader: {str(exc).splitlines()[0]}",
            hint="use a Hugging Face folder or hub id for this model instead",
        ) from None
    finally:
        gguf_utils.tqdm = bar
    return model, tokenizer


def _adds(tokenizer, end: str) -> bool:
    ids = tokenizer("a")["input_ids"]
    token = getattr(tokenizer, f"{end}_token_id")
    return bool(ids) and (ids[0] if end == "bos" else ids[-1]) == token


def restore_tokenizer(tokenizer, path: Path) -> None:
    """Give `tokenizer` (transformers' rebuild from the GGUF at `path`) the GGUF's pre-tokenizer, then
    check it against llama.cpp's tokenizer of the file. Raises ModelSourceError if they differ."""
    import gguf

    from localtune.converters.vocab import (
        HARD_TEXTS,
        GGUFTokenizer,
        comparable_texts,
        first_mismatch,
        pre_tokenizer_for,
    )

    fields = gguf.GGUFReader(str(path)).fields
    kind = fields["tokenizer.ggml.model"].contents() if "tokenizer.ggml.model" in fields else None
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else None
    if kind == "gpt2" and pre and (split := pre_tokenizer_for(pre)) is not None:
        tokenizer.backend_tokenizer.pre_tokenizer = split
    for end in ("bos", "eos"):  # whether encoding adds BOS/EOS, as the GGUF says
        key = f"tokenizer.ggml.add_{end}_token"
        if key in fields and getattr(tokenizer, f"{end}_token_id", None) is not None:
            wanted = bool(fields[key].contents())
            if _adds(tokenizer, end) != wanted and hasattr(tokenizer, f"add_{end}_token"):
                setattr(tokenizer, f"add_{end}_token", wanted)
            if _adds(tokenizer, end) != wanted:
                raise ModelSourceError(
                    f"{path} says {key} = {wanted}, but transformers' tokenizer rebuilt from it does "
                    + ("not add" if wanted else "add")
                    + f" {end.upper()}",
                    hint="pass the model's Hugging Face folder or hub id instead of the GGUF",
                    title="GGUF tokenizer not reproducible",
                )
    reference = GGUFTokenizer(path)
    try:
        specials = [t for t in tokenizer.all_special_tokens if t != tokenizer.pad_token][:4]
        texts = comparable_texts(kind, list(HARD_TEXTS), "Hi" + " there".join(specials) + " done\n\n12")
        diff = first_mismatch(
            lambda t: reference(t, special=True),
            lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
            texts,
        )
    finally:
        reference.close()
    if diff:
        text, want, got = diff
        raise ModelSourceError(
            f"{path} uses the {kind} tokenizer with llama.cpp's pre-tokenizer {pre!r}, which transformers does not "
            f"rebuild faithfully: on {text[:40]!r} llama.cpp gives {want[:12]} but transformers {got[:12]}",
            hint="training on that tokenization would teach the model text it never saw; pass the model's Hugging "
            "Face folder or hub id instead of the GGUF",
            title="GGUF tokenizer not reproducible",
        )
