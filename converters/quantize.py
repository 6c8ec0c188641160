"""K-quants and the other llama.cpp file types, through the quantizer bundled in llama-cpp-python.

Nothing is compiled: `llama_cpp.llama_model_quantize` is llama.cpp's own quantizer. Its input must
be an f32/f16/bf16 GGUF. Shapes whose rows do not fit a K-quant block (256 columns) fall back the way
llama.cpp does (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, else F16); the report lists which tensors
ended up in which type.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from localtune.converters.gguf_file import ConversionError, check_gguf, safe_output
from localtune.converters.quants import QUANT_TYPES, expected_bytes
from localtune.faults import fault_point


@dataclass
class QuantizeReport:
    path: Path
    out_type: str
    seconds: float = 0.0
    bytes_written: int = 0
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type name -> tensor count
    fallbacks: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


def tensor_type_counts(path: Path) -> dict[str, int]:
    import gguf

    info = check_gguf(path)
    counts = collections.Counter(gguf.GGMLQuantizationType(t).name for _dims, t, _off in info.tensors.values())
    return dict(sorted(counts.items()))


def quantize(
    src: str | os.PathLike, dst: str | os.PathLike, out_type: str, *, threads: int | None = None
) -> QuantizeReport:
    """Quantize an f32/f16/bf16 GGUF into `out_type` (e.g. q4_k_m) with llama.cpp's quantizer."""
    import llama_cpp

    src, dst = Path(src), Path(dst)
    if out_type not in QUANT_TYPES:
        raise ConversionError(f"unknown GGUF type {out_type!r}", hint=f"use one of: {', '.join(QUANT_TYPES)}")
    start = time.monotonic()
    report = QuantizeReport(dst, out_type)
    n_weights = sum(math.prod(dims) for dims, _type, _offset in check_gguf(src).tensors.values())
    with safe_output(dst, expected_bytes(n_weights, out_type)) as tmp:
        params = llama_cpp.llama_model_quantize_default_params()
        params.nthread = threads or max(1, os.cpu_count() or 1)
        params.ftype = QUANT_TYPES[out_type]
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        fault_point("quantize.done")
        if rc != 0 or not tmp.is_file():
            raise ConversionError(
                f"llama.cpp's quantizer failed on {src} (code {rc})", hint="the source must be an f32, f16 or bf16 GGUF"
            )
    report.seconds = time.monotonic() - start
    report.bytes_written = dst.stat().st_size
    report.tensor_types = tensor_type_counts(dst)
    expected = _main_type(out_type)
    if expected and expected in report.tensor_types:
        others = {k: v for k, v in report.tensor_types.items() if k not in (expected, "F32", "Q6_K", "Q8_0")}
        if others:
            report.fallbacks.append(
                f"{sum(others.values())} tensor(s) stored as {', '.join(others)} because "
                "their rows are not a multiple of the block size"
            )
    elif expected:
        report.fallbacks.append(
            f"no tensor could use {expected} (rows not a multiple of 256); stored as " + ", ".join(report.tensor_types)
        )
    return report


def _main_type(out_type: str) -> str | None:
    base = out_type.upper().rsplit("_", 1)[0] if out_type.endswith(("_m", "_s", "_l")) else out_type.upper()
    return {"Q4_K": "Q4_K", "Q5_K": "Q5_K", "Q3_K": "Q3_K", "Q6_K": "Q6_K", "Q2_K": "Q2_K"}.get(base)
