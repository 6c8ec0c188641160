"""Talking to an exported model offline through llama-cpp-python.

- runtime.py: opening a GGUF (checked first), quiet, with the AMX workaround on Intel CPUs;
- session.py: a chat session (history, system prompt, streaming, saving), and finding a run's models.
- prefix_cache.py: a prefix-tuning adapter's K/V pinned into llama.cpp's KV cache (generate, score, re-pin).
"""
