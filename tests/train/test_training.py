"""The training engine on tiny models on the CPU: learning, the saved adapter, exact resume, faults."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
from helpers import chat, write_jsonl

from localtune.config import load_config
from localtune.errors import LocaltuneError, ModelSourceError
from localtune.events import CheckpointSaved, EvalResult, Finished, ListSink, StepMetrics, read_events
from localtune.events import Warning as WarningEvent
from localtune.train.checkpoint import CheckpointStore
from localtune.train.loop import Hooks, TrainingError
from localtune.train.run import train_run

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(10)]


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "facts.jsonl", FACTS)


def make_cfg(model_dir, data, **overrides):
    values = {
        "model.name_or_path": str(model_dir),
        "data.path": str(data),
        "train.max_steps": 30,
        "train.lr": 5e-3,
        "train.grad_accum": 4,
        "data.val_fraction": 0,
        "train.save_every": 100,
        "train.seed": 7,
    }
    values.update(overrides)
    return load_config(None, {k: (v, "test") for k, v in values.items()})


def losses(sink: ListSink) -> list[float]:
    return [e.loss for e in sink.of(StepMetrics)]


@pytest.mark.parametrize("arch", ["qwen2"])  # each other architecture: tests/train/test_architectures.py
@pytest.mark.parametrize("quant", [True, False], ids=["qlora-4bit", "lora-fp32"])
def test_loss_falls_on_a_memorization_set(quant, arch, tmp_path, data, tiny_model_dir):
    sink = ListSink()
    result = train_run(
        make_cfg(tiny_model_dir(arch), data, **{"train.load_in_4bit": quant}), tmp_path / "run", sinks=[sink]
    )
    got = losses(sink)
    assert result.status == "finished" and len(got) == 30
    assert got[-1] < got[0] / 2, got
    loaded = [e for e in sink.events if e.kind == "model_loaded"][0]
    assert loaded.quantized is quant and loaded.params_trainable < loaded.params_total


def test_run_folder_and_adapter_reproduce_the_trained_model(tmp_path, data, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model_dir = tiny_model_dir("llama")
    captured = {}
    ids = torch.tensor([[1, 5, 9, 77, 300, 42, 8]])

    def trained(model):
        model.eval()
        with torch.no_grad():
            captured["logits"] = model(input_ids=ids).logits

    run = tmp_path / "run"
    result = train_run(
        make_cfg(model_dir, data, **{"train.max_steps": 8, "data.val_fraction": 0.2, "train.eval_every": 4}),
        run,
        hooks=Hooks(trained=trained),
    )
    assert result.status == "finished"
    for name in (
        "config.yaml",
        "events.jsonl",
        "run.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "chat_template.jinja",
    ):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 8 and len(info["losses"]) == 8
    assert info["base"]["model_type"] == "llama" and len(info["data"]["fingerprint"]) == 16
    assert [e[0] for e in info["eval_losses"]] == [4, 8]
    kinds = [e.kind for e in read_events(run / "events.jsonl")]
    assert kinds[:3] == ["run_started", "data_prepared", "model_loaded"] and kinds[-1] == "finished"
    assert kinds.count("step") == 8 and kinds.count("eval") == 2

    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=q, dtype=torch.float32)
    for m in base.modules():  # bitsandbytes' bf16 CPU inference kernel is approximate: compare like with like
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        before = base(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(base, run / "adapter").eval()
        after = peft_model(input_ids=ids).logits
    torch.testing.assert_close(after, captured["logits"], atol=1e-5, rtol=1e-5)
    assert (after - before).abs().max() > 1e-2  # the adapter really changes the model


def interrupt_at(step: int, micro: int):
    """A hook that sends this process SIGINT before micro-batch `micro` of step `step` (0-based step)."""
    seen = {"micro": 0, "step": -1}

    def before_micro(s, _mb):
        if s != seen["step"]:
            seen["step"], seen["micro"] = s, 0
        if s == step and seen["micro"] == micro:
            os.kill(os.getpid(), signal.SIGINT)
        seen["micro"] += 1

    return Hooks(before_micro=before_micro)


@pytest.mark.parametrize(
    "arch,step,micro",
    [("qwen2", 4, 1), ("qwen2", 2, 0), ("qwen2", 5, 0)],
    ids=["mid-accumulation", "epoch-end", "plain"],
)
def test_resume_reproduces_the_uninterrupted_losses(arch, step, micro, tmp_path, data, tiny_model_dir):
    # 10 rows, 2 per micro-batch, 2 micro-batches a step: epochs end after steps 3, 6, 9 (4 + 4 + 2 rows).
    over = {
        "train.max_steps": 10,
        "train.micro_batch_size": 2,
        "train.grad_accum": 2,
        "adapter.dropout": 0.1,
        "train.save_every": 4,
    }
    model_dir = tiny_model_dir(arch)
    full = ListSink()
    train_run(make_cfg(model_dir, data, **over), tmp_path / "full", sinks=[full])

    first, second = ListSink(), ListSink()
    result = train_run(
        make_cfg(model_dir, data, **over), tmp_path / "cut", sinks=[first], hooks=interrupt_at(step, micro)
    )
    assert result.status == "interrupted" and result.exit_code == 130
    assert [e.step for e in first.of(StepMetrics)][-1] == step + 1  # the step in progress finished
    result = train_run(make_cfg(model_dir, data, **over), tmp_path / "cut", resume=True, sinks=[second])
    assert result.status == "finished"
    combined = losses(first) + losses(second)
    assert len(combined) == 10
    assert combined == pytest.approx(losses(full), abs=1e-5)


def test_resume_refuses_changed_data_and_shape_but_accepts_benign_changes(tmp_path, data, tiny_model_dir):
    model_dir = tiny_model_dir("qwen2")
    run = tmp_path / "run"
    train_run(make_cfg(model_dir, data, **{"train.max_steps": 6, "train.save_every": 2}), run, hooks=interrupt_at(3, 0))
    changed = write_jsonl(tmp_path / "other.jsonl", FACTS[:-1] + [chat("new", "row")])
    with pytest.raises(LocaltuneError, match="different training data"):
        train_run(make_cfg(model_dir, changed, **{"train.max_steps": 6}), run, resume=True)
    with pytest.raises(LocaltuneError, match=r"different training data, data.max_seq_len, LoRA shape"):
        train_run(
            make_cfg(model_dir, data, **{"train.max_steps": 6, "data.max_seq_len": 64, "adapter.r": 4}),
            run,
            resume=True,
        )
    sink = ListSink()
    result = train_run(
        make_cfg(model_dir, data, **{"train.max_steps": 6, "train.lr": 1e-3}), run, resume=True, sinks=[sink]
    )
    assert result.status == "finished" and [e.step for e in sink.of(StepMetrics)] == [5, 6]
    with pytest.raises(LocaltuneError, match="already holds a training run"):
        train_run(make_cfg(model_dir, data), run)


def test_force_resume_continues_with_a_warning(tmp_path, data, tiny_model_dir):
    model_dir = tiny_model_dir("qwen2")
    run = tmp_path / "run"
    train_run(make_cfg(model_dir, data, **{"train.max_steps": 4, "train.save_every": 1}), run, hooks=interrupt_at(1, 0))
    changed = write_jsonl(tmp_path / "other.jsonl", FACTS[:5])
    sink = ListSink()
    result = train_run(
        make_cfg(model_dir, changed, **{"train.max_steps": 4}), run, resume=True, force_resume=True, sinks=[sink]
    )
    assert result.status == "finished"
    assert any("--force-resume" in w.message for w in sink.of(WarningEvent))


def test_nan_loss_stops_after_three_with_the_documented_error(tmp_path, data, tiny_model_dir):
    import torch

    def poison(step, micro, loss):
        return loss * float("nan") if step >= 3 else loss

    run = tmp_path / "run"
    sink = ListSink()
    with pytest.raises(TrainingError) as info:
        train_run(
            make_cfg(tiny_model_dir("qwen2"), data, **{"train.save_every": 1, "train.max_steps": 20}),
            run,
            sinks=[sink],
            hooks=Hooks(loss=poison),
        )
    msg = info.value.render()
    assert "3 steps in a row had a non-finite loss" in msg and "step 6" in msg
    assert "learning rate" in msg and "compute dtype float32" in msg and "facts.jsonl:" in msg
    assert len(sink.of(WarningEvent)) >= 3 and "nan" in read_events(run / "events.jsonl")[-2].message
    saved = [e.step for e in sink.of(CheckpointSaved)]
    assert saved and max(saved) <= 3
    from safetensors.torch import load_file

    for ckpt in (run / "checkpoints").iterdir():
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "adapter_model.safetensors").values())
    info = json.loads((run / "run.json").read_text(), parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert info["status"] == "failed" and info["losses"][3] == "nan"


def test_simulated_oom_halves_the_micro_batch_and_continues(tmp_path, data, tiny_model_dir):
    import torch

    fired = []

    def oom(step, micro_batch):
        if step == 3 and micro_batch > 1 and not fired:
            fired.append(micro_batch)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    # No dropout: its random masks depend on the micro-batch shape, and this compares against a run
    # that kept micro-batch 4.
    over = {"train.max_steps": 6, "adapter.dropout": 0.0}
    full = ListSink()
    train_run(make_cfg(tiny_model_dir("qwen2"), data, **over), tmp_path / "full", sinks=[full])
    sink = ListSink()
    result = train_run(
        make_cfg(tiny_model_dir("qwen2"), data, **over, **{"train.save_every": 2}),
        tmp_path / "run",
        sinks=[sink],
        hooks=Hooks(before_micro=oom),
    )
    assert result.status == "finished" and fired == [4]
    (warning,) = [w.message for w in sink.of(WarningEvent) if "out of GPU memory" in w.message]
    assert "micro-batch 4" in warning and "Retrying with micro-batch 2 and 2 accumulation steps" in warning
    assert "step-000002" in warning and "shorter --max-seq-len" in warning
    steps = [e.step for e in sink.of(StepMetrics)]
    assert steps == [1, 2, 3, 3, 4, 5, 6]  # step 4 ran out of memory; training went back to step 2's checkpoint
    got = losses(sink)
    assert got[3] == pytest.approx(got[2], abs=1e-5)  # step 3 again, now in two smaller micro-batches
    assert got[:3] + got[4:] == pytest.approx(losses(full), abs=1e-4)  # same gradients, smaller pieces


def test_oom_with_a_fixed_micro_batch_explains_and_stops(tmp_path, data, tiny_model_dir):
    import torch

    def oom(step, micro_batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(TrainingError, match="out of GPU memory at step 1: micro-batch 2"):
        train_run(
            make_cfg(tiny_model_dir("qwen2"), data, **{"train.micro_batch_size": 2}),
            tmp_path / "run",
            hooks=Hooks(before_micro=oom),
        )


def test_early_stopping_on_eval_loss(tmp_path, tiny_model_dir):
    rows = [chat(f"q{i}", f"answer {i} " * 5) for i in range(30)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    sink = ListSink()
    result = train_run(
        make_cfg(
            tiny_model_dir("qwen2"),
            data,
            **{
                "train.max_steps": 60,
                "train.lr": 0.5,
                "data.val_fraction": 0.2,
                "train.eval_every": 2,
                "train.early_stopping_patience": 2,
                "train.optimizer": "adamw",
            },
        ),
        tmp_path / "run",
        sinks=[sink],
    )
    evals = [e.loss for e in sink.of(EvalResult)]
    assert result.status == "stopped_early" and len(sink.of(StepMetrics)) < 60
    best = min(evals[:-2])
    assert evals[-1] >= best and evals[-2] >= best
    assert sink.of(Finished)[0].stopped_early


def test_damaged_newest_checkpoint_falls_back_and_rotation(tmp_path, data, tiny_model_dir):
    run = tmp_path / "run"
    train_run(
        make_cfg(
            tiny_model_dir("qwen2"), data, **{"train.max_steps": 8, "train.save_every": 2, "train.keep_checkpoints": 2}
        ),
        run,
        hooks=interrupt_at(6, 0),
    )
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-000006", "step-000007"]  # rotation kept the newest 2
    with open(run / "checkpoints" / "step-000007" / "optimizer.pt", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")  # torn write, same size: only the hash can tell
    sink = ListSink()
    result = train_run(
        make_cfg(tiny_model_dir("qwen2"), data, **{"train.max_steps": 8}), run, resume=True, sinks=[sink]
    )
    warnings = [w.message for w in sink.of(WarningEvent)]
    assert any("step-000007 is damaged (optimizer.pt does not match its hash" in w for w in warnings)
    assert any("resumed from" in w and "step-000006" in w for w in warnings)
    assert result.status == "finished" and [e.step for e in sink.of(StepMetrics)] == [7, 8]


def test_rotation_never_deletes_the_resume_source(tmp_path):
    from localtune.train.checkpoint import Snapshot

    store = CheckpointStore(tmp_path / "ck", keep=1, warn=lambda m: None)
    for step in (1, 2):
        store.save(Snapshot(step, {}, {}, {}, {}, {"step": step}, {}), lambda f: (f / "a.bin").write_bytes(b"x"))
    assert [p.name for p in store.complete()] == ["step-000002"]
    store.protected.add("step-000002")
    store.save(Snapshot(3, {}, {}, {}, {}, {"step": 3}, {}), lambda f: (f / "a.bin").write_bytes(b"y"))
    assert [p.name for p in store.complete()] == ["step-000002", "step-000003"]
    (tmp_path / "ck" / ".tmp-step-000004-1").mkdir()
    (tmp_path / "ck" / "step-000005").mkdir()  # no manifest: incomplete
    seen = []
    store.warn = seen.append
    store.remove_stale()
    assert len(seen) == 2 and [p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")] == []


def test_unsupported_architecture_is_named(tmp_path):
    from localtune.model.loading import resolve_base

    for model_type, words in (
        ("gpt2", "transformers can load it, but localtune's GGUF converters do not export"),
        ("warpdrive", "this version of transformers cannot load it"),
    ):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(ModelSourceError, match=words) as info:
            resolve_base(str(folder))
        assert f"'{model_type}' model" in info.value.render() and "qwen2" in info.value.render()


def test_unwritable_output_and_missing_model(tmp_path, data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        locked = data / "sub"
    with pytest.raises(LocaltuneError, match="cannot write to the output folder"):
        train_run(make_cfg(tmp_path / "m", data), locked / "run")
    with pytest.raises(ModelSourceError, match="not a file or folder here"):
        train_run(make_cfg(tmp_path / "missing-model", data), tmp_path / "run")


def test_bad_data_fails_before_the_model_loads(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "assistant", "content": "x"}]}\n')
    sink = ListSink()
    with pytest.raises(LocaltuneError, match="bad.jsonl:1"):
        train_run(make_cfg(tiny_model_dir("qwen2"), bad), tmp_path / "run", sinks=[sink])
    assert [e.kind for e in sink.events] == ["run_started", "failed"]


def test_too_little_disk_is_refused(tmp_path, data, tiny_model_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(LocaltuneError, match="has 0.00 GB free"):
        train_run(make_cfg(tiny_model_dir("qwen2"), data), tmp_path / "run")


def test_step_events_carry_the_figures(tmp_path, data, tiny_model_dir):
    sink = ListSink()
    train_run(make_cfg(tiny_model_dir("qwen2"), data, **{"train.max_steps": 3}), tmp_path / "run", sinks=[sink])
    steps = sink.of(StepMetrics)
    assert [s.step for s in steps] == [1, 2, 3] and all(s.total_steps == 3 for s in steps)
    assert all(s.tokens_per_s > 0 and s.peak_memory_bytes > 0 and math.isfinite(s.grad_norm) for s in steps)
    assert steps[-1].eta_s == 0 and steps[0].tokens_seen < steps[-1].tokens_seen
    assert steps[0].lr == pytest.approx(5e-3) and steps[0].lr > steps[1].lr > steps[2].lr  # cosine decay


@pytest.mark.slow
def test_smollm2_qlora_on_cpu_learns(tmp_path, data, monkeypatch):
    """The real model: SmolLM2-135M-Instruct, imported from its GGUF, trained in 4-bit on the CPU."""
    monkeypatch.setenv("LOCALTUNE_CACHE", str(tmp_path / "cache"))
    sink = ListSink()
    result = train_run(
        make_cfg("smollm2", data, **{"train.max_steps": 6, "train.lr": 1e-3}), tmp_path / "run", sinks=[sink]
    )
    got = losses(sink)
    assert result.status == "finished" and got[-1] < got[0] / 2, got
    loaded = [e for e in sink.events if e.kind == "model_loaded"][0]
    assert loaded.quantized and loaded.architecture == "llama"
    imported = next((tmp_path / "cache" / "gguf-imports").iterdir())
    assert (imported / "config.json").is_file() and (imported / "model.safetensors").is_file()
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_dora_and_rslora_options_reach_peft(tmp_path, data, tiny_model_dir):
    run = tmp_path / "run"
    result = train_run(
        make_cfg(
            tiny_model_dir("qwen2"),
            data,
            **{
                "train.max_steps": 2,
                "train.load_in_4bit": False,
                "adapter.method": "dora",
                "adapter.use_rslora": True,
                "adapter.target_modules": "q_proj,v_proj",
                "adapter.r": 4,
            },
        ),
        run,
    )
    assert result.status == "finished"
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["use_dora"] and saved["use_rslora"] and saved["r"] == 4
    assert sorted(saved["target_modules"]) == ["q_proj", "v_proj"]


@pytest.mark.parametrize("quant", [True, False], ids=["qlora-4bit", "lora-fp32"])
@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])
def test_moe_trains_attention_and_experts_keeps_them_16_bit_and_resumes(arch, quant, tmp_path, data, tiny_model_dir):
    from safetensors import safe_open

    sink = ListSink()
    cfg = make_cfg(tiny_model_dir(arch), data, **{"train.load_in_4bit": quant, "train.save_every": 10})
    result = train_run(cfg, tmp_path / "run", sinks=[sink])
    got = losses(sink)
    assert result.status == "finished" and len(got) == 30
    assert got[-1] < got[0] / 2, got
    notes = [w.message for w in sink.of(WarningEvent)]
    assert any("experts and routers" in n and "stay float32" in n for n in notes) is quant, notes
    with safe_open(tmp_path / "run" / "adapter" / "adapter_model.safetensors", "pt") as st:
        keys = list(st.keys())
    assert any(".mlp.experts.lora_A" in k for k in keys) and any("self_attn.q_proj.lora_A" in k for k in keys)
    assert not any(".mlp.gate." in k or ".mlp.router." in k for k in keys)  # routers are never adapted
    resumed = ListSink()
    cfg = make_cfg(tiny_model_dir(arch), data, **{"train.load_in_4bit": quant, "train.max_steps": 32})
    assert train_run(cfg, tmp_path / "run", resume=True, sinks=[resumed]).status == "finished"
    steps = [e.step for e in resumed.of(StepMetrics)]
    assert 1 < steps[0] <= 31 and steps == list(range(steps[0], 33))  # from its last checkpoint to the new end


@pytest.mark.parametrize("arch", ["qwen3_moe", "gpt_oss"])
def test_qlora_quantizes_the_attention_but_never_the_router_or_the_experts(arch, tiny_model_dir):
    import bitsandbytes as bnb
    import torch

    from localtune.model.loading import load_for_training, resolve_base

    folder = tiny_model_dir(arch)
    cfg = load_config(None, {"model.name_or_path": (str(folder), "test"), "train.load_in_4bit": (True, "test")})
    loaded = load_for_training(cfg, resolve_base(str(folder)))
    modules = dict(loaded.model.named_modules())
    routers = [m for n, m in modules.items() if n.endswith((".mlp.gate", ".mlp.router"))]
    assert routers and not any(isinstance(m, bnb.nn.Linear4bit) for m in routers)
    assert any(
        isinstance(m, bnb.nn.Linear4bit) for n, m in modules.items() if n.endswith("self_attn.q_proj.base_layer")
    )
    experts = [p for n, p in loaded.model.named_parameters() if p.ndim == 3 and ".experts." in n and "lora" not in n]
    assert experts and all(p.dtype == torch.float32 for p in experts)  # the compute dtype on the CPU, not 4-bit
    assert any("experts and routers" in note for note in loaded.notes)
