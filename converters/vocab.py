"""Tokenizers into GGUF: SentencePiece ("llama" vocab) and byte-level BPE ("gpt2" vocab).

SentencePiece tokens, scores and types come from the original `tokenizer.model` (transformers 5
does not save it; localtune keeps it). BPE tokens and merges come from `tokenizer.json`, and the
llama.cpp pre-tokenizer is chosen by matching the tokenizer's own split rules against the ones
llama.cpp implements: an unknown rule is an error showing the regex, never a silent "default".
Special token ids, add_bos/add_eos and the chat template are written by gguf's SpecialVocab.
"""

from __future__ import annotations

import json
from pathlib import Path

from localtune.errors import LocaltuneError

# llama.cpp pre-tokenizer names, keyed by the tokenizer.json pre-tokenizer steps they implement.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_PRE_TOKENIZERS: dict[tuple, str] = {
    (("split", QWEN2_SPLIT), ("bytelevel",)): "qwen2",
    (("split", LLAMA3_SPLIT), ("bytelevel",)): "llama-bpe",
    (("split", QWEN35_SPLIT), ("bytelevel",)): "qwen35",
    (("bytelevel-gpt2-regex",),): "gpt-2",
    (("digits", True), ("bytelevel-gpt2-regex",)): "smollm",
}


class VocabError(LocaltuneError):
    exit_code = 2
    title = "unsupported tokenizer"


def pre_tokenizer_steps(spec: dict | None) -> tuple:
    """tokenizer.json's pre_tokenizer as a comparable tuple of steps."""
    if spec is None:
        return ()
    kind = spec.get("type")
    if kind == "Sequence":
        return tuple(step for p in spec["pretokenizers"] for step in pre_tokenizer_steps(p))
    if kind == "Split":
        pattern = spec.get("pattern", {})
        return (("split", pattern.get("Regex", pattern.get("String"))),)
    if kind == "ByteLevel":
        return (("bytelevel-gpt2-regex",),) if spec.get("use_regex", True) else (("bytelevel",),)
    if kind == "Digits":
        return (("digits", bool(spec.get("individual_digits"))),)
    return ((kind,),)


def choose_pre_tokenizer(tokenizer_json: dict) -> str:
    steps = pre_tokenizer_steps(tokenizer_json.get("pre_tokenizer"))
    name = KNOWN_PRE_TOKENIZERS.get(steps)
    if name is None:
        shown = "; ".join(" ".join(str(x) for x in s) for s in steps) or "(none)"
        raise VocabError(
            f"the tokenizer's pre-tokenizer is not one llama.cpp implements: {shown}",
            hint="llama.cpp would split text differently from this tokenizer; supported: "
            + ", ".join(sorted(set(KNOWN_PRE_TOKENIZERS.values()))),
        )
    return name


def write_vocab(writer, folder: Path, n_vocab: int, chat_template: str | None, add_space_prefix: bool | None) -> str:
    """Write the tokenizer keys; returns the vocab kind ("llama" or "gpt2")."""
    import gguf

    if (folder / "tokenizer.model").is_file():
        kind = "llama"
        tokens, scores, types = _sentencepiece(folder, n_vocab)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        if add_space_prefix is not None:
            writer.add_add_space_prefix(add_space_prefix)
        special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=len(tokens))
    elif (folder / "tokenizer.json").is_file():
        kind = "gpt2"
        tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        if tj.get("model", {}).get("type") != "BPE":
            raise VocabError(
                f"{folder / 'tokenizer.json'} is a {tj.get('model', {}).get('type')} tokenizer "
                "without a tokenizer.model",
                hint="only SentencePiece and byte-level BPE are supported",
            )
        tokens, types = _bpe(folder, tj, n_vocab)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(choose_pre_tokenizer(tj))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
        if not special.merges:
            raise VocabError(f"{folder / 'tokenizer.json'} has no BPE merges", hint="re-save the tokenizer")
    else:
        raise VocabError(
            f"{folder} has neither tokenizer.model nor tokenizer.json",
            hint="save the tokenizer next to the model (tokenizer.save_pretrained)",
        )
    if chat_template:
        special.chat_template = chat_template
    _fill_special_ids(special, folder)
    special.add_to_gguf(writer)
    if kind == "gpt2" and "bos" in special.special_token_ids and special.add_special_token.get("bos") is None:
        writer.add_add_bos_token(False)
    return kind


def _fill_special_ids(special, folder: Path) -> None:
    """Ids SpecialVocab could not resolve (SentencePiece folders without added_tokens): from transformers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    for typ in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{typ}_token_id", None)
        if tid is not None and typ not in special.special_token_ids:
            special.special_token_ids[typ] = tid
    if "bos" not in special.add_special_token and hasattr(tok, "add_bos_token"):
        special.add_special_token["bos"] = bool(tok.add_bos_token)
    special.add_special_token.setdefault("eos", False)


def _added_tokens(folder: Path, tokenizer_json: dict | None = None) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) for tokens transformers added on top of the base vocabulary."""
    if tokenizer_json is None:
        path = folder / "tokenizer.json"
        tokenizer_json = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {t["id"]: (t["content"], bool(t.get("special"))) for t in tokenizer_json.get("added_tokens", [])}


def _sentencepiece(folder: Path, n_vocab: int):
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(sp.GetScore(i))
        if sp.IsUnknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.IsControl(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.IsUnused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.IsByte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    added = _added_tokens(folder)
    for tid, (content, special) in added.items():  # chat-control symbols inside the model: special
        if tid < len(tokens) and special and tokens[tid] == content.encode("utf-8"):
            types[tid] = gguf.TokenType.CONTROL
    for i in range(len(tokens), n_vocab):  # transformers-added tokens beyond the model, then padding
        content, special = added.get(i, (f"[PAD{i}]", False))
        tokens.append(content.encode("utf-8"))
        scores.append(-1000.0 if i in added else -10000.0)
        types.append(
            gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.UNUSED
        )
    return tokens, scores, types


def _bpe(folder: Path, tj: dict, n_vocab: int):
    import gguf

    vocab = tj["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    added = _added_tokens(folder, tj)
    size = max(n_vocab, len(by_id), max(added, default=-1) + 1)
    tokens, types = [], []
    for i in range(size):
        if i in added:
            content, special = added[i]
            tokens.append(content)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types
