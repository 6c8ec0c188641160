"""Talking to an exported model offline through llama-cpp-python.

- runtime.py: opening a GGUF (checked first), quiet, with the AMX workaround on Intel CPUs;
- session.py: a chat session (history, system prompt, streaming, tools, saving), and finding a run's models.
- tool_calls.py: a reply taken apart (reasoning, answer, tool calls in each model family's format), live too.
- prefix_cache.py: a prefix-tuning adapter's K/V pinned into llama.cpp's KV cache (generate, score, re-pin).
"""
