"""The architectures added for 2026's models train as the first ones do: QLoRA and LoRA learn, and an
interrupted QLoRA run resumes to the losses of an uninterrupted one.

The older families (llama, mistral, qwen2, qwen3, gemma 1-3, phi3) are trained throughout the rest of
tests/train; their padding-free loss and LoRA gradients are checked per architecture in
tests/train/speed/test_fast_path.py, as these are.
"""

from __future__ import annotations

import os
import signal

import pytest
from helpers import chat, write_jsonl

from localtune.config import load_config
from localtune.events import ListSink, StepMetrics
from localtune.model.tiny import ARCHITECTURES
from localtune.train.loop import Hooks
from localtune.train.run import train_run

FIRST_FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3")
# Mixture-of-experts models have their own test, which also checks what gets LoRA and stays 16-bit
# (tests/train/test_training.py::test_moe_trains_attention_and_experts_keeps_them_16_bit_and_resumes).
MOE = ("qwen3_moe", "gpt_oss")
NEW = [a for a in ARCHITECTURES if a not in FIRST_FAMILIES + MOE]
FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(8)]
STEPS = 16


def config(model_dir, data, quant: bool):
    values = {
        "model.name_or_path": str(model_dir),
        "data.path": str(data),
        "train.max_steps": STEPS,
        "train.lr": 1e-2,
        "train.micro_batch_size": 2,
        "train.grad_accum": 2,
        "data.val_fraction": 0,
        "train.save_every": 4,
        "train.seed": 7,
        "train.load_in_4bit": quant,
    }
    return load_config(None, {k: (v, "test") for k, v in values.items()})


def stop_before_step(step: int) -> Hooks:
    """SIGINT once, before the first micro-batch of `step` (a second one would force an immediate exit)."""
    sent = []

    def before_micro(s, _mb):
        if s == step and not sent:
            sent.append(s)
            os.kill(os.getpid(), signal.SIGINT)

    return Hooks(before_micro=before_micro)


def losses(sink: ListSink) -> list[float]:
    return [e.loss for e in sink.of(StepMetrics)]


@pytest.mark.parametrize("arch", NEW)
def test_qlora_and_lora_learn_and_qlora_resumes_exactly(arch, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    model = tiny_model_dir(arch)
    full = ListSink()
    assert train_run(config(model, data, True), tmp_path / "full", sinks=[full]).status == "finished"
    got = losses(full)
    assert len(got) == STEPS and got[-1] < 0.6 * got[0], got
    loaded = next(e for e in full.events if e.kind == "model_loaded")
    assert loaded.quantized and loaded.params_trainable < loaded.params_total

    first, second = ListSink(), ListSink()
    cut = train_run(config(model, data, True), tmp_path / "cut", sinks=[first], hooks=stop_before_step(8))
    assert cut.status == "interrupted"
    assert train_run(config(model, data, True), tmp_path / "cut", resume=True, sinks=[second]).status == "finished"
    assert losses(first) + losses(second) == pytest.approx(got, abs=1e-4)

    plain = ListSink()
    assert train_run(config(model, data, False), tmp_path / "lora", sinks=[plain]).status == "finished"
    assert losses(plain)[-1] < 0.6 * losses(plain)[0], losses(plain)


def test_gemma4_moe_is_refused_for_training_before_anything_loads(tmp_path):
    """Its GGUF converts (tests/export/test_export.py); training it is not done yet, and says so."""
    import transformers

    from localtune.errors import ModelSourceError
    from localtune.model.loading import resolve_base
    from localtune.model.tiny import build_tokenizer, tiny_config

    tok = build_tokenizer("gemma4", tmp_path)
    cfg = tiny_config("gemma4", len(tok), tok).to_dict()
    cfg.update(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32)
    cfg.update(hidden_size_per_layer_input=0, num_kv_shared_layers=0, use_double_wide_mlp=False)
    transformers.AutoModelForCausalLM.from_config(transformers.Gemma4TextConfig(**cfg)).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="mixture-of-experts layout") as err:
        resolve_base(str(tmp_path))
    assert "localtune export" in err.value.hint
