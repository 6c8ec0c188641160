"""The merged model of a freeze-tuning run: the ORIGINAL checkpoint with the trained tensors swapped in.

Never the 4-bit weights training ran on: the base is reloaded in the dtype its files hold (so every tensor
that did not train is saved bit-for-bit as it was), and the run's trained tensors (model/freeze.py) replace
their namesakes, cast to that dtype. The check compares its logits with an fp32 copy of the base carrying the
trained tensors in fp32: the model the run describes, without the 4-bit rounding the rest of the base had
while training (that rounding is the point of exporting from the original weights).
"""

from __future__ import annotations

from pathlib import Path

from localtune.errors import LocaltuneError


class FreezeMergeError(LocaltuneError):
    title = "merge failed"


def swap_in(model, tensors: dict) -> None:
    """Copy the trained tensors into `model`'s parameters of the same name, in the model's dtype."""
    import torch

    params = dict(model.named_parameters())
    unknown = [k for k in tensors if k not in params]
    bad = [k for k, t in tensors.items() if k in params and tuple(params[k].shape) != tuple(t.shape)]
    if unknown or bad:
        raise FreezeMergeError(
            f"the run's trained tensors do not fit the base (e.g. {(unknown or bad)[0]})",
            hint="merge with the base model the run was trained on",
        )
    with torch.no_grad():
        for k, t in tensors.items():
            params[k].copy_(t.to(params[k].dtype))


def freeze_merged(folder: Path, adapter: Path, ids: list, *, device: str, trust_remote_code: bool = False):
    """(merged model in the checkpoint's dtype, max |Δlogit| against fp32 base + trained tensors, dtype)."""
    import torch
    from transformers import AutoModelForCausalLM

    from localtune.model.freeze import read_adapter
    from localtune.model.loading import quiet_progress

    tensors = read_adapter(adapter)
    where = {"": 0 if device == "cuda" else "cpu"}
    with quiet_progress():
        reference = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, device_map=where, trust_remote_code=trust_remote_code
        ).eval()
    swap_in(reference, tensors)
    with torch.no_grad():
        expected = [reference(x.to(reference.device)).logits.float() for x in ids]
    del reference
    with quiet_progress():
        merged = AutoModelForCausalLM.from_pretrained(
            folder, dtype="auto", device_map=where, trust_remote_code=trust_remote_code
        ).eval()
    swap_in(merged, tensors)
    with torch.no_grad():
        got = [merged(x.to(merged.device)).logits.float() for x in ids]
    delta = max(float((a - b.to(a.device)).abs().max()) for a, b in zip(got, expected, strict=True))
    return merged, delta, merged.dtype
