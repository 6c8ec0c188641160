"""A model imported from a GGUF keeps the source's tokenizer: in training, in export, in verification.

The source is a tiny Llama whose byte-level BPE splits digits apart before GPT-2's split, as SmolLM2's
does (llama.cpp calls that pre-tokenizer `smollm`). transformers' GGUF loader does not know `smollm`
and falls back to GPT-2's split, which joins "\\n\\n" before a digit into one piece where the source
makes "\\n\\n" and "1" separate, and keeps digit runs whole. llama.cpp's tokenizer of the source file is
the reference everything is compared with.
"""

from __future__ import annotations

import json

import gguf
import pytest

from localtune.converters.hf_to_gguf import convert
from localtune.converters.vocab import HARD_TEXTS, GGUFTokenizer
from localtune.errors import ModelSourceError

SPLIT_TEXTS = list(HARD_TEXTS) + ["Tips:\n\n1. Sleep\n\n\n22. Wake 12345 times", "x\n\n7\n  \n  8  9"]


def smollm_style_tokenizer():
    """A byte-level BPE trained with SmolLM2's split (digits apart, then GPT-2's regex) on text with blank
    lines, numbered lists, code and whitespace runs, so its merges include pieces such as "\n\n"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from localtune.model.tiny import FAMILIES, corpus

    lines = corpus(1200)
    docs = [
        f"{lines[i]}\n\n1. {lines[i + 1]}\n2. {lines[i + 2]}\n\n    x = {i} * 12\n\n\n  {lines[i + 3]}"
        for i in range(0, len(lines) - 4, 4)
    ]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    fam = FAMILIES["llama3"]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(fam.specials),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(docs, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=fam.bos, eos_token=fam.eos, additional_special_tokens=list(fam.specials)
    )
    tok.chat_template = fam.template
    return tok


@pytest.fixture(scope="module")
def smollm_style_gguf(tmp_path_factory):
    """An f32 GGUF of a tiny random Llama whose tokenizer splits like SmolLM2's."""
    import torch
    from transformers import AutoModelForCausalLM

    from localtune.model.tiny import tiny_config

    folder = tmp_path_factory.mktemp("smollm-style")
    tok = smollm_style_tokenizer()
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama3", len(tok), tok)).save_pretrained(folder)
    pieces = [tok.convert_tokens_to_ids(t) for t in ("a", "ĊĊ", "1")]
    assert tok("a\n\n1", add_special_tokens=False)["input_ids"] == pieces
    path = tmp_path_factory.mktemp("source") / "source.gguf"  # alone: no tokenizer.json beside it
    convert(folder, path, out_type="f32")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.pre"].contents() == "smollm"
    return path


@pytest.fixture
def imported(smollm_style_gguf, tmp_path, monkeypatch):
    from localtune.model.loading import resolve_base

    monkeypatch.setenv("LOCALTUNE_CACHE", str(tmp_path / "cache"))
    return resolve_base(str(smollm_style_gguf))


def test_the_fallback_split_really_differs_from_the_source(smollm_style_gguf):
    """The bug this file guards against exists: GPT-2's split is not the source's on these texts."""
    from transformers import AutoTokenizer

    fallback = AutoTokenizer.from_pretrained(smollm_style_gguf.parent, gguf_file=smollm_style_gguf.name)
    source = GGUFTokenizer(smollm_style_gguf)
    differ = [t for t in SPLIT_TEXTS if source(t) != fallback(t, add_special_tokens=False)["input_ids"]]
    assert len(differ) >= 4, differ  # blank lines before digits, digit runs, code, whitespace runs


def test_imported_tokenizer_splits_like_the_source_gguf(imported, smollm_style_gguf):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(imported.folder)
    source = GGUFTokenizer(smollm_style_gguf)
    for text in SPLIT_TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == source(text), text
    specials = "<|start_header_id|>user<|end_header_id|>\n\n12 apples<|eot_id|>"
    assert tok(specials, add_special_tokens=False)["input_ids"] == source(specials, special=True)
    assert (tok.bos_token_id, tok.eos_token_id) == (source.bos, source.eos)
    add_bos = gguf.GGUFReader(str(smollm_style_gguf)).fields["tokenizer.ggml.add_bos_token"].contents()
    assert (tok("a")["input_ids"][0] == source.bos) == add_bos  # BOS added on encoding as the GGUF says
    training = imported.tokenizer()  # what training loads
    assert training("a\n\n1", add_special_tokens=False)["input_ids"] == source("a\n\n1")


def test_export_writes_the_source_tokenizer_keys_and_verify_uses_the_source(imported, smollm_style_gguf, tmp_path):
    from localtune.export.verify import verify

    out = convert(imported.folder, tmp_path / "ours.gguf", out_type="f32").path
    src, ours = gguf.GGUFReader(str(smollm_style_gguf)).fields, gguf.GGUFReader(str(out)).fields
    for key in [k for k in src if k.startswith("tokenizer.") and k != "tokenizer.chat_template"]:
        assert ours[key].contents() == src[key].contents(), key
    report = verify(out, imported.folder)
    checks = {c.name: c for c in report.checks}
    assert report.passed, report.render()
    assert str(smollm_style_gguf) in report.reference and "llama.cpp's tokenizer of the source GGUF" in report.reference
    assert checks["tokenizer parity"].value == 0
    assert checks["source predictions"].value == 1.0  # same f32 weights, same arithmetic: identical argmax


def test_verify_catches_a_training_tokenizer_that_drifted_from_the_source(imported, tmp_path):
    """The check compares with the source, not with our own files: break the folder's tokenizer.json the
    way the old import did and both the training side and the report say so."""
    import shutil

    from localtune.export.verify import verify

    folder = tmp_path / "drifted"
    shutil.copytree(imported.folder, folder)
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (folder / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    out = convert(folder, tmp_path / "d.gguf", out_type="f32").path
    report = verify(out, folder)
    parity = next(c for c in report.checks if c.name == "tokenizer parity")
    assert not parity.passed and "the training tokenizer" in parity.detail and "this GGUF" not in parity.detail


def test_a_tuned_copy_is_not_compared_with_the_source_predictions(imported, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from localtune.export.verify import verify

    folder = tmp_path / "tuned"
    shutil.copytree(imported.folder, folder)
    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("o_proj.weight"))
    tensors[name] = tensors[name] + 0.01 * torch.randn_like(tensors[name])
    save_file(tensors, weights, metadata={"format": "pt"})
    report = verify(convert(folder, tmp_path / "t.gguf", out_type="f32").path, folder)
    assert report.passed, report.render()
    assert "source predictions" not in {c.name for c in report.checks}
    assert "source GGUF" in report.reference  # the tokenizer reference stays the source


def test_a_pre_tokenizer_that_cannot_be_rebuilt_is_refused(smollm_style_gguf, tmp_path, monkeypatch):
    from localtune.converters import vocab
    from localtune.model.loading import resolve_base

    monkeypatch.setattr(vocab, "pre_tokenizer_for", lambda pre: None)  # as if localtune did not know `smollm`
    monkeypatch.setenv("LOCALTUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelSourceError, match="pre-tokenizer 'smollm'") as err:
        resolve_base(str(smollm_style_gguf))
    assert "Hugging Face folder or hub id" in err.value.hint
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing half-imported is left to be reused


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # a SentencePiece vocabulary, a byte-level BPE one
def test_other_vocabularies_import_export_and_verify_against_their_source(arch, tiny_model_dir, tmp_path, monkeypatch):
    from localtune.export.verify import verify
    from localtune.model.loading import resolve_base

    source = tmp_path / "source" / f"{arch}.gguf"
    source.parent.mkdir()
    convert(tiny_model_dir(arch), source, out_type="f32")
    monkeypatch.setenv("LOCALTUNE_CACHE", str(tmp_path / "cache"))
    base = resolve_base(str(source))
    report = verify(convert(base.folder, tmp_path / "ours.gguf", out_type="f32").path, base.folder)
    checks = {c.name: c for c in report.checks}
    assert report.passed, report.render()
    assert checks["source predictions"].value == 1.0 and str(source) in report.reference
