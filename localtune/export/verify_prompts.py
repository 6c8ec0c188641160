"""Verify the llama.cpp route of a prompt-tuning, P-tuning or prefix-tuning run against peft itself.

Reference: peft's teacher-forced forward pass of the fp32 base + the run's adapter (`PeftModel.from_pretrained`);
HF `generate` is wrong for these adapters with the KV cache on, so nothing here generates. The route under
test is what chat runs (chat.routes): the portable GGUF with its virtual tokens, the base GGUF with the
vectors as input embeddings, or the base GGUF with the prefix pinned into its KV cache. The check passes when
llama.cpp's logits agree with peft's (top-1 and max |Δlogit| within the file type's tolerance) and stay much
closer to peft's than the base model's are, so a route that lost the adapter cannot pass.
"""

from __future__ import annotations

import os
from pathlib import Path

from localtune.export.verify import HARD_TEXTS, Check

# max |Δlogit| allowed for unquantized files (llama vs peft measures ~5e-6; Gemma's GELU table ~1.5e-3)
FLOAT_TOLERANCE = {"f32": 5e-3, "f16": 0.1, "bf16": 0.3}
TOP1 = {"f32": 0.99, "f16": 0.95, "bf16": 0.95}
SHARE_OF_EFFECT = 0.5  # the route must be at most this far from peft, relative to how far the base is
SAMPLE_MESSAGES = [
    [{"role": "user", "content": "Hello there, how are you today? Tell me about the sea."}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4, of course."},
        {"role": "user", "content": "And 3+3?"},
    ],
]


def sample_ids(tok, template: str | None, limit: int = 64) -> list[list[int]]:
    """Token ids of a few texts as training tokenized them: plain text and chat turns (with BOS where the
    tokenizer adds one)."""
    out = [tok(" ".join(HARD_TEXTS))["input_ids"][:limit]]
    for msgs in SAMPLE_MESSAGES:
        rendered = tok.apply_chat_template(msgs, chat_template=template, tokenize=True, return_dict=True)
        out.append(list(rendered["input_ids"])[:limit])
    return out


def peft_model(base_folder: str | os.PathLike, adapter_dir: str | os.PathLike):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from localtune.model.loading import quiet_progress

    with quiet_progress():
        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def reference_logits(model, ids: list[int]):
    """(peft's logits, the base's logits) for `ids`, one row per token of `ids` (virtual positions dropped)."""
    import torch

    with torch.no_grad():
        tuned = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
        with model.disable_adapter():
            base = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    return tuned[len(tuned) - len(ids) :], base


def check_route(
    spec,
    base_folder: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    *,
    file_type: str,
    chat_template: str | None = None,
    model=None,
) -> Check:
    """Teacher-forced logits of the route `spec` (chat.routes.RouteSpec) vs peft's base + adapter."""
    import numpy as np
    from transformers import AutoTokenizer

    from localtune.chat.routes import open_route

    tok = AutoTokenizer.from_pretrained(base_folder)
    model = model or peft_model(base_folder, adapter_dir)
    route = open_route(spec, n_ctx=512, logits_all=True, f32_kv=True)
    worst, effect, agree, total = 0.0, 0.0, 0, 0
    try:
        for ids in sample_ids(tok, chat_template):
            want, plain = reference_logits(model, ids)
            got = route.logits(ids)[:, : want.shape[1]]  # a portable GGUF's extra columns are its virtual tokens
            worst = max(worst, float(np.abs(got - want).max()))
            effect = max(effect, float(np.abs(plain - want).max()))
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            total += len(ids)
    finally:
        route.close()
    top1 = agree / total
    needed = TOP1.get(file_type, 0.9)
    tol = FLOAT_TOLERANCE.get(file_type)
    passed = top1 >= needed and worst <= SHARE_OF_EFFECT * effect and (tol is None or worst <= tol)
    what = {
        "portable": "virtual tokens",
        "vectors": "input embeddings",
        "prefix": "KV-cache prefix",
        "plain": "the GGUF alone, without the run's vectors or prefix",
    }[route.kind]
    limit = f"<= {tol:g} and " if tol is not None else ""
    return Check(
        f"{route.kind} route vs peft",
        passed,
        f"{what}: max |Δlogit| {worst:.2e} (needs {limit}<= {SHARE_OF_EFFECT:g} x the adapter's effect "
        f"{effect:.2f}), top-1 {top1:.1%} (needs {needed:.0%}) over {total} tokens, teacher-forced",
        worst,
    )


def route_report(spec, base_folder: Path, adapter_dir: Path, *, file_type: str, chat_template: str | None, model=None):
    """A VerifyReport holding the route check, for a file whose other checks do not apply (the portable GGUF)."""
    from localtune.export.verify import VerifyReport

    report = VerifyReport(str(spec.gguf), f"{base_folder} + {adapter_dir}", file_type)
    report.reference = "peft's teacher-forced forward of the fp32 base + the run's adapter"
    report.checks.append(
        check_route(spec, base_folder, adapter_dir, file_type=file_type, chat_template=chat_template, model=model)
    )
    return report
