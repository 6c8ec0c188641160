"""Model shapes, FLOPs per trained token, and GPU peaks: the arithmetic behind MFU in bench.compare_stacks.

Per trained (non-padding) token of a dense decoder with N matmul parameters (every linear layer plus
the LM head; the embedding lookup is not a matmul), L layers, attention width d and a row of s tokens
(performance.md, "the physical limit"):
- model FLOPs: 4N + 6*L*d*s. Frozen weights get no weight gradient, so the matmuls cost 2N forward
  plus 2N for the input gradient; causal attention (QK^T and AV) costs 2*L*d*s forward and twice that
  backward, with the causal half credited.
- hardware FLOPs with full activation checkpointing: one more forward, 6N + 8*L*d*s.
A batch of rows of different lengths costs sum over rows of n*(4N) + 6*L*d*n^2, so the effective s
is the token-weighted mean row length sum(n^2)/sum(n), not the padded width.

Run as:  python -m bench.flops      # prints the public shapes' parameter counts and FLOPs per token
"""

from __future__ import annotations

import re

# Published config.json values of the public checkpoints (no download needed to build them).
PUBLIC_SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=128001,
    ),
}
# Total parameter counts of the released checkpoints, to check the shapes above against.
PUBLISHED_PARAMS = {"llama-3.2-1b": 1_235_814_400, "llama-3.1-8b": 8_030_261_248}

# Dense (no sparsity) BF16 tensor-core peaks in FLOP/s from the vendors' data sheets. Matched against
# torch.cuda.get_device_name() in order, so the more specific names come first. Unknown GPU: no MFU.
GPU_BF16_PEAKS = (
    (r"\bGH200\b", 989e12),
    (r"\bH200\b", 989e12),
    (r"\bH100\b.*\bPCIe\b", 756e12),
    (r"\bH100\b.*\bNVL\b", 835e12),
    (r"\bH100\b", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"\bA100\b", 312e12),
    (r"\bL40S\b", 362e12),
    (r"\bL4\b", 121e12),
    (r"\bRTX 4090\b", 165e12),
)


def llama_config(name: str):
    """A transformers LlamaConfig of a public shape."""
    from transformers import LlamaConfig

    return LlamaConfig(**PUBLIC_SHAPES[name])


def gpu_peak_flops(device_name: str | None) -> float | None:
    """Dense BF16 peak for a CUDA device name, or None when the card is not in the table."""
    for pattern, peak in GPU_BF16_PEAKS:
        if device_name and re.search(pattern, device_name):
            return peak
    return None


def matmul_params(shape) -> int:
    """N: every linear layer of every block plus the LM head (tied or not, it is a matmul)."""
    return shape.linear_params() + shape.vocab * shape.hidden


def attention_width(shape) -> int:
    return shape.heads * shape.head_dim


def model_flops(shape, lengths: list[int]) -> float:
    """Model FLOPs to train rows of these lengths (real tokens only): sum of n*4N + 6*L*d*n^2."""
    n_mat, ld = matmul_params(shape), shape.layers * attention_width(shape)
    return float(sum(4 * n_mat * n + 6 * ld * n * n for n in lengths))


def hardware_flops(shape, lengths: list[int]) -> float:
    """What the GPU really executes with full activation checkpointing (one extra forward)."""
    n_mat, ld = matmul_params(shape), shape.layers * attention_width(shape)
    return float(sum(6 * n_mat * n + 8 * ld * n * n for n in lengths))


def flops_per_token(shape, s: float) -> float:
    """4N + 6*L*d*s for a row of s tokens."""
    return 4 * matmul_params(shape) + 6 * shape.layers * attention_width(shape) * s


def check_public_shapes() -> list[str]:
    """Build each public shape on the meta device (no memory) and check the counts used for MFU.

    Returns one line per check; raises AssertionError when the arithmetic disagrees with the module
    tree transformers builds or with the published parameter count.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from localtune.planner import Shape

    lines = []
    for name in PUBLIC_SHAPES:
        config = llama_config(name)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        shape = Shape.from_config(config)
        assert total == PUBLISHED_PARAMS[name], f"{name}: {total:,} parameters, published {PUBLISHED_PARAMS[name]:,}"
        assert linear == matmul_params(shape), f"{name}: linear weights {linear:,} vs N {matmul_params(shape):,}"
        lines.append(
            f"{name}: {total / 1e9:.3f} B parameters (published {PUBLISHED_PARAMS[name] / 1e9:.3f} B), "
            f"N = {linear / 1e9:.3f} B matmul parameters, L*d = {shape.layers}*{attention_width(shape)}; "
            f"FLOPs/token at s=512: {flops_per_token(shape, 512) / 1e9:.2f} G, "
            f"s=8192: {flops_per_token(shape, 8192) / 1e9:.2f} G"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(check_public_shapes()))
