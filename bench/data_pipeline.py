"""Throughput of the data pipeline: validation alone (before any model) and render + tokenize.

Run as:  python -m bench.data_pipeline [--rows 20000] [--no-smollm2]
Writes bench/results/data_pipeline.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from localtune.config import DataConfig
from localtune.data.dataset import load_examples, prepare_data


def synthetic_chats(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the model learns from data while people write short and long answers about many topics".split()

    def sentence(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi))) + "."

    rows = []
    for _ in range(n):
        turns = rng.choice([1, 1, 2, 3])
        msgs = []
        for _ in range(turns):
            msgs += [{"role": "user", "content": sentence(5, 40)}, {"role": "assistant", "content": sentence(10, 120)}]
        rows.append({"messages": msgs})
    return rows


def measure(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--no-smollm2", action="store_true", help="skip the real SmolLM2 tokenizer")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from localtune.model.source import DEMO_MODEL, load_tokenizer, resolve_model
    from localtune.model.tiny import cached_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="localtune-bench-"))
    data = tmp / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_chats(args.rows)))
    results = {"rows": args.rows, "file_mb": round(data.stat().st_size / 1e6, 2), "runs": []}

    secs, loaded = measure(lambda: load_examples(str(data)))
    results["runs"].append(
        {
            "stage": "read + validate (no model)",
            "tokenizer": "-",
            "seconds": round(secs, 3),
            "rows_per_s": round(args.rows / secs),
            "tokens_per_s": None,
        }
    )
    tokenizers = {
        "tiny qwen2 (BPE)": AutoTokenizer.from_pretrained(cached_tiny_model("qwen2")),
        "tiny llama (SentencePiece)": AutoTokenizer.from_pretrained(cached_tiny_model("llama")),
    }
    if not args.no_smollm2:
        tokenizers["SmolLM2-135M"] = load_tokenizer(resolve_model(DEMO_MODEL))
    cfg = DataConfig(path=str(data), max_seq_len=2048, val_fraction=0)
    for name, tok in tokenizers.items():
        secs, prepared = measure(lambda tok=tok: prepare_data(cfg, tok, seed=0, loaded=loaded))
        tokens = prepared.train_stats.total_tokens
        results["runs"].append(
            {
                "stage": "render + tokenize + mask",
                "tokenizer": name,
                "seconds": round(secs, 3),
                "rows_per_s": round(args.rows / secs),
                "tokens_per_s": round(tokens / secs),
            }
        )

    out = Path(__file__).parent / "results" / "data_pipeline.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"{args.rows} chat rows, {results['file_mb']} MB")
    print(f"{'stage':<28} {'tokenizer':<28} {'s':>8} {'rows/s':>9} {'tokens/s':>10}")
    for r in results["runs"]:
        tps = f"{r['tokens_per_s']:,}" if r["tokens_per_s"] else "-"
        print(f"{r['stage']:<28} {r['tokenizer']:<28} {r['seconds']:>8} {r['rows_per_s']:>9,} {tps:>10}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
