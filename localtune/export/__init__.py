"""From a trained run to files llama.cpp runs, checked against what was trained.

- merge.py: the adapter merged into a 16-bit copy of the base (a normal Hugging Face folder);
- gguf.py: a Hugging Face folder (or a run's adapter) to GGUF files, through converters/;
- verify.py: a GGUF against its source: tokenizer, special tokens, template, logits or perplexity;
- bundle.py: `export_run` — the run's bundle (tuned GGUF, base GGUF, adapter GGUF, Modelfile, card).
"""
