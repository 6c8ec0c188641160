"""The Hugging Face architectures localtune trains and exports, and their llama.cpp names.

Keys are `config.model_type`; values are the GGUF `general.architecture` llama.cpp loads them as
(Mistral's dense models load as llama). One table, read by training (to refuse early) and export.
"""

SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
}
