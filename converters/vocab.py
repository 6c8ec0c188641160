"""Tokenizers into GGUF: SentencePiece ("llama" vocab) and byte-level BPE ("gpt2" vocab).

SentencePiece tokens, scores and types come from the original `tokenizer.model` (transformers 5
does not save it; localtune keeps it). BPE tokens and merges come from `tokenizer.json`, and the
llama.cpp pre-tokenizer is chosen by matching the tokenizer's own split rules against the ones
llama.cpp implements: an unknown rule is an error showing the regex, never a silent "default".
Special token ids, add_bos/add_eos and the chat template are written by gguf's SpecialVocab.

A model imported from a GGUF keeps its source's tokenizer facts: `SOURCE_VOCAB`, a GGUF holding every
key of the source file and no tensors, travels with the imported folder (and its merged copies), and
export copies the tokenizer keys from it verbatim instead of re-deriving them from tokenizer.json.
`GGUFTokenizer` is llama.cpp's own tokenizer of a file, the reference such models are checked against.
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
# Mistral's Tekken (Mistral NeMo, Ministral, Mistral 3); llama.cpp's "tekken" also skips merges for a piece
# that is a whole token (tokenizer.json "ignore_merges": true) and always adds BOS.
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# OpenAI o200k (gpt-4o, gpt-oss). llama.cpp runs an ASCII-case rewrite of it (llama-vocab.cpp, GPT4O).
O200K_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_PRE_TOKENIZERS: dict[tuple, str] = {
    (("split", QWEN2_SPLIT), ("bytelevel",)): "qwen2",
    (("split", LLAMA3_SPLIT), ("bytelevel",)): "llama-bpe",
    (("split", QWEN35_SPLIT), ("bytelevel",)): "qwen35",
    (("split", O200K_SPLIT), ("bytelevel",)): "gpt-4o",
    (("bytelevel-gpt2-regex",),): "gpt-2",
    (("digits", True), ("bytelevel-gpt2-regex",)): "smollm",  # also StarCoder's and Granite's
    (("split", TEKKEN_SPLIT), ("bytelevel",)): "tekken",
}


# Texts that tell tokenizers apart: blank lines before digits and lists, digit runs, code, whitespace runs,
# accents, CJK, emoji, contractions. Import and verification both tokenize these.
HARD_TEXTS = (
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "   leading spaces, two  spaces,\ttabs\tand\ttrailing   ",
    "line one\nline two\n\n\nafter blank lines\r\nwindows line",
    "Numbers: 0 7 42 1234567 3.14159 -12 1,000,000 2026-11-22",
    "def add(a, b):\n    return a + b  # code with indentation\n\nprint(add(2, 3))",
    "Here are three tips for sleeping better:\n\n1. **Avoid screens** an hour before bed.\n2. Keep it cool (18C).",
    "Whitespace runs:\n\n\n    \n\t\t  x    y\n  \n12\n\n345",
    "Accents: café naïve über résumé Ångström São Paulo",
    "CJK: 東京は日本の首都です。 数据 模型 北京",
    "Emoji: 🙂🚀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "Mixed: it's we'll they'd I'M HELLO... (brackets) [x] {y} <z>",
)
SOURCE_VOCAB = "source-vocab.gguf"
_SOURCE_FILE_KEY = "localtune.source.file"
_SOURCE_FOLDER_KEY = "localtune.source.folder"


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


def pre_tokenizer_for(pre: str):
    """The `tokenizers` pre-tokenizer that splits text as llama.cpp's pre-tokenizer `pre` does, or None."""
    from tokenizers import Regex, pre_tokenizers

    for steps, name in KNOWN_PRE_TOKENIZERS.items():
        if name != pre:
            continue
        built = []
        for step in steps:
            if step[0] == "split":
                built.append(pre_tokenizers.Split(Regex(step[1]), behavior="isolated"))
            elif step[0] == "digits":
                built.append(pre_tokenizers.Digits(individual_digits=step[1]))
            else:
                built.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=step[0] != "bytelevel"))
        return built[0] if len(built) == 1 else pre_tokenizers.Sequence(built)
    return None


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

    if (folder / SOURCE_VOCAB).is_file():
        return copy_source_vocab(writer, folder / SOURCE_VOCAB, n_vocab, chat_template)
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


# --- models imported from a GGUF --------------------------------------------------------------------
def save_source_vocab(source: Path, out: Path, folder: Path) -> None:
    """Keep every metadata key of the GGUF `source` (no tensors) in `out`, with where it came from and
    the folder its weights were imported into (merged copies carry this file, not those weights)."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch=arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name.startswith("localtune."):
            continue
        _copy_field(writer, name, f)
    writer.add_string(_SOURCE_FILE_KEY, str(Path(source).resolve()))
    writer.add_string(_SOURCE_FOLDER_KEY, str(Path(folder).resolve()))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


def source_of(folder: Path) -> dict | None:
    """For a folder imported from a GGUF or derived from one: {"vocab": its SOURCE_VOCAB, "file": the
    source GGUF's path (None if it is no longer there), "imported": whether `folder` holds the imported
    weights themselves (not a tuned copy), "model": the vocab kind}; None for other folders."""
    import gguf

    path = Path(folder) / SOURCE_VOCAB
    if not path.is_file():
        return None
    fields = gguf.GGUFReader(str(path)).fields

    def value(key):
        return fields[key].contents() if key in fields else None

    file, imported_into = value(_SOURCE_FILE_KEY), value(_SOURCE_FOLDER_KEY)
    return {
        "vocab": path,
        "file": Path(file) if file and Path(file).is_file() else None,
        "imported": bool(imported_into) and Path(imported_into) == Path(folder).resolve(),
        "model": value("tokenizer.ggml.model"),
    }


def copy_source_vocab(writer, vocab: Path, n_vocab: int, chat_template: str | None) -> str:
    """Write the tokenizer keys of an imported model's source GGUF as they are; returns the vocab kind."""
    import gguf

    fields = gguf.GGUFReader(str(vocab)).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != n_vocab:
        raise VocabError(
            f"{vocab} holds {len(tokens.data) if tokens else 0} tokens but the model has {n_vocab}",
            hint="the vocabulary changed since the model was imported from its GGUF; delete this file to export "
            "from the folder's tokenizer.json instead",
        )
    for name, f in fields.items():
        if not name.startswith("tokenizer.") or (chat_template and name == "tokenizer.chat_template"):
            continue
        _copy_field(writer, name, f)
    if chat_template:
        writer.add_chat_template(chat_template)
    return fields["tokenizer.ggml.model"].contents()


def _copy_field(writer, name: str, field) -> None:
    import gguf

    kind = field.types[0]
    sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(name, field.contents(), kind, sub_type=sub_type)


class GGUFTokenizer:
    """llama.cpp's own tokenizer of a GGUF file, loaded without its tensors."""

    def __init__(self, path: Path):
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.path = Path(path)
        self._model = LlamaModel(path_model=str(path), params=params, verbose=False)
        self.bos, self.eos = self._model.token_bos(), self._model.token_eos()

    def __call__(self, text: str, special: bool = False) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), False, special)

    def close(self) -> None:
        self._model.close()


def comparable_texts(kind: str | None, texts: list[str], with_specials: str) -> list[str]:
    """The texts on which transformers' tokenizer of a GGUF can be held to llama.cpp's: `texts` and
    `with_specials` (a text holding special tokens). For SentencePiece ("llama") vocabularies, transformers
    and llama.cpp disagree on text that starts with whitespace (a leading run of spaces gets one "▁"
    fewer) and on the dummy prefix after a special token, exactly as transformers disagrees with
    sentencepiece itself for a Hugging Face folder; those texts are left out."""
    if kind != "llama":
        return [*texts, with_specials]
    return [t for t in texts if not t[:1].isspace()]


def first_mismatch(reference, candidate, texts) -> tuple[str, list[int], list[int]] | None:
    """The first text two tokenizers (callables text -> ids) split differently, with both splits."""
    for text in texts:
        want, got = reference(text), candidate(text)
        if want != got:
            return text, want, got
    return None
