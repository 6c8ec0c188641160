"""A finished run's model on transformers: its base, unquantized, with the run's adapter on it (peft).

What `localtune distill` uses as the teacher and `localtune chat` runs for methods that have no GGUF form
(LLaMA-Adapter). The base loads unquantized in the run's compute dtype (fp32 on the CPU, bf16/fp16 on a
GPU), whatever the run trained on: a 4-bit base would add its rounding to the teacher's outputs.

Use as:  rm = load_run_model(RUN_DIR); rm.model(input_ids=ids).logits
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from localtune.errors import UsageError
from localtune.runs.layout import RunDir


@dataclass
class RunModel:
    model: object  # peft.PeftModel, in eval mode, no gradients
    tokenizer: object
    cfg: object  # the run's Config
    template: str  # the chat template the run trained with
    base: object  # model.loading.Base
    device: str
    dtype: str


def require_adapter(run_dir: str | os.PathLike, what: str) -> RunDir:
    """The run folder, refused (exit 2) when it holds no finished adapter."""
    run = RunDir(run_dir)
    if not RunDir.is_run(run.path):
        raise UsageError(
            f"{run.path} is not a localtune run folder", hint="give the RUN_DIR that `localtune train` wrote"
        )
    run.recover()
    if not run.has_adapter:
        raise UsageError(
            f"{run.path} has no finished adapter to {what}",
            hint=f"finish training first: localtune train --resume --out {run.path}",
        )
    return run


def check_same_base(run: RunDir, base) -> None:
    recorded = run.read_info()
    fp = recorded.base.fingerprint if recorded and recorded.base else ""
    if fp and fp != base.identity["fingerprint"]:
        raise UsageError(
            f"the adapter in {run.path} was trained on a different base than {base.spec!r} is now",
            hint="put back the base model the run was trained on",
            title="adapter from a different base",
        )


def load_run_model(run_dir: str | os.PathLike, *, device: str | None = None) -> RunModel:
    """The run's base (unquantized) + its adapter (freeze tuning: its trained tensors swapped in), in eval mode,
    frozen."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from localtune.config import load_config
    from localtune.methods import method
    from localtune.model.loading import compute_dtype, pick_device, quiet_progress, resolve_base

    run = require_adapter(run_dir, "load")
    cfg = load_config(run.config)
    base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    check_same_base(run, base)
    dev = device or pick_device(cfg.train.device)
    dtype = compute_dtype(dev, cfg.train.precision)
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(
            base.folder,
            dtype=dtype,
            device_map={"": 0 if dev == "cuda" else "cpu"},
            trust_remote_code=base.trust_remote_code,
        )
        if method(cfg.adapter.method).kind == "freeze":  # the base with the run's trained tensors in place
            from localtune.model.freeze import read_adapter

            params = dict(model.named_parameters())
            tensors = read_adapter(run.adapter)
            if any(k not in params or params[k].shape != t.shape for k, t in tensors.items()):
                raise UsageError(
                    f"the trained tensors in {run.adapter} do not fit {cfg.model.name_or_path!r}",
                    hint="use the base model the run was trained on",
                )
            with torch.no_grad():
                for k, t in tensors.items():
                    params[k].copy_(t)
            model = model.eval()
        else:
            model = PeftModel.from_pretrained(model, run.adapter).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    template = run.chat_template.read_text(encoding="utf-8") if run.chat_template.is_file() else ""
    return RunModel(model, base.tokenizer(), cfg, template, base, dev, str(dtype).removeprefix("torch."))


def row_logits(model, input_ids: list[int], device) -> object:
    """Next-token logits [len(input_ids), vocab] at each of the row's own positions. Prompt-learning
    adapters put their virtual tokens first and return logits for them too: those are cut off."""
    import torch

    ids = torch.tensor([input_ids], device=device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return logits[0, -len(input_ids) :]
