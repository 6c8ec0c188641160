"""Calibrate the memory planner against torch.cuda.max_memory_allocated on a CUDA GPU.

For each model shape (random weights, built from the published configuration; nothing downloaded)
and each (micro-batch, sequence length), it runs one real QLoRA optimizer step through localtune's
own loader and loop pieces, and compares the measured allocator peak with the planner's estimate.
Goal: every estimate within 15% of the measured peak.

Run as:  python -m bench.planner_calibration [--models qwen2.5-0.5b,llama-3.2-1b] [--seq 512,2048]
Needs a CUDA GPU. Writes bench/results/planner_calibration.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

# Published shapes (config.json values of the public checkpoints).
SHAPES = {
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-1b": (
        "LlamaConfig",
        dict(
            hidden_size=2048,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=8192,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-3b": (
        "LlamaConfig",
        dict(
            hidden_size=3072,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            intermediate_size=8192,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.1-8b": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
        ),
    ),
}


def build_random_model(name: str, folder: Path) -> Path:
    import torch
    import transformers

    cls, kw = SHAPES[name]
    config = getattr(transformers, cls)(**kw)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def measure(folder: Path, micro_batch: int, seq_len: int, rank: int) -> int:
    import torch

    from localtune.config import load_config
    from localtune.data.tokenize import TokenizedRow
    from localtune.model.loading import Base, load_for_training
    from localtune.train.loop import collate

    cfg = load_config(None, {"adapter.r": (rank, "bench")})
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    lm = load_for_training(cfg, Base(str(folder), folder, "llama", {}))
    model = lm.model
    import bitsandbytes as bnb

    opt = bnb.optim.PagedAdamW8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    rows = [
        TokenizedRow("bench", ids, ids, seq_len) for ids in torch.randint(0, vocab, (micro_batch, seq_len)).tolist()
    ]
    out = model(**collate(rows, 0, "cuda"))
    out.loss.backward()
    opt.step()
    peak = torch.cuda.max_memory_allocated()
    del model, opt, out, lm
    torch.cuda.empty_cache()
    return peak


def main() -> None:
    import torch
    import transformers

    from localtune.planner import GIB, Shape, estimate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--seq", default="512,2048")
    ap.add_argument("--micro-batch", default="1,4")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("planner calibration needs a CUDA GPU")
    results = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = build_random_model(name, Path(tmp))
            cls, kw = SHAPES[name]
            shape = Shape.from_config(getattr(transformers, cls)(**kw))
            for seq in map(int, args.seq.split(",")):
                for mb in map(int, args.micro_batch.split(",")):
                    est = estimate(shape, micro_batch=mb, seq_len=seq, rank=args.rank).total
                    try:
                        peak = measure(folder, mb, seq, args.rank)
                    except torch.OutOfMemoryError:
                        peak = None
                    results.append(
                        {
                            "model": name,
                            "micro_batch": mb,
                            "seq_len": seq,
                            "estimate_gib": est / GIB,
                            "measured_gib": peak / GIB if peak else None,
                            "error_pct": 100 * (est - peak) / peak if peak else None,
                        }
                    )
                    r = results[-1]
                    print(
                        f"{name:<14} mb {mb:>2} seq {seq:>5}: estimate {r['estimate_gib']:.2f} GiB, measured "
                        + (f"{r['measured_gib']:.2f} GiB ({r['error_pct']:+.1f}%)" if peak else "OOM"),
                        flush=True,
                    )
    out = Path(__file__).parent / "results" / "planner_calibration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
