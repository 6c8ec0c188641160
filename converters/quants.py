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
