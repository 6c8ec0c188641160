"""SparseDropout draws only the dropped positions, with nn.Dropout's distribution, and replays under checkpointing."""

from __future__ import annotations

import math

import pytest
import torch

from localtune.train.speed import lora_dropout
from localtune.train.speed.lora_dropout import SparseDropout, dropped_positions, replace_lora_dropout


def check_positions(pos: torch.Tensor, n: int) -> None:
    assert pos.dtype == torch.int64
    if pos.numel():
        assert int(pos.min()) >= 0 and int(pos.max()) < n
        assert bool((pos[1:] > pos[:-1]).all())  # sorted, no position twice


def assert_every_position_dropped_at_rate_p(n: int, p: float, draws: int, seed: int) -> None:
    torch.manual_seed(seed)
    counts = torch.zeros(n)
    for _ in range(draws):
        pos = dropped_positions(n, p)
        check_positions(pos, n)
        counts[pos] += 1
    # every position, the first and the last included, is dropped at rate p (5 binomial standard deviations)
    tolerance = 5 * math.sqrt(p * (1 - p) / draws)
    assert (counts / draws - p).abs().max() < tolerance, counts / draws


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_each_position_is_dropped_with_probability_p(p):
    assert_every_position_dropped_at_rate_p(40, p, draws=4000, seed=0)


def test_positions_are_independent_and_the_total_is_binomial():
    n, p = 200_000, 0.05
    torch.manual_seed(1)
    pos = dropped_positions(n, p)
    check_positions(pos, n)
    assert abs(pos.numel() - n * p) < 5 * math.sqrt(n * p * (1 - p))
    # independence: neighbours are both dropped at rate p * p, as with n Bernoulli draws
    mask = torch.zeros(n, dtype=torch.bool)
    mask[pos] = True
    both = (mask[1:] & mask[:-1]).float().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p / n)


def test_drawing_more_when_the_first_draw_falls_short(monkeypatch):
    monkeypatch.setattr(lora_dropout, "MARGIN_SIGMAS", -3)  # the first batch of gaps ends before n, often
    assert_every_position_dropped_at_rate_p(30, 0.5, draws=3000, seed=2)


def test_edge_sizes_and_probabilities():
    assert dropped_positions(0, 0.5).numel() == 0
    assert dropped_positions(1000, 0.0).numel() == 0
    torch.manual_seed(3)
    assert {dropped_positions(1, 0.5).numel() for _ in range(50)} == {0, 1}
    with pytest.raises(ValueError, match="dropout probability"):
        SparseDropout(1.0)


def test_forward_and_backward_scale_kept_elements_and_zero_dropped_ones():
    p = 0.25
    x = (torch.rand(64, 48) + 0.5).requires_grad_()  # no zeros, so a zero in the output means dropped
    drop = SparseDropout(p).train()
    out = drop(x)
    dropped = out == 0
    assert 0 < dropped.float().mean() < 0.5
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p))
    weights = torch.randn_like(x)
    (out * weights).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(dropped, 0.0, weights / (1 - p)))
    # a non-contiguous input gives the same pattern of kept elements, in its own layout
    xt = (torch.rand(48, 64) + 0.5).t()
    assert not xt.is_contiguous()
    out_t = drop(xt)
    kept = out_t != 0
    torch.testing.assert_close(out_t[kept], xt[kept] / (1 - p))


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(8, 8)
    assert SparseDropout(0.3).eval()(x) is x
    assert SparseDropout(0.0).train()(x) is x


def lora_grads(model, ids):
    torch.manual_seed(7)  # the dropout draws
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_in_a_lora_model_checkpointing_replays_the_same_drops(lora_llama):
    """Recomputed layers draw the same positions: the gradients equal those of a run without checkpointing."""
    ids = torch.randint(5, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    results = []
    for checkpointing in (False, True):
        model = lora_llama(0.3, checkpointing)
        swapped = replace_lora_dropout(model)
        lora_layers = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
        assert swapped == lora_layers > 0
        assert all(
            type(d) is SparseDropout
            for m in model.modules()
            if hasattr(m, "lora_dropout")
            for d in m.lora_dropout.values()
        )
        results.append(lora_grads(model, ids))
    (loss_plain, plain), (loss_ckpt, ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss_plain)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, msg=name)
    # and the dropout really acts: without it the loss is another one
    loss_none, _ = lora_grads(lora_llama(0.0, False), ids)
    assert not torch.isclose(loss_none, loss_plain)


def test_training_on_the_cpu_uses_it(tiny_model_dir):
    from localtune.config import load_config
    from localtune.model.loading import load_for_training, resolve_base

    folder = tiny_model_dir("llama")
    cfg = load_config(
        None,
        {
            "model.name_or_path": (str(folder), "test"),
            "adapter.dropout": (0.1, "test"),
            "train.load_in_4bit": (False, "test"),
            "train.device": ("cpu", "test"),
        },
    )
    model = load_for_training(cfg, resolve_base(str(folder))).model
    drops = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert drops and all(type(d) is SparseDropout and d.p == 0.1 for d in drops)
