"""`localtune export`: Hugging Face folder (or a run's adapter) -> GGUF files, each verified.

Direct types (f32, f16, bf16, q8_0) are written by our converter; the other llama.cpp types are
quantized from an f16 intermediate by llama.cpp's own quantizer. Every file is written under a
temporary name, validated and renamed; then verified against the source model unless told not to,
with the report saved next to it as `<file>.verify.json`.

Run as:  localtune export HF_DIR --quant q4_k_m,q8_0 --out DIR
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localtune.converters.gguf_file import ConversionError
from localtune.converters.quants import QUANT_TYPES, expected_bytes
from localtune.errors import UsageError
from localtune.model.checks import check_model_folder, load_tokenizer, weight_shapes
from localtune.runs.layout import RunDir, adapter_gguf_name, gguf_name


@dataclass
class ExportedFile:
    path: Path
    out_type: str
    mb_per_s: float
    notes: list[str] = field(default_factory=list)
    verify: object = None  # VerifyReport


def estimate_bytes(folder: Path, out_types: list[str]) -> int:
    """Disk the export needs: each file, plus the f16 intermediate the llama.cpp quantizer reads."""
    from localtune.converters.hf_to_gguf import DIRECT_TYPES

    n_weights = sum(math.prod(t.shape) for t in weight_shapes(folder).values())
    need = sum(expected_bytes(n_weights, t) for t in out_types)
    return need + (expected_bytes(n_weights, "f16") if any(t not in DIRECT_TYPES for t in out_types) else 0)


def export_model(
    folder: str | Path,
    out_types: list[str],
    out_dir: str | Path,
    *,
    chat_template: str | None = None,
    verify: bool = True,
    stem: str | None = None,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ExportedFile]:
    from localtune.converters.hf_to_gguf import DIRECT_TYPES, convert
    from localtune.converters.quantize import quantize

    folder, out_dir = Path(folder), Path(out_dir)
    bad = [t for t in out_types if t not in QUANT_TYPES]
    if bad:
        raise UsageError(f"unknown GGUF type(s): {', '.join(bad)}", hint=f"use some of: {', '.join(QUANT_TYPES)}")
    model_cfg = check_model_folder(folder, trust_remote_code=True)  # conversion runs no model code
    out_dir.mkdir(parents=True, exist_ok=True)
    need, free = estimate_bytes(folder, out_types), shutil.disk_usage(out_dir).free
    if need > free:
        raise UsageError(
            f"{out_dir} has {free / 1e9:.2f} GB free; the export needs about {need / 1e9:.2f} GB",
            hint="free some space or choose another --out",
            title="not enough disk space",
        )
    if chat_template is None:  # the model's own, or the ChatML default training would have used
        from localtune.data.template import resolve_chat_template

        chat_template = resolve_chat_template(load_tokenizer(folder, model_cfg["vocab_size"])).text
    stem = stem or folder.name
    results: list[ExportedFile] = []
    intermediate: Path | None = None
    for out_type in out_types:
        target = out_dir / gguf_name(stem, out_type)
        cb = (lambda done, total, t=out_type: progress(t, done, total)) if progress else None
        if out_type in DIRECT_TYPES:
            rep = convert(folder, target, out_type=out_type, chat_template=chat_template, progress=cb)
            results.append(ExportedFile(target, out_type, rep.mb_per_s, rep.fallbacks))
            continue
        if intermediate is None:
            done_f16 = out_dir / gguf_name(stem, "f16")
            if done_f16.is_file() and "f16" in out_types[: out_types.index(out_type)]:
                intermediate = done_f16
            else:
                intermediate = out_dir / f".{stem}-f16-intermediate.gguf"
                convert(folder, intermediate, out_type="f16", chat_template=chat_template, progress=cb)
        rep = quantize(intermediate, target, out_type)
        results.append(ExportedFile(target, out_type, rep.mb_per_s, rep.fallbacks))
    if intermediate is not None and intermediate.name.startswith("."):
        intermediate.unlink(missing_ok=True)
    for f in results:
        say(
            f"wrote {f.path} ({f.path.stat().st_size / 1e6:.1f} MB, {f.mb_per_s:.0f} MB/s)"
            + "".join(f"\n  note: {n}" for n in f.notes)
        )
        if verify:
            from localtune.export.verify import verify as run_verify

            f.verify = run_verify(f.path, folder, chat_template=chat_template)
            f.verify.save(f.path.with_name(f.path.name + ".verify.json"))
            say(f.verify.render())
    return results


def export_adapter(
    run_dir: str | Path, out_dir: str | Path, *, out_type: str = "f32", say: Callable[[str], None] = print
) -> Path:
    from localtune.config import load_config
    from localtune.converters.lora import convert_adapter
    from localtune.model.loading import resolve_base

    run = RunDir(run_dir)
    if not run.has_adapter:
        raise UsageError(
            f"{run_dir} has no trained adapter (adapter/adapter_config.json)",
            hint="finish the training run first (localtune train ... --resume)",
        )
    cfg = load_config(run.config)
    if cfg.adapter.method != "lora":
        from localtune.methods import method

        raise UsageError(
            f"{run_dir} trained {method(cfg.adapter.method).title}; llama.cpp loads LoRA adapters only, so "
            "there is no adapter GGUF for it",
            hint=f"`localtune export {run_dir}` writes the GGUF that runs it ({method(cfg.adapter.method).runs_in})",
            title="no adapter GGUF for this method",
        )
    base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    target = Path(out_dir) / adapter_gguf_name(run.name, out_type)
    info = convert_adapter(run.adapter, base.folder, target, out_type=out_type)
    say(
        f"wrote {target}: LoRA adapter, {info['tensors']} tensors, rank {info['rank']}, alpha {info['alpha']:g}; "
        f"load it with llama-cpp-python's lora_path over a GGUF of {base.spec}"
    )
    return target


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a training run's folder (RunDir.is_run; kept for the CLI's import)."""
    return RunDir.is_run(path)


def require_hf_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ConversionError(
            f"{path} is neither a Hugging Face model folder nor a training run folder",
            hint="give a folder with config.json and safetensors weights, or a RUN_DIR",
        )
