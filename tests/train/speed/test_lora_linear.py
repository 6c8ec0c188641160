"""The fused LoRA linear layer computes exactly what peft computes, keeps less for the backward, and steps aside
whenever peft's own forward is needed."""

from __future__ import annotations

import pytest
import torch

from localtune.train.speed import lora_linear
from localtune.train.speed.lora_dropout import replace_lora_dropout


def loss_and_grads(model, ids):
    """(loss, {name: grad}) with the dropout draws seeded alike; trainable weights and the input embeddings."""
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    loss = model(inputs_embeds=embeds, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    grads["inputs_embeds"] = embeds.grad
    return loss.detach(), grads


def fused_calls(monkeypatch) -> list:
    """Count the calls that take the fused path."""
    calls = []
    apply = lora_linear._LoraLinear.apply

    def counted(*args):
        calls.append(args[4])
        return apply(*args)

    monkeypatch.setattr(lora_linear._LoraLinear, "apply", counted)
    return calls


@pytest.mark.parametrize(
    "arch,quantized,extra",
    [
        ("llama", False, {}),
        ("qwen2", True, {"bias": "all"}),  # 4-bit base whose q/k/v biases train as well
        ("phi3", False, {}),  # fused qkv and gate_up projections
    ],
)
def test_same_loss_and_gradients_as_peft(lora_llama, monkeypatch, arch, quantized, extra):
    ids = torch.randint(5, 250, (2, 33), generator=torch.Generator().manual_seed(0))
    results = []
    for fused in (False, True):
        model = lora_llama(0.3, True, arch=arch, quantized=quantized, **extra)
        replace_lora_dropout(model)  # the same draws in both paths: the fused one calls the same sampler
        if fused:
            calls = fused_calls(monkeypatch)
            layers = lora_linear.install(model)
            assert layers == sum(1 for m in model.modules() if hasattr(m, "lora_A")) > 0
        results.append(loss_and_grads(model, ids))
    # every layer ran fused, in the forward and again in the checkpointed recompute
    assert len(calls) == 2 * layers
    (loss_peft, peft), (loss_fused, fused) = results
    torch.testing.assert_close(loss_fused, loss_peft)
    assert peft.keys() == fused.keys()
    if extra.get("bias") == "all":
        assert any(".bias" in name for name in fused)
    for name, grad in peft.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(fused[name], grad, msg=name)


def test_dropout_without_checkpointing_and_p_zero(lora_llama):
    """No recompute to lean on, and p = 0 (nothing drawn): still peft's numbers."""
    ids = torch.randint(5, 250, (1, 20), generator=torch.Generator().manual_seed(1))
    for p in (0.0, 0.5):
        results = []
        for fused in (False, True):
            model = lora_llama(p, False)
            replace_lora_dropout(model)
            if fused:
                lora_linear.install(model)
            results.append(loss_and_grads(model, ids))
        torch.testing.assert_close(results[1][0], results[0][0])
        for name, grad in results[0][1].items():
            torch.testing.assert_close(results[1][1][name], grad, msg=name)


def saved_bytes(model, ids) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of one forward (no checkpointing)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(7)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)  # the forward with labels saves what the loss backward needs
    return sum(storages.values())


def test_keeps_less_for_the_backward_than_peft(lora_llama):
    """peft keeps every LoRA layer's own dropped copy of its input; the fused layer keeps the input and the
    positions it dropped."""
    ids = torch.randint(5, 250, (2, 64), generator=torch.Generator().manual_seed(2))
    kept = {}
    for fused in (False, True):
        model = lora_llama(0.1, False)
        replace_lora_dropout(model)
        if fused:
            lora_linear.install(model)
        kept[fused] = saved_bytes(model, ids)
    hidden = model.config.hidden_size * ids.numel() * 4  # one fp32 copy of a layer input
    assert kept[True] < kept[False] - 4 * model.config.num_hidden_layers * hidden, kept


def test_peft_forward_when_the_fused_path_does_not_apply(lora_llama, monkeypatch):
    ids = torch.randint(5, 250, (1, 12), generator=torch.Generator().manual_seed(3))
    model = lora_llama(0.2, False)
    layers = lora_linear.install(model)
    calls = fused_calls(monkeypatch)
    assert lora_linear.install(model) == 0  # installing twice wraps nothing twice

    model.eval()  # evaluation: no dropout, no backward; peft's forward
    with torch.no_grad():
        model(input_ids=ids)
    assert calls == []
    model.train()
    with model.disable_adapter(), torch.no_grad():  # the base model alone
        base_out = model(input_ids=ids).logits
    assert calls == []
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast chooses dtypes per operation: peft's modules
        model(input_ids=ids)
    assert calls == []
    model(input_ids=ids)
    assert len(calls) == layers

    dora = lora_llama(0.0, False, use_dora=True)  # DoRA is a peft variant the fused function does not compute
    lora_linear.install(dora)
    calls.clear()
    dora(input_ids=ids)
    assert calls == []
    # the disabled adapters really gave the base model's output, not the adapted one
    with torch.no_grad():
        assert not torch.allclose(model.eval()(input_ids=ids).logits, base_out)


def test_training_on_the_cpu_installs_it(tiny_model_dir):
    from localtune.config import load_config
    from localtune.model.loading import load_for_training, resolve_base

    folder = tiny_model_dir("llama")
    cfg = load_config(
        None,
        {
            "model.name_or_path": (str(folder), "test"),
            "train.load_in_4bit": (True, "test"),
            "train.device": ("cpu", "test"),
        },
    )
    model = load_for_training(cfg, resolve_base(str(folder))).model
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and all("_localtune_peft_forward" in m.__dict__ for m in lora_layers)
