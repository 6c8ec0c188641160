"""Training techniques on tiny models on the CPU: layer-wise LR scaling, LoRA+, layer drop and freeze tuning.

Learning rates are read from the live optimizer after its steps (a global step hook) and compared with the
rule written out here; resumes are compared with the uninterrupted run's losses; freeze tuning's merged
folder with an fp32 base carrying the trained tensors, and with the original checkpoint's bytes."""

from __future__ import annotations

import math
import os
import re
import signal

import pytest
from helpers import chat, write_jsonl

from localtune.config import load_config
from localtune.errors import UsageError
from localtune.events import ListSink, StepMetrics
from localtune.train.loop import Hooks
from localtune.train.run import train_run

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(8)]
STEPS = 12


def config(model_dir, data, **over):
    values = {
        "model.name_or_path": str(model_dir),
        "data.path": str(data),
        "adapter.r": 4,
        "train.max_steps": STEPS,
        "train.lr": 1e-2,
        "train.micro_batch_size": 2,
        "train.grad_accum": 2,
        "data.val_fraction": 0,
        "train.save_every": 4,
        "train.seed": 7,
        **over,
    }
    return load_config(None, {k: (v, "test") for k, v in values.items()})


def stop_before_step(step: int, trained=None) -> Hooks:
    sent = []

    def before_micro(s, _mb):
        if s == step and not sent:
            sent.append(s)
            os.kill(os.getpid(), signal.SIGINT)

    return Hooks(before_micro=before_micro, trained=trained)


def losses(sink: ListSink) -> list[float]:
    return [e.loss for e in sink.of(StepMetrics)]


def assert_resumes_exactly(cfg_fn, tmp_path, expected: list[float]) -> None:
    first, second = ListSink(), ListSink()
    assert train_run(cfg_fn(), tmp_path / "cut", sinks=[first], hooks=stop_before_step(6)).status == "interrupted"
    assert train_run(cfg_fn(), tmp_path / "cut", resume=True, sinks=[second]).status == "finished"
    assert len(losses(first)) == 7  # the step the signal arrived in finishes first
    assert losses(first) + losses(second) == pytest.approx(expected, abs=1e-5)


class LrRecorder:
    """The lr of every parameter in the optimizer's groups, after each optimizer step."""

    def __init__(self):
        self.by_param: dict[int, float] = {}
        self.steps = 0

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _hook(self, optimizer, args, kwargs):
        self.steps += 1
        self.by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


def layer_index(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def trained_model(store: dict):
    return Hooks(trained=lambda model: store.setdefault("model", model))


# ---- layer-wise LR scaling and LoRA+ -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dora", "ln_tuning"])
def test_groups_lrs_follow_layer_decay_and_lora_plus(name, tiny_model_dir, tmp_path):
    """lr * gamma^(L-1-i) for layer i of L, x ratio for DoRA's B matrices and magnitudes; everything outside
    the decoder layers (ln_tuning: the final norm) at the full lr; a constant schedule so lr is the base one."""
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    gamma, ratio, lr = 0.5, 4.0, 1e-2
    over = {
        "adapter.method": name,
        "train.layer_lr_decay": gamma,
        "train.lr_scheduler": "constant",
        "train.warmup_ratio": 0.0,
        "train.max_steps": 2,
        "train.lr": lr,
    }
    if name == "dora":
        over["adapter.lora_plus_ratio"] = ratio
    store = {}
    with LrRecorder() as rec:
        run = train_run(config(tiny_model_dir("llama"), data, **over), tmp_path / "run", hooks=trained_model(store))
    assert run.status == "finished" and rec.steps == 2
    model = store["model"]
    n_layers = model.config.num_hidden_layers
    seen_layers, seen_b, seen_outside = set(), 0, 0
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_index(pname)
        want = lr * (gamma ** (n_layers - 1 - layer) if layer is not None else 1.0)
        if "lora_B" in pname or "lora_magnitude_vector" in pname:
            want *= ratio
            seen_b += 1
        seen_layers.add(layer)
        seen_outside += layer is None
        assert rec.by_param[id(p)] == pytest.approx(want, rel=1e-12), pname
    assert seen_layers >= set(range(n_layers))
    assert seen_b > 0 if name == "dora" else seen_outside > 0


def test_layer_decay_moves_lower_layers_less_and_resumes_exactly(tiny_model_dir, tmp_path):
    """LoRA's B starts at zero, so |B| after training is how far each layer's adapter moved."""
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    model = tiny_model_dir("llama")

    def moved(run_dir) -> dict[int, float]:
        out: dict[int, float] = {}
        for k, t in load_file(run_dir / "adapter" / "adapter_model.safetensors").items():
            if "lora_B" in k:
                out[layer_index(k)] = out.get(layer_index(k), 0.0) + float(t.norm())
        return out

    plain, decayed = ListSink(), ListSink()
    assert train_run(config(model, data), tmp_path / "plain", sinks=[plain]).status == "finished"
    cfg = lambda: config(model, data, **{"train.layer_lr_decay": 0.1, "adapter.lora_plus_ratio": 4.0})  # noqa: E731
    assert train_run(cfg(), tmp_path / "decayed", sinks=[decayed]).status == "finished"
    a, b = moved(tmp_path / "plain"), moved(tmp_path / "decayed")
    print("lora_B norms, plain:", a, "decay 0.1 + LoRA+ 4:", b)
    top = max(a)
    assert b[0] / b[top] < 0.3 * (a[0] / a[top])  # the bottom layer moved far less relative to the top
    assert b[0] < 0.5 * a[0]
    assert losses(decayed)[-1] < 0.85 * losses(decayed)[0]
    assert_resumes_exactly(cfg, tmp_path, losses(decayed))
    with pytest.raises(UsageError, match="learning-rate groups"):  # other groups: its optimizer state cannot fit
        train_run(config(model, data), tmp_path / "cut", resume=True)


# ---- layer drop ----------------------------------------------------------------------------------------------


def test_layer_drop_skips_upper_layers_in_training_only_and_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    from transformers.models.llama import modeling_llama

    data = write_jsonl(tmp_path / "facts.jsonl", FACTS + FACTS[:2])
    model = tiny_model_dir("llama")
    calls = {"train": {}, "eval": {}}
    # counted inside the layer (its attention): patching the layer's own forward would turn off transformers'
    # checkpointing wrapper, which only checkpoints when it is the class's outermost forward
    original = modeling_llama.LlamaAttention.forward

    def counting(self, *args, **kwargs):
        mode, key = "train" if self.training else "eval", self.layer_idx
        calls[mode][key] = calls[mode].get(key, 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", counting)
    over = {
        "train.layer_drop": 0.6,
        "train.gradient_checkpointing": True,
        "data.val_fraction": 0.2,
        "train.eval_every": 4,
    }
    store, sink = {}, ListSink()
    cfg = lambda: config(model, data, **over)  # noqa: E731
    assert train_run(cfg(), tmp_path / "full", sinks=[sink], hooks=trained_model(store)).status == "finished"
    drop = store["model"].get_base_model().get_decoder().localtune_layer_drop
    micro_batches = STEPS * 2
    assert drop.draws == micro_batches  # one draw per training micro-batch, none in evaluation
    assert drop.skipped[0] == 0 and drop.skipped[1] > 0, drop.skipped
    print("layer calls", calls, "skipped", drop.skipped, "of", drop.draws)
    # with checkpointing a layer that runs is called twice per micro-batch (forward, then recomputed)
    assert calls["train"][0] == 2 * micro_batches
    assert calls["train"][1] == 2 * (micro_batches - drop.skipped[1])
    assert calls["eval"][0] == calls["eval"][1] > 0  # every layer in evaluation
    got = losses(sink)
    assert got[-1] < 0.85 * got[0], got
    assert_resumes_exactly(cfg, tmp_path, got)


# ---- freeze tuning -------------------------------------------------------------------------------------------


def freeze_config(model_dir, data, modules, lr, **over):
    return config(
        model_dir,
        data,
        **{
            "adapter.method": "freeze",
            "adapter.freeze_modules": modules,
            "train.load_in_4bit": True,
            "train.lr": lr,
            **over,
        },
    )


def test_freeze_last_layer_trains_unquantized_resumes_and_merges_from_the_original(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from localtune.export.merge import merge_run
    from localtune.runs.layout import RunDir

    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    model_dir = tiny_model_dir("llama")
    cfg = lambda: freeze_config(model_dir, data, ["last:1"], 3e-3)  # noqa: E731
    store, sink = {}, ListSink()
    assert train_run(cfg(), tmp_path / "full", sinks=[sink], hooks=trained_model(store)).status == "finished"
    got = losses(sink)
    assert got[-1] < 0.85 * got[0], got
    m = store["model"]
    assert not hasattr(m, "peft_config")
    top, bottom = m.model.layers[-1], m.model.layers[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        kept, packed = getattr(top.self_attn, name), getattr(bottom.self_attn, name)
        assert type(kept) is torch.nn.Linear and kept.weight.dtype == torch.float32 and kept.weight.requires_grad
        assert isinstance(packed, bnb.nn.Linear4bit) and not packed.weight.requires_grad
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert type(getattr(top.mlp, name)) is torch.nn.Linear
        assert isinstance(getattr(bottom.mlp, name), bnb.nn.Linear4bit)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(f"model.layers.{len(m.model.layers) - 1}.") for n in trainable)

    run = tmp_path / "full"
    assert RunDir(run).has_adapter and not (run / "adapter" / "adapter_model.safetensors").exists()
    trained = load_file(run / "adapter" / "trainable.safetensors")
    assert set(trained) == trainable
    assert sum(f.stat().st_size for f in (run / "adapter").iterdir()) < 1.2 * sum(
        t.numel() * 4 for t in trained.values()
    )

    assert_resumes_exactly(cfg, tmp_path, got)

    result = merge_run(run)
    ids = torch.tensor([[1, 5, 9, 77, 300, 42, 8, 120]])
    with torch.no_grad():
        reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        plain = reference(input_ids=ids).logits
        missing, unexpected = reference.load_state_dict(trained, strict=False)
        assert not unexpected
        want = reference(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
        have = merged(input_ids=ids).logits
    delta = float((have - want).abs().max())
    print("merge check", result.max_delta, "merged vs fp32 base + trained", delta, "change", (want - plain).abs().max())
    assert delta < 1e-5 and float((want - plain).abs().max()) > 1e-3

    def tensors(folder):
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                out.update({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118
        return out

    original, saved = tensors(model_dir), tensors(run / "merged")
    assert set(saved) == set(original)
    same = [k for k in original if k not in trained]
    assert any(".layers.0.self_attn.q_proj" in k for k in same)  # 4-bit in training, bit-identical here
    for k in same:
        assert saved[k].dtype == original[k].dtype and torch.equal(saved[k], original[k]), k
    for k, t in trained.items():
        assert torch.equal(saved[k], t.to(saved[k].dtype)) and not torch.equal(saved[k], original[k]), k


def test_freeze_norms_learn_on_a_4_bit_base(tiny_model_dir, tmp_path):
    import bitsandbytes as bnb
    import torch

    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    store, sink = {}, ListSink()
    cfg = freeze_config(tiny_model_dir("llama"), data, ["norm"], 5e-2)
    assert train_run(cfg, tmp_path / "run", sinks=[sink], hooks=trained_model(store)).status == "finished"
    got = losses(sink)
    assert got[-1] < 0.9 * got[0], got
    m = store["model"]
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("norm" in n for n in trainable)
    linears = [mod for n, mod in m.named_modules() if n.startswith("model.layers.") and n.endswith("_proj")]
    assert linears and all(isinstance(mod, bnb.nn.Linear4bit) for mod in linears)
    assert type(m.lm_head) is torch.nn.Linear


def test_planner_counts_freeze_targets(tiny_model_dir):
    import torch
    from transformers import AutoConfig

    from localtune.model.freeze import chosen_parameters, meta_model
    from localtune.planner import Shape

    folder = tiny_model_dir("llama")
    shape, layout = Shape.from_config(AutoConfig.from_pretrained(folder)), meta_model(folder)
    params = dict(layout.named_parameters())
    for spec in (["last:1"], ["norm"], ["mlp"], ["last:1", "norm"]):
        real = sum(params[n].numel() for n in chosen_parameters(layout, spec))
        assert shape.adapter_params("freeze", 0, freeze_modules=spec) == real, spec
    assert isinstance(params["model.norm.weight"], torch.nn.Parameter)


def test_freeze_keeps_fp32_master_weights_under_a_bf16_compute_dtype(tiny_model_dir, tmp_path):
    """On a GPU the base computes in bf16: a trained weight stored in bf16 would lose Adam's ~lr-sized updates
    (bf16 has 8 bits of mantissa). The trained parameters stay fp32 and their modules run in fp32."""
    import torch

    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    store, sink = {}, ListSink()
    cfg = freeze_config(tiny_model_dir("llama"), data, ["last:1"], 2e-5, **{"train.precision": "bf16"})
    assert train_run(cfg, tmp_path / "run", sinks=[sink], hooks=trained_model(store)).status == "finished"
    assert all(math.isfinite(x) for x in losses(sink))
    m = store["model"]
    trained = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert m.model.layers[0].self_attn.o_proj.weight.dtype != torch.float32  # the rest computes in bf16 / 4-bit
    from safetensors.torch import load_file

    original = load_file(str(next(tiny_model_dir("llama").glob("*.safetensors"))))
    moved = [n for n, p in trained.items() if not torch.equal(p.detach().cpu(), original[n].float())]
    # at lr 2e-5 a bf16 copy of a ~1.0 norm weight could not move at all (its spacing there is 2^-7)
    assert any("norm" in n for n in moved) and len(moved) == len(trained), sorted(set(trained) - set(moved))
