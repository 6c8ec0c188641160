"""localtune: fine-tune an LLM on your own machine, from a data file to a verified, chattable GGUF.

The core is headless: importing it loads neither textual nor torch. Heavy libraries are imported
inside the functions that need them, so `localtune --help` starts fast.

Run as:  localtune --help
"""

__version__ = "0.1.0"
