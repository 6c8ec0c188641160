"""The configurations both stacks are measured on: one Case per (model, mode, data, sequence length), per preset.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench import flops

STACKS = ("localtune", "reference")
GIB = 1024**3


@dataclass(frozen=True)
class Case:
    """One configuration both stacks are measured on."""

    model: str  # tiny, smollm2, llama-3.2-1b, llama-3.1-8b (or mini-* in a dry run)
    mode: str  # qlora: 4-bit NF4 base; lora: 16/32-bit base
    data: str  # demo (the built-in set, tokenized by localtune) or synthetic
    seq_len: int
    micro_batch: int
    grad_accum: int
    steps: int
    warmup_steps: int  # optimizer steps at the start of each run that are not timed
    device: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.model} {self.mode} {self.data} seq {self.seq_len}"

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch * self.grad_accum


def cpu_cases(args) -> list[Case]:
    cases = []
    for model in args.models:
        # tiny steps take milliseconds, so more of them. SmolLM2 runs ~100 tokens/s on 2 cores (5 s a step):
        # 9 timed steps (two passes over the 40 demo rows), since single steps on a shared VM vary by 20%
        steps, warm = (10, 2) if model == "tiny" else (10, 1)
        for mode in args.modes:
            base = Case(model, mode, "demo", 1024, 4, 2, steps, warm, "cpu", "fp32")
            cases.append(base)
            if model == "tiny":
                cases += [replace(base, data="synthetic", seq_len=s, steps=6, warmup_steps=2) for s in args.seq_lens]
    return cases


def gpu_cases(args) -> list[Case]:
    device, precision = ("cpu", "fp32") if args.dry_run else ("cuda", "bf16")
    return [
        Case(model, mode, "synthetic", s, 2, 4, 6, 2, device, precision)
        for model in args.models
        for mode in args.modes
        for s in args.seq_lens
    ]


def override(case: Case, args) -> Case:
    for name in ("steps", "warmup_steps", "micro_batch", "grad_accum"):
        if getattr(args, name) is not None:
            case = replace(case, **{name: getattr(args, name)})
    if case.warmup_steps < 1 or case.steps <= case.warmup_steps:
        raise SystemExit(
            f"{case.label}: need 1 <= warmup steps < steps (a step's time is measured from the "
            f"end of the previous one); got {case.warmup_steps} and {case.steps}"
        )
    return case


def mini_config(name: str) -> dict:
    """A public shape shrunk to 2 layers of width 64 (same vocabulary, GQA and rope), for --dry-run."""
    return {
        **flops.PUBLIC_SHAPES[name],
        "hidden_size": 64,
        "intermediate_size": 224,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    }
