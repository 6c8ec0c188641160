"""Opening GGUF files in llama-cpp-python safely.

- Every file passes `check_gguf` (header, tensor table, bounds) before llama.cpp sees it, so a
  hostile or truncated file is refused with a message instead of crashing the process.
- On CPUs with AMX (Intel Sapphire Rapids and later), llama.cpp's AMX kernels segfault when a
  quantized model evaluates more than one token at a time (llama.cpp #20824). The AMX path lives in
  the CPU "extra buffer types"; localtune turns them off on such CPUs (LOCALTUNE_EXTRA_BUFTS=1 turns
  them back on). Nothing else changes: the same quantized kernels run through the plain CPU path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from localtune.converters.gguf_file import GGUFError, GGUFInfo, check_gguf

_PATCHED = False


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return any(flag in cpuinfo.split() for flag in ("amx_tile", "amx_int8", "amx_bf16"))


def extra_bufts_allowed(cpuinfo: str | None = None) -> bool:
    return os.environ.get("LOCALTUNE_EXTRA_BUFTS") == "1" or not cpu_has_amx(cpuinfo)


def _disable_extra_bufts() -> None:
    """Make every llama_model_default_params() (which `Llama` uses) come with use_extra_bufts off."""
    global _PATCHED
    if _PATCHED:
        return
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def params_without_extra_bufts():
        p = original()
        p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params_without_extra_bufts
    _PATCHED = True


def open_gguf(
    path: str | os.PathLike,
    *,
    n_ctx: int = 512,
    logits_all: bool = False,
    f32_kv: bool = False,
    lora_path: str | None = None,
    lora_scale: float = 1.0,
    n_threads: int | None = None,
    flash_attn: bool = False,
):
    """A llama_cpp.Llama for `path`, checked first and safe on AMX CPUs. Raises GGUFError."""
    info: GGUFInfo = check_gguf(path)
    if lora_path:
        adapter = check_gguf(lora_path)
        if adapter.architecture != info.architecture:
            raise GGUFError(
                f"the adapter {lora_path} is for {adapter.architecture!r} models, the model is {info.architecture!r}",
                hint="export the adapter from a run on this base model",
                title="adapter does not fit the model",
            )
    if not extra_bufts_allowed():
        _disable_extra_bufts()
    import llama_cpp

    kwargs = dict(
        model_path=str(path),
        n_ctx=n_ctx,
        logits_all=logits_all,
        verbose=False,
        seed=0,
        n_threads=n_threads or max(1, os.cpu_count() or 1),
        n_batch=min(512, n_ctx),
        flash_attn=flash_attn,
    )
    if f32_kv:
        kwargs.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    if lora_path:
        kwargs.update(lora_path=str(lora_path), lora_scale=lora_scale)
    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            return llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError) as exc:
        raise GGUFError(f"llama.cpp could not load {path}: {exc}", hint="re-export the model") from None
