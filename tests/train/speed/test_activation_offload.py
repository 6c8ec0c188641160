"""Activation offload: checkpoints in CPU memory give the same gradients, and the planner turns it on only when
the run does not fit without it (CUDA only; on the CPU the activations are in CPU memory already)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from localtune.config import load_config
from localtune.planner import GIB, Shape, estimate, recommend
from localtune.train.speed import offload as activation_offload

LLAMA_8B = Shape(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, head_dim=128, vocab=128256, tied=False)


def loss_and_grads(model, ids):
    torch.manual_seed(5)  # dropout draws
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_offloaded_checkpoints_give_the_same_loss_and_gradients(lora_llama, monkeypatch):
    ids = torch.randint(5, 500, (2, 48), generator=torch.Generator().manual_seed(0))
    expected_loss, expected = loss_and_grads(lora_llama(0.2), ids)

    model = lora_llama(0.2)
    assert activation_offload.install(model) == model.config.num_hidden_layers
    calls = {"forward": 0, "recompute": 0}
    real_forward, real_backward = (
        activation_offload._OffloadedLayer.forward,
        activation_offload._OffloadedLayer.backward,
    )

    def counting_forward(ctx, run, hidden, *args):
        calls["forward"] += 1
        out = real_forward(ctx, run, hidden, *args)
        assert ctx.saved_hidden.device.type == "cpu" and ctx.saved_hidden.shape == hidden.shape
        return out

    def counting_backward(ctx, *grads):
        calls["recompute"] += 1
        return real_backward(ctx, *grads)

    monkeypatch.setattr(activation_offload._OffloadedLayer, "forward", staticmethod(counting_forward))
    monkeypatch.setattr(activation_offload._OffloadedLayer, "backward", staticmethod(counting_backward))
    loss, grads = loss_and_grads(model, ids)
    layers = model.config.num_hidden_layers
    assert calls == {"forward": layers, "recompute": layers}  # every layer went through the CPU copy
    torch.testing.assert_close(loss, expected_loss)
    assert grads.keys() == expected.keys()
    for name, grad in expected.items():  # LoRA weights of every layer, dropout replayed in the recompute
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[name], grad, msg=name)
    with torch.no_grad():  # without gradients the layers run plainly, nothing is copied
        before = calls["forward"]
        model(input_ids=ids)
        assert calls["forward"] == before


def test_the_planner_counts_two_layer_inputs_instead_of_all():
    kw = dict(micro_batch=1, seq_len=32768, rank=16)
    kept, offloaded = estimate(LLAMA_8B, **kw), estimate(LLAMA_8B, **kw, offload=True)
    assert offloaded.offload and not kept.offload
    per_layer_input = 32768 * 4096 * 2
    assert kept.parts["activations"] - offloaded.parts["activations"] == (32 - 2) * per_layer_input
    assert not estimate(LLAMA_8B, **kw, checkpointing=False, offload=True).offload  # nothing to offload


def test_auto_offloads_only_when_no_micro_batch_fits_without_it():
    seq = 32768
    without = estimate(LLAMA_8B, micro_batch=1, seq_len=seq, rank=16).total
    with_offload = estimate(LLAMA_8B, micro_batch=1, seq_len=seq, rank=16, offload=True).total
    between = (without + with_offload) // 2
    rec = recommend(LLAMA_8B, between, seq_len=seq, rank=16, max_micro_batch=4, offload="auto")
    assert rec.fits and rec.plan.offload and rec.plan.seq_len == seq and rec.plan.micro_batch == 1
    # "off" shortens the sequence instead
    rec = recommend(LLAMA_8B, between, seq_len=seq, rank=16, max_micro_batch=4, offload="off")
    assert not rec.plan.offload and rec.plan.seq_len < seq
    # with room to spare, auto does not offload
    rec = recommend(LLAMA_8B, 80 * GIB, seq_len=seq, rank=16, max_micro_batch=1, offload="auto")
    assert rec.fits and not rec.plan.offload


def planned(monkeypatch, *, device: str, free: int, offload: str, micro: int = 1, longest: int = 32768):
    from localtune.train import run as training_run

    cfg = load_config(
        None,
        {
            "train.activation_offload": (offload, "test"),
            "train.micro_batch_size": (micro, "test"),
            "train.grad_accum": (4, "test"),
        },
    )
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, 80 * GIB))
    monkeypatch.setattr(training_run, "memory_in_use", lambda model, device: 6 * GIB)
    lm = SimpleNamespace(device=device, model=None)
    return training_run.plan_memory(cfg, LLAMA_8B, lm, longest)


def test_a_training_run_offloads_on_cuda_when_the_plan_does_not_fit_otherwise(monkeypatch):
    tight = planned(monkeypatch, device="cuda", free=14 * GIB, offload="auto")
    assert tight.activation_offload and "exceeds the free GPU memory" in tight.reason
    assert tight.estimate_bytes <= tight.budget_bytes
    roomy = planned(monkeypatch, device="cuda", free=70 * GIB, offload="auto")
    assert not roomy.activation_offload
    assert not planned(monkeypatch, device="cuda", free=14 * GIB, offload="off").activation_offload
    forced = planned(monkeypatch, device="cuda", free=70 * GIB, offload="on")
    assert forced.activation_offload and "activation_offload on" in forced.reason
    # auto micro-batch: the largest that fits, offloading only when not even micro-batch 1 fits without it
    auto = planned(monkeypatch, device="cuda", free=14 * GIB, offload="auto", micro=0)
    assert auto.micro_batch == 1 and auto.grad_accum == 4 and auto.activation_offload
    auto = planned(monkeypatch, device="cuda", free=70 * GIB, offload="auto", micro=0, longest=2048)
    assert auto.micro_batch == 4 and auto.grad_accum == 1 and not auto.activation_offload


def test_on_the_cpu_nothing_is_offloaded(monkeypatch):
    assert not planned(monkeypatch, device="cpu", free=0, offload="on").activation_offload
    assert not planned(monkeypatch, device="cpu", free=0, offload="auto").activation_offload


def test_offload_on_without_checkpointing_is_a_config_error():
    from localtune.errors import ConfigError

    with pytest.raises(ConfigError, match="activation_offload"):
        load_config(
            None, {"train.activation_offload": ("on", "--set"), "train.gradient_checkpointing": (False, "--set")}
        )
