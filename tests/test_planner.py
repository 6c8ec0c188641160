"""The memory planner on real architectures' shapes (configs only, no weights)."""

from __future__ import annotations

import pytest

from localtune.planner import GIB, Shape, estimate, recommend

# Published shapes: Llama-3.1-8B, Qwen2.5-0.5B, Gemma-3-1B, Phi-3-mini, Qwen3.5-9B (text).
CONFIGS = {
    "llama": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            hidden_size=1152,
            num_hidden_layers=26,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            intermediate_size=6912,
            vocab_size=262144,
        ),
    ),
    "phi3": (
        "Phi3Config",
        dict(
            hidden_size=3072,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            intermediate_size=8192,
            vocab_size=32064,
        ),
    ),
    "qwen3_5": (  # 24 gated-delta-net layers + 8 gated full-attention layers
        "Qwen3_5TextConfig",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=256,
            intermediate_size=12288,
            vocab_size=248320,
            linear_num_key_heads=16,
            linear_num_value_heads=32,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
        ),
    ),
}


def shape_of(arch: str) -> Shape:
    import transformers

    cls, kw = CONFIGS[arch]
    return Shape.from_config(getattr(transformers, cls)(**kw))


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_estimates_move_in_the_right_direction(arch):
    s = shape_of(arch)
    base = dict(micro_batch=2, seq_len=1024, rank=16)
    total = estimate(s, **base).total
    assert estimate(s, **{**base, "seq_len": 2048}).total > total
    assert estimate(s, **{**base, "micro_batch": 4}).total > total
    assert estimate(s, **{**base, "rank": 64}).total > total
    assert estimate(s, **base, checkpointing=False).total > total
    assert estimate(s, **base, quantized=False).total > total
    assert estimate(s, **base, optimizer="adamw").total > total
    parts = estimate(s, **base).parts
    assert all(v > 0 for v in parts.values())
    assert {"activations", "logits + loss (one chunk)", "optimizer state"} <= set(parts)
    # the loss never holds more than one chunk of logits, however long the sequence
    long = estimate(s, **{**base, "seq_len": 8192}).parts
    assert long["logits + loss (one chunk)"] == parts["logits + loss (one chunk)"] < 2 * 1024 * s.vocab * 10


def test_llama_8b_numbers_are_plausible():
    s = shape_of("llama")
    assert 7.4e9 < s.linear_params() + s.embedding_params() < 8.2e9  # Llama-3.1-8B has 8.03 B parameters
    assert 40e6 < s.lora_params(16) < 45e6  # rank-16 LoRA on all linear layers: 41.9 M
    plan = estimate(s, micro_batch=1, seq_len=2048, rank=16)
    assert 3.5e9 < plan.parts["base weights (4-bit)"] < 3.7e9  # 6.98 B linear weights at 0.516 bytes
    assert 6 * GIB < plan.total < 14 * GIB


def test_qwen3_5_counts_its_linear_attention_layers():
    s = shape_of("qwen3_5")
    assert s.linear_layers == 24 and s.attn_gate
    assert 8.8e9 < s.linear_params() + s.embedding_params() < 9.1e9  # Qwen3.5-9B: ~9 B in the text model
    kinds = [frozenset(b) for b in s.blocks()]
    linear = [k for k in kinds if "in_proj_qkv" in k]
    assert len(linear) == 24 and len([k for k in kinds if "q_proj" in k]) == 8
    assert {"in_proj_qkv", "in_proj_z", "out_proj", "gate_proj"} <= linear[0]
    assert s.lora_params(16, ["q_proj", "v_proj"]) == 8 * 16 * (4096 + 8192 + 4096 + 1024)  # attention layers only
    plan = estimate(s, micro_batch=1, seq_len=4096, rank=16)
    as_attention = estimate(Shape(**{**s.__dict__, "linear_layers": 0}), micro_batch=1, seq_len=4096, rank=16)
    # the recurrent working set (states after each chunk, fp32 chunk matrices) comes on top of a layer's
    assert plan.parts["activations"] > as_attention.parts["activations"]
    assert 6 * GIB < plan.total < 16 * GIB


def test_recommendation_fits_the_budget_and_uses_it():
    s = shape_of("llama")
    rec = recommend(s, 23 * GIB, seq_len=2048, rank=16)
    assert rec.fits and rec.plan.total <= 23 * GIB
    assert estimate(s, micro_batch=rec.plan.micro_batch * 2, seq_len=2048, rank=16).total > 23 * GIB
    small = recommend(s, 7 * GIB, seq_len=4096, rank=16)
    assert small.fits and small.plan.seq_len < 4096 and small.notes
    assert not recommend(s, 2 * GIB, seq_len=1024, rank=16).fits


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_plan_command_on_a_config_folder(arch, tmp_path, cli):
    import transformers

    cls, kw = CONFIGS[arch]
    getattr(transformers, cls)(**kw).save_pretrained(tmp_path)
    result = cli("plan", "--model", tmp_path, "--vram", "24", "--max-seq-len", "2048")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "recommended: micro-batch" in out and "max_seq_len 2048" in out and "base weights (4-bit)" in out
    assert "LoRA gradients (fp32)" in out and "checkpointing off" in out


def test_plan_with_data_uses_the_longest_row(tmp_path, cli, tiny_model_dir):
    from helpers import chat, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", [chat("hi", "hello"), chat("word " * 30, "x")])
    result = cli("plan", "--model", tiny_model_dir("qwen2"), "--data", data, "--vram", "8")
    assert result.exit_code == 0, result.output
    assert "data: 2 rows, longest" in result.output and "max_seq_len 1024" not in result.output
