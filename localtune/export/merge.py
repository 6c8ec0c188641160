"""Merging a run's LoRA adapter into a 16-bit (or fp32) copy of its base: never into 4-bit weights.

The base is reloaded unquantized (bf16/fp16 on a GPU, fp32 on the CPU), the adapter applied, its
logits on sample rows recorded, then merged and compared again: a merge that moves the logits past
tolerance fails loudly. The result is a normal Hugging Face folder (sharded safetensors, tokenizer
files with the original tokenizer.model or the source GGUF's tokenizer keys, the chat template used
in training, generation config), written to a temporary folder and renamed in whole
(files.atomic_folder): an earlier merged/ stays in place until the new one is complete.

The whole model is loaded at once (no layer-by-layer streaming yet): on the CPU, large models merge
in bf16 so peak RAM stays near one 16-bit copy.

Run as:  localtune merge RUN_DIR [--out DIR]
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from localtune.converters.vocab import SOURCE_VOCAB
from localtune.errors import LocaltuneError, UsageError
from localtune.faults import disk_full, fault_point, signal_point
from localtune.files import atomic_folder
from localtune.methods import method
from localtune.model.checks import check_adapter, read_safetensors_header, weight_shapes
from localtune.runs.layout import RunDir

SAMPLES = (
    "The quick brown fox jumps over the lazy dog. 12345",
    "What is the capital of France? Answer in one sentence.",
)


class MergeError(LocaltuneError):
    title = "merge failed"


@dataclass
class MergeResult:
    folder: Path
    max_delta: float
    dtype: str


def merge_placement(folder: Path, device: str):
    """Where and in which dtype to merge: on the GPU in 16 bits when the 16-bit model fits its free
    memory, else on the CPU; there in fp32 (exact) when two 16-bit copies fit in half the free RAM,
    else in bf16 so peak RAM stays near one 16-bit copy of the model."""
    import torch

    size16 = sum(p.stat().st_size // (2 if _dtype_of(p) == "F32" else 1) for p in folder.glob("*.safetensors"))
    if device == "cuda" and size16 * 1.2 < torch.cuda.mem_get_info()[0]:
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    free_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return "cpu", torch.float32 if 2 * size16 < free_ram / 2 else torch.bfloat16


def _dtype_of(path: Path) -> str:
    """The dtype of the first tensor in a safetensors file."""
    return next((t.dtype for t in read_safetensors_header(path).values()), "BF16")


def require_mergeable(name: str, run_dir) -> None:
    """A clear refusal (exit 2) for methods whose result is not a change of the base's weights."""
    chosen = method(name)
    if chosen.mergeable:
        return
    ways = {
        "virtual": f"`localtune export {run_dir}` writes the base GGUF with the learned vectors, and a portable GGUF",
        "prefix": f"`localtune export {run_dir}` writes the base GGUF with the learned prefix beside it",
        "adaption": f"`localtune distill {run_dir}` trains a LoRA that reproduces it, and that LoRA merges",
    }
    raise UsageError(
        f"{run_dir} trained {chosen.title}, which adds {chosen.summary.split(' (')[0]}: nothing to merge into "
        "the base's weights",
        hint=ways[chosen.kind],
        title="nothing to merge",
    )


def merge_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, device: str | None = None
) -> MergeResult:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from localtune.config import load_config
    from localtune.model.loading import pick_device, quiet_progress, resolve_base

    run = RunDir(run_dir)
    run.recover()  # an adapter/ or merged/ replacement cut short by a crash: the old copy goes back first
    adapter = run.adapter
    if not run.has_adapter:
        raise UsageError(f"{run_dir} has no finished adapter to merge", hint="finish training first (--resume)")
    cfg = load_config(run.config)
    require_mergeable(cfg.adapter.method, run_dir)
    base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    recorded = run.load_info().base
    if recorded and recorded.fingerprint and recorded.fingerprint != base.identity["fingerprint"]:
        raise UsageError(
            f"the adapter in {run_dir} was trained on a different base than {cfg.model.name_or_path!r} is now",
            hint="merge with the base model the run was trained on",
            title="adapter from a different base",
        )
    frozen = method(cfg.adapter.method).kind == "freeze"  # trained tensors of the base itself, no peft adapter
    if not frozen:
        check_adapter(adapter, weight_shapes(base.folder))
    tokenizer = base.tokenizer()
    dev, dtype = merge_placement(base.folder, device or pick_device(cfg.train.device))
    signal_point("merge.load")
    if frozen:
        from localtune.export.merge_freeze import freeze_merged

        ids = [torch.tensor([tokenizer(s)["input_ids"]]) for s in SAMPLES]
        merged, delta, dtype = freeze_merged(
            base.folder, adapter, ids, device=dev, trust_remote_code=cfg.model.trust_remote_code
        )
        _check_delta(delta, dtype)
        return _save_merged(run, base, tokenizer, merged, delta, dtype, out_dir)
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(
            base.folder,
            dtype=dtype,
            device_map={"": 0 if dev == "cuda" else "cpu"},
            trust_remote_code=cfg.model.trust_remote_code,
        )
    with quiet_progress():
        model = PeftModel.from_pretrained(model, adapter).eval()
    ids = [torch.tensor([tokenizer(s)["input_ids"]], device=model.device) for s in SAMPLES]
    with torch.no_grad():
        before = [model(x).logits.float() for x in ids]
        merged = model.merge_and_unload()
        after = [merged(x).logits.float() for x in ids]
    delta = max(float((a - b).abs().max()) for a, b in zip(after, before, strict=True))
    _check_delta(delta, dtype)
    return _save_merged(run, base, tokenizer, merged, delta, dtype, out_dir)


def _check_delta(delta: float, dtype) -> None:
    """The merged model must give the logits of base + adapter (freeze: of the fp32 base with the trained
    tensors in), within the rounding of the dtype it is saved in."""
    import torch

    tolerance = 1e-3 if dtype == torch.float32 else 5e-2
    if delta > tolerance:
        raise MergeError(
            f"the merged model's logits differ from base+adapter by {delta:.3g} (tolerance {tolerance})",
            hint="report this with the run folder; the adapter itself (RUN_DIR/adapter) is unaffected",
        )


def _save_merged(run, base, tokenizer, merged, delta: float, dtype, out_dir) -> MergeResult:
    from localtune.model.loading import quiet_progress

    out = Path(out_dir) if out_dir else run.merged
    try:
        with atomic_folder(out) as tmp:
            with quiet_progress():
                merged.save_pretrained(tmp, max_shard_size="2GB")
            tokenizer.save_pretrained(tmp)
            # transformers 5 does not save tokenizer.model, and a base imported from a GGUF keeps its source's
            # tokenizer keys (converters.vocab.SOURCE_VOCAB): GGUF export and verification need both.
            for name in ("tokenizer.model", SOURCE_VOCAB):
                if (base.folder / name).is_file():
                    shutil.copy2(base.folder / name, tmp / name)
            if run.chat_template.is_file():  # the template training rendered with, so the export embeds the same
                shutil.copy2(run.chat_template, tmp / "chat_template.jinja")
            fault_point("merge.rename")
    except OSError as exc:
        need = sum(math.prod(t.shape) for t in weight_shapes(base.folder).values()) * dtype.itemsize
        if full := disk_full(exc, "the merged model", out.parent, need):
            raise full from None
        raise
    return MergeResult(out, delta, str(dtype).removeprefix("torch."))
