"""Hugging Face -> GGUF conversion, built on the `gguf` package and llama.cpp's quantizer.

Headless: never imports textual. Installed as `localtune.converters`.
"""
