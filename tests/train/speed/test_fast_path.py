"""The fast training forward computes what the padded one did: padding-free rows and chunked cross-entropy.

Reference: the right-padded micro-batch through the model's own forward and loss (`collate` +
`model(**batch, num_items_in_batch=...)`), which is what the trainer ran before. All tiny
architectures take the padding-free path (none needed the padded fallback); Gemma 2 and Gemma 3 rows
are longer than their 64-token sliding window and OLMo 3's than its 16-token one, so the windowed layers
are exercised, and Mistral is also run with a 16-token window. Gemma 4's 16-token window, per-layer inputs and
KV-sharing layers (which attend over the keys of earlier layers) take the same path.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from localtune.data.packing import pack_rows
from localtune.data.tokenize import IGNORE
from localtune.model.tiny import ARCHITECTURES
from localtune.train.speed import chunked_loss, row_attention
from localtune.train.speed.batching import collate, padding_free
from localtune.train.speed.chunked_loss import CausalLMLoss, chunked_cross_entropy
from localtune.train.speed.row_attention import PREFIX

LENGTHS = (90, 37, 2, 23)  # different lengths, one longer than Gemma's 64-token window, one without targets


@dataclass
class Row:
    input_ids: list[int]
    labels: list[int]
    where: str = "test:1"


def make_rows(vocab: int, lengths=LENGTHS, seed: int = 1) -> list[Row]:
    """Rows of random tokens whose first third is an untrained prompt (labels IGNORE)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        rows.append(Row(ids, [IGNORE] * (n // 3) + ids[n // 3 :]))
    return rows


def n_targets(rows) -> int:
    return sum(1 for r in rows for x in r.labels[1:] if x != IGNORE)


def lora_model(model_dir, *, targets="all-linear", quantized=False, checkpointing=False, **config):
    """A tiny model with LoRA adapters whose B matrices are non-zero, so every LoRA weight gets a gradient."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.float32, **config}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    for m in model.modules():  # bitsandbytes' bf16 CPU inference kernel is approximate (as in model_loading)
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    model.config.use_cache = False  # as model_loading sets it: the padded packed reference needs it too
    if checkpointing:  # as model_loading does: layers recompute their forward (attention included) in backward
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.train()
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model


def loss_and_grads(model, compute):
    """(loss, {name: grad}) of the trainable weights for the loss `compute()` returns."""
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def padded_reference(model, rows, num_items: int):
    """What the trainer computed before: right-padded rows through the model's own forward and loss."""
    import torch

    return model(**collate(rows, 0, model.device), num_items_in_batch=torch.tensor(num_items)).loss


def assert_same(model, rows, *, chunk=None, num_items=None):
    import torch

    num_items = num_items or n_targets(rows)
    fast = CausalLMLoss(model, pad_id=0, chunk=chunk)
    assert fast.padding_free and fast.row_attention
    old_loss, old_grads = loss_and_grads(model, lambda: padded_reference(model, rows, num_items))
    new_loss, new_grads = loss_and_grads(model, lambda: fast(rows, num_items=num_items))
    torch.testing.assert_close(new_loss, old_loss, atol=1e-5, rtol=0)
    assert old_grads.keys() == new_grads.keys() and len(new_grads) > 0
    for name, grad in old_grads.items():
        assert grad.abs().max() > 0, name  # every LoRA weight really takes part
        torch.testing.assert_close(new_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    with torch.no_grad():  # eval: the same path without gradients gives the same value
        torch.testing.assert_close(fast(rows, num_items=num_items), old_loss, atol=1e-5, rtol=0)
    return new_loss


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_free_matches_the_padded_loss_and_lora_gradients(arch, tiny_model_dir):
    model = lora_model(tiny_model_dir(arch))
    assert model.get_base_model().config._attn_implementation.startswith(PREFIX) is False
    assert_same(model, make_rows(model.config.vocab_size), chunk=16)  # 16 < targets: several chunks
    assert model.get_base_model().config._attn_implementation.startswith(PREFIX)  # attention row by row


def test_mistral_with_a_sliding_window_shorter_than_the_rows(tiny_model_dir):
    model = lora_model(tiny_model_dir("mistral"), sliding_window=16)
    assert model.config.sliding_window == 16
    assert_same(model, make_rows(model.config.vocab_size))


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma4"])
def test_with_activation_checkpointing_the_recomputed_attention_is_row_by_row_too(arch, tiny_model_dir, monkeypatch):
    model = lora_model(tiny_model_dir(arch), checkpointing=True)
    assert model.get_base_model().is_activation_checkpointing and model.training
    rows = make_rows(model.config.vocab_size)
    assert_same(model, rows)

    query_lengths = []
    real_original = row_attention._original

    def recording(name, module):
        inner = real_original(name, module)

        def call(module, query, *args, **kwargs):
            query_lengths.append(query.shape[2])
            return inner(module, query, *args, **kwargs)

        return call

    monkeypatch.setattr(row_attention, "_original", recording)
    CausalLMLoss(model, 0)(rows, n_targets(rows)).backward()
    layers = model.config.num_hidden_layers
    # one attention call per row and layer in the forward, and again in the backward's recomputation
    assert sorted(query_lengths) == sorted(list(LENGTHS) * layers * 2)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2", "gemma4"])
def test_packed_rows_concatenate_like_plain_rows(arch, tiny_model_dir):
    import torch

    model = lora_model(tiny_model_dir(arch))
    vocab = model.config.vocab_size
    tokenized = make_rows(vocab, lengths=(30, 25, 20, 18, 12, 9, 5))
    packed = pack_rows(tokenized, max_seq_len=70)
    assert len(packed) == 2 and all(len(p.wheres) > 1 for p in packed)  # each micro-batch row holds several
    loss = assert_same(model, packed)
    with torch.no_grad():  # and both equal the rows run one by one: no attention across packed segments
        alone = sum(float(padded_reference(model, [r], 1)) for r in tokenized)
    assert float(loss) * n_targets(packed) == pytest.approx(alone, rel=1e-5)


def test_linear_attention_state_restarts_at_every_row_and_packed_segment(tiny_model_dir, monkeypatch):
    """Qwen3.5's gated delta nets: padding-free rows and packed segments each start from a zero state, as rows
    run one at a time do (and as the right-padded batch does); without the restart the loss moves."""
    import torch

    model = lora_model(tiny_model_dir("qwen3_5"))
    vocab = model.config.vocab_size
    fast = CausalLMLoss(model, 0)
    assert fast.padding_free and fast.row_recurrence
    tokenized = make_rows(vocab, lengths=(30, 25, 20, 18, 12, 9, 5))
    packed = pack_rows(tokenized, max_seq_len=70)
    assert len(packed) == 2 and all(len(p.wheres) > 1 for p in packed)
    with torch.no_grad():
        alone = sum(float(padded_reference(model, [r], 1)) for r in tokenized)
        assert float(padded_reference(model, tokenized, 1)) == pytest.approx(alone, rel=1e-5)  # right padding
        assert float(fast(tokenized, 1)) == pytest.approx(alone, rel=1e-5)
        assert float(fast(packed, 1)) == pytest.approx(alone, rel=1e-5)
        fast.row_recurrence = False  # the control: state carried across rows and segments
        assert float(fast(packed, 1)) != pytest.approx(alone, rel=1e-4)
    # the model's own forward cannot restart the state inside a packed row: refused, not silently wrong
    monkeypatch.setattr(chunked_loss, "PADDING_FREE_MODEL_TYPES", ("qwen2",))
    with pytest.raises(Exception, match="linear-attention"):
        CausalLMLoss(model, 0)(packed, 1)


@pytest.mark.parametrize("arch", ["llama", "qwen2"], ids=["untied-lm-head", "tied-embeddings"])
def test_lora_on_the_lm_head(arch, tiny_model_dir):
    model = lora_model(tiny_model_dir(arch), targets=["q_proj", "v_proj", "lm_head"])
    lora_head = [n for n, p in model.named_parameters() if "lm_head" in n and p.requires_grad]
    assert lora_head  # the LM head is LoRA-wrapped, and the chunked loss goes through its adapter
    assert_same(model, make_rows(model.config.vocab_size), chunk=8)


def test_qlora_4bit_base(tiny_model_dir):
    assert_same(lora_model(tiny_model_dir("qwen2"), quantized=True), make_rows(600))


def test_chunked_loss_equals_one_chunk_and_plain_cross_entropy(tiny_model_dir):
    import torch

    model = lora_model(tiny_model_dir("gemma2"))  # final-logit soft-capping on
    rows = make_rows(model.config.vocab_size)
    targets = n_targets(rows)
    one_loss, one_grads = loss_and_grads(model, lambda: CausalLMLoss(model, 0, chunk=10_000)(rows, targets))
    for chunk in (1, 7, targets - 1):
        loss, grads = loss_and_grads(model, lambda c=chunk: CausalLMLoss(model, 0, chunk=c)(rows, targets))
        torch.testing.assert_close(loss, one_loss, atol=1e-6, rtol=0)
        for name in one_grads:
            torch.testing.assert_close(grads[name], one_grads[name], atol=1e-7, rtol=1e-5)

    head = torch.nn.Linear(8, 50, bias=False)
    hidden, target = torch.randn(23, 8), torch.randint(0, 50, (23,))
    plain = torch.nn.functional.cross_entropy(torch.tanh(head(hidden) / 3.0) * 3.0, target, reduction="sum")
    torch.testing.assert_close(chunked_cross_entropy(hidden, target, head, softcap=3.0, chunk=5), plain)


def test_no_row_predicts_the_next_rows_first_token(tiny_model_dir):
    import torch

    model = lora_model(tiny_model_dir("llama"))
    a, b = make_rows(model.config.vocab_size, lengths=(12, 9))
    b.labels = list(b.input_ids)  # b's first token is a label: a wrong shift would make a's end predict it
    batch = padding_free([a, b], "cpu")
    assert batch.row_bounds == (0, 12, 21)
    assert 11 not in batch.target_index.tolist()  # a's last position predicts nothing
    # a: tokens 0-3 are prompt, so positions 3..10 predict tokens 4..11; b: positions 12..19 predict 13..20
    assert batch.target_index.tolist() == [i for i in range(3, 20) if i != 11]
    fast = CausalLMLoss(model, 0)
    with torch.no_grad():
        together = float(fast([a, b], num_items=1))
        apart = float(fast([a], num_items=1)) + float(fast([b], num_items=1))
        crossing = torch.cat([batch.target_ids[:8], torch.tensor([b.input_ids[0]]), batch.target_ids[8:]])
        hidden = fast.decoder(**batch.inputs, use_cache=False).last_hidden_state[0]
        wrong = float(chunked_cross_entropy(hidden[3:20], crossing, fast.lm_head))  # position 11 -> b's first
    assert together == pytest.approx(apart, abs=1e-4)
    assert abs(wrong - together) > 1e-2  # the extra cross-row target would have shown in the loss


def head_products(model, rows, chunk: int, vocab: int) -> list[tuple[int, ...]]:
    """Shapes of every matrix product with a vocabulary-wide output during one forward and backward."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    products = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
    seen = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in products and out.shape[-1] == vocab:
                seen.append(tuple(out.shape))
            return out

    fast = CausalLMLoss(model, 0, chunk=chunk)
    with Recorder():
        fast(rows, num_items=n_targets(rows)).backward()
    return seen


def test_the_loss_never_holds_full_vocabulary_logits_for_all_tokens(tiny_model_dir):
    model = lora_model(tiny_model_dir("qwen2"))
    rows = make_rows(model.config.vocab_size)
    chunk, targets, vocab = 16, n_targets(rows), model.config.vocab_size
    assert targets > 3 * chunk
    seen = head_products(model, rows, chunk, vocab)
    # the fused head pass: each chunk's logits exactly once (no recompute), never more rows than a chunk, and
    # only for target positions (prompt and padding positions get no logits)
    assert len(seen) == -(-targets // chunk)
    assert all(shape[0] <= chunk for shape in seen)
    assert sum(shape[0] for shape in seen) == targets


def test_with_lora_on_the_head_each_chunk_is_checkpointed(tiny_model_dir):
    model = lora_model(tiny_model_dir("qwen2"), targets=["q_proj", "lm_head"])
    rows = make_rows(model.config.vocab_size)
    chunk, targets, vocab = 16, n_targets(rows), model.config.vocab_size
    seen = head_products(model, rows, chunk, vocab)
    # frozen head + LoRA B, each in the forward and again in the backward's recompute; a chunk at a time
    assert len(seen) == 2 * 2 * -(-targets // chunk)
    assert all(shape[0] <= chunk for shape in seen)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("bias", [False, True])
def test_the_fused_head_pass_equals_autograd_through_full_logits(softcap, bias):
    import torch

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=bias).requires_grad_(False)
    hidden, target = torch.randn(23, 8), torch.randint(0, 50, (23,))  # fp32: the loss is fp32 in any case

    def plain(h):
        logits = head(h)
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return torch.nn.functional.cross_entropy(logits, target, reduction="sum")

    h0 = hidden.clone().requires_grad_()
    expected = plain(h0)
    (expected * 0.37).backward()
    for chunk in (1, 5, 23, 100):
        h = hidden.clone().requires_grad_()
        total = chunked_cross_entropy(h, target, head, softcap=softcap, chunk=chunk)
        assert type(total.grad_fn).__name__ == "FusedHeadLossBackward"
        (total * 0.37).backward()
        torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h.grad, h0.grad, atol=1e-6, rtol=1e-5)
    # bf16 (the GPU's compute dtype): within bf16 rounding of the fp32 result
    hb = hidden.to(torch.bfloat16).requires_grad_()
    total = chunked_cross_entropy(hb, target, head.to(torch.bfloat16), softcap=softcap, chunk=5)
    (total * 0.37).backward()
    torch.testing.assert_close(total, expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(hb.grad.float(), h0.grad, atol=0.02, rtol=0.05)


def test_other_model_types_fall_back_to_the_models_own_padded_forward(tiny_model_dir, monkeypatch):
    import torch

    monkeypatch.setattr(chunked_loss, "PADDING_FREE_MODEL_TYPES", ("qwen2",))
    model = lora_model(tiny_model_dir("phi3"))
    rows = make_rows(model.config.vocab_size)
    fallback = CausalLMLoss(model, 0)
    assert not fallback.padding_free
    assert not model.get_base_model().config._attn_implementation.startswith(PREFIX)  # model untouched
    with torch.no_grad():
        torch.testing.assert_close(fallback(rows, n_targets(rows)), padded_reference(model, rows, n_targets(rows)))


def test_row_attention_leaves_ordinary_calls_unchanged(tiny_model_dir):
    """After the switch, a plain forward (generation, the trainer's `trained` hook) gives the same logits."""
    import torch

    model = lora_model(tiny_model_dir("gemma2")).eval()
    ids = torch.tensor([[1, 5, 9, 77, 300, 42, 8] * 12])  # longer than the sliding window
    with torch.no_grad():
        before = model(input_ids=ids).logits
        CausalLMLoss(model, 0)
        after = model(input_ids=ids).logits
    assert model.get_base_model().config._attn_implementation == PREFIX + "eager"
    torch.testing.assert_close(after, before, atol=0, rtol=0)
