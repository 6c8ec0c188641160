"""The base model: where it comes from, whether its files are sound, and loading it for training.

- source.py: what the user named (a hub id, a folder, a .gguf file, 'smollm2') -> a ModelSource;
- checks.py: bounded checks of a model folder and an adapter (safetensors headers, config.json,
  custom code, tokenizer) before anything loads them;
- loading.py: the base in 4-bit NF4 or 16/32-bit with LoRA on top, ready to train; a GGUF imported
  as a Hugging Face folder;
- tiny.py: tiny random models of real architectures, built offline (tests, benchmarks).

Only torch-free names are re-exported here, so importing the package stays fast.
"""

from localtune.model.source import DEMO_MODEL, ModelSource, resolve_model

__all__ = ["DEMO_MODEL", "ModelSource", "resolve_model"]
