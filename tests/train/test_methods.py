"""Every adapter method besides LoRA (localtune/methods.py) on a tiny llama: the loss falls, an interrupted
run resumes to the uninterrupted losses, and a mergeable method's merged model gives the logits of peft's
own base + adapter forward pass."""

from __future__ import annotations

import os
import signal

import pytest
from helpers import chat, write_jsonl

from localtune.config import load_config
from localtune.errors import ConfigError, UsageError
from localtune.events import ListSink, StepMetrics
from localtune.methods import METHODS
from localtune.train.loop import Hooks
from localtune.train.run import train_run

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(8)]
STEPS = 12
PEFT_METHODS = [m for m in METHODS.values() if m.peft and m.name != "lora"]
# learning rates that make a tiny random model move in a dozen steps (the recipe's are for real models)
LR = {
    "ia3": 3e-1,
    "vera": 1e-1,
    "ln_tuning": 1e-1,
    "prompt_tuning": 1e-1,
    "p_tuning": 3e-2,
    "prefix_tuning": 2e-1,
    "llama_adapter": 3e-1,
}


def config(model_dir, data, name: str, **over):
    m = METHODS[name]
    values = {
        "model.name_or_path": str(model_dir),
        "data.path": str(data),
        "adapter.method": name,
        "adapter.r": 4,
        "adapter.virtual_tokens": 4,
        "adapter.oft_block_size": 16,
        "adapter.adapter_layers": 1,
        "train.max_steps": STEPS,
        "train.lr": LR.get(name, 1e-2),
        "train.micro_batch_size": 2,
        "train.grad_accum": 2,
        "data.val_fraction": 0,
        "train.save_every": 4,
        "train.seed": 7,
        "train.load_in_4bit": m.four_bit,
        **over,
    }
    return load_config(None, {k: (v, "test") for k, v in values.items()})


def stop_before_step(step: int) -> Hooks:
    sent = []

    def before_micro(s, _mb):
        if s == step and not sent:
            sent.append(s)
            os.kill(os.getpid(), signal.SIGINT)

    return Hooks(before_micro=before_micro)


def losses(sink: ListSink) -> list[float]:
    return [e.loss for e in sink.of(StepMetrics)]


def merged_matches_peft(run, model_dir) -> float:
    """max |Δlogit| between the merged folder and peft's forward of the fp32 base + the run's adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from localtune.export.merge import merge_run

    merge_run(run)
    ids = torch.tensor([[1, 5, 9, 77, 300, 42, 8, 120]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        plain = base(input_ids=ids).logits
        reference = PeftModel.from_pretrained(base, run / "adapter").eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)(input_ids=ids).logits
    assert float((reference - plain).abs().max()) > 1e-3  # the adapter changes the model
    return float((merged - reference).abs().max())


@pytest.mark.parametrize("name", [m.name for m in PEFT_METHODS])
def test_method_learns_resumes_exactly_and_merges(name, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    model = tiny_model_dir("llama")
    full = ListSink()
    assert train_run(config(model, data, name), tmp_path / "full", sinks=[full]).status == "finished"
    got = losses(full)
    assert len(got) == STEPS and got[-1] < 0.85 * got[0], got
    loaded = next(e for e in full.events if e.kind == "model_loaded")
    assert loaded.quantized is METHODS[name].four_bit and 0 < loaded.params_trainable < loaded.params_total

    first, second = ListSink(), ListSink()
    cut = train_run(config(model, data, name), tmp_path / "cut", sinks=[first], hooks=stop_before_step(6))
    assert cut.status == "interrupted"
    assert train_run(config(model, data, name), tmp_path / "cut", resume=True, sinks=[second]).status == "finished"
    assert losses(first) + losses(second) == pytest.approx(got, abs=1e-4)

    if METHODS[name].mergeable:
        assert merged_matches_peft(tmp_path / "full", model) < 1e-4
    else:
        from localtune.export.merge import merge_run

        with pytest.raises(UsageError, match="nothing to merge") as info:
            merge_run(tmp_path / "full")
        assert info.value.exit_code == 2


@pytest.mark.parametrize("name", ["loha", "lokr"])
def test_methods_that_cannot_train_on_4_bit_say_so(name, tmp_path):
    with pytest.raises(ConfigError, match=f"{name} cannot train on a 4-bit base") as info:
        load_config(None, {"adapter.method": (name, "--method"), "train.load_in_4bit": (True, "--quant")})
    assert "--no-quant" in info.value.render() and info.value.exit_code == 2
    unset = load_config(None, {"adapter.method": (name, "--method")})  # 4-bit left unset: a 16-bit base
    assert unset.train.load_in_4bit is False and "needs a 16-bit base" in unset.source_of("train.load_in_4bit")


def test_prompt_tuning_starts_from_vocabulary_rows_not_random_vectors(tiny_model_dir, tmp_path):
    """peft's default init draws N(0, 1) rows, ~50x the norm of real embeddings; ours starts from the vocabulary."""
    import torch

    from localtune.model.loading import load_for_training, resolve_base

    model = tiny_model_dir("llama")
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    for init in ("", "Answer like the examples"):
        cfg = config(model, data, "prompt_tuning", **{"adapter.init_text": init, "adapter.virtual_tokens": 6})
        peft_model = load_for_training(cfg, resolve_base(str(model))).model
        vectors = peft_model.get_prompt_embedding_to_save("default")
        table = peft_model.get_input_embeddings().weight
        # every virtual row is one of the vocabulary's rows
        nearest = torch.cdist(vectors.float(), table.float()).min(dim=1).values
        assert float(nearest.max()) < 1e-2 * float(table.norm(dim=1).mean())
        assert float(vectors.norm(dim=1).mean()) < 2 * float(table.norm(dim=1).mean())


def test_llama_adapter_is_refused_on_other_architectures(tiny_model_dir, tmp_path):
    from localtune.errors import ModelSourceError

    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    with pytest.raises(ModelSourceError, match="llama and mistral models only"):
        train_run(config(tiny_model_dir("qwen2"), data, "llama_adapter"), tmp_path / "run")


def test_planner_counts_each_methods_trainable_parameters_as_peft_creates_them(tiny_model_dir, tmp_path):
    """The plan's adapter size per method against the trainable parameters peft really creates."""
    from transformers import AutoConfig

    from localtune.model.loading import load_for_training, resolve_base
    from localtune.planner import Shape

    model = tiny_model_dir("llama")
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    shape = Shape.from_config(AutoConfig.from_pretrained(model))
    approximate = {"lokr": 0.3, "p_tuning": 0.05}  # relative error allowed where the count is estimated
    for m in PEFT_METHODS:
        cfg = config(model, data, m.name, **{"train.load_in_4bit": False})
        trained = load_for_training(cfg, resolve_base(str(model))).model
        real = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        planned = shape.adapter_params(m.name, 4, ["all-linear"], 4, 1, block=16)
        assert planned == pytest.approx(real, rel=approximate.get(m.name, 0)), m.name


def test_plan_and_data_inspect_know_the_method(cli, tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    lora = cli("plan", "--model", model, "--vram", "8")
    prefix = cli("plan", "--model", model, "--vram", "8", "--method", "prefix_tuning", "--virtual-tokens", "8")
    assert lora.exit_code == 0 and prefix.exit_code == 0, prefix.output
    assert "LoRA parameters" in lora.output and "checkpointing on" in lora.output
    # peft refuses gradient checkpointing with prefix tuning: the plan has it off, and its parameters
    assert "Prefix tuning parameters" in prefix.output and "checkpointing off" in prefix.output
    inspect = cli("data", "inspect", data, "--model", model, "--method", "prompt_tuning", "--virtual-tokens", "8")
    assert inspect.exit_code == 0, inspect.output
    assert "method prompt_tuning (Prompt tuning): 8 virtual tokens go before every row" in inspect.output
