"""Conversion throughput and peak memory: SmolLM2-135M (its dequantized import) to f16 and q4_k_m.

Each conversion runs in a fresh child process so its peak RSS is its own.
Run as:  python bench/export_throughput.py
Writes bench/results/export_throughput.json and prints a table.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time, json
from localtune.converters.hf_to_gguf import convert
from localtune.converters.quantize import quantize
folder, out, kind = sys.argv[1:4]
start = time.monotonic()
if kind == "q4_k_m":
    convert(folder, out + ".f16", out_type="f16")
    rep = quantize(out + ".f16", out, "q4_k_m")
else:
    rep = convert(folder, out, out_type=kind)
print(json.dumps({"seconds": time.monotonic() - start}))
"""


def main() -> None:
    from localtune.model_loading import resolve_base

    base = resolve_base("smollm2")
    source_mb = sum(p.stat().st_size for p in base.folder.glob("*.safetensors")) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("f16", "q4_k_m"):
            out = Path(tmp) / f"m-{kind}.gguf"
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            start = time.monotonic()
            proc = subprocess.run([sys.executable, "-c", CHILD, str(base.folder), str(out), kind],
                                  capture_output=True, text=True, check=True)
            wall = time.monotonic() - start
            secs = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            rows.append({"type": kind, "seconds": round(secs, 2), "wall_seconds": round(wall, 2),
                         "source_mb": round(source_mb, 1), "output_mb": round(out.stat().st_size / 1e6, 1),
                         "source_mb_per_s": round(source_mb / secs, 1),
                         "peak_rss_mb": round(max(peak, before) / 1024, 1)})
    result = {"model": "SmolLM2-135M-Instruct (fp32 import)", "runs": rows}
    path = Path(__file__).parent / "results" / "export_throughput.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"{'type':<8} {'s':>6} {'source MB/s':>12} {'out MB':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['type']:<8} {r['seconds']:>6} {r['source_mb_per_s']:>12} {r['output_mb']:>8} {r['peak_rss_mb']:>12}")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
