"""GGUF output types localtune can produce, and llama.cpp's file-type id for each.

The ids are llama.cpp's `llama_ftype` values (`LLAMA_FTYPE_*` in llama.h); the quantizer in
llama-cpp-python takes them. This table is the one place that lists the names users type.
"""

QUANT_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "bf16": 32,
    "q8_0": 7,
    "q6_k": 18,
    "q5_k_m": 17,
    "q5_k_s": 16,
    "q5_1": 9,
    "q5_0": 8,
    "q4_k_m": 15,
    "q4_k_s": 14,
    "q4_1": 3,
    "q4_0": 2,
    "q3_k_l": 13,
    "q3_k_m": 12,
    "q3_k_s": 11,
    "q2_k": 10,
}

# Bytes per weight of each type (llama.cpp block sizes; K-quant mixes as llama.cpp reports them).
BYTES_PER_WEIGHT: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q6_k": 210 / 256,
    "q5_k_m": 0.71,
    "q5_k_s": 0.69,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_k_m": 0.61,
    "q4_k_s": 0.58,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "q3_k_l": 0.54,
    "q3_k_m": 0.49,
    "q3_k_s": 0.44,
    "q2_k": 0.41,
}


def expected_bytes(n_weights: int, out_type: str) -> int:
    """About how large a GGUF of n_weights weights in out_type is (metadata and small tensors aside)."""
    return int(n_weights * BYTES_PER_WEIGHT.get(out_type, 2.0))
