"""The app's screens, one module each: runs (the list), new_run (the form), dashboard (one run's
training), export (to GGUF) and chat. `HEAVY_WORK` is the lock their thread workers share."""

from __future__ import annotations

import threading

# transformers' lazy imports are not thread-safe: background workers that load it take turns.
HEAVY_WORK = threading.Lock()
