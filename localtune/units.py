"""How localtune writes sizes and durations for people: one spelling in the CLI, the TUI and reports."""

from __future__ import annotations

GIB = 1024**3


def format_bytes(n: float) -> str:
    """'1.23 GiB', or MiB below a tenth of a GiB."""
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 1024**2:.1f} MiB"


def format_duration(seconds: float) -> str:
    """'42s', '3m05s', '1h07m'."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
