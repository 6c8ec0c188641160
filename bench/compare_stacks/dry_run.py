"""What `--preset gpu --dry-run` checks without a GPU: the arithmetic on the real shapes, the search on a
simulated card.

Run as:  (imported by `python -m bench.compare_stacks --preset gpu --dry-run`)
"""

from __future__ import annotations

import statistics

from bench import flops

from .cases import GIB
from .longest import longest_search, planner_longest
from .prepare import synthetic_rows


def dry_run_checks(args) -> list[str]:
    """The arithmetic of the GPU preset on the real shapes, and the search on a simulated card."""
    from localtune.planner import Shape, estimate

    lines = flops.check_public_shapes()
    for name in flops.PUBLIC_SHAPES:
        shape = Shape.from_config(flops.llama_config(name))
        for s in (512, 2048, 8192):
            rows = synthetic_rows(6 * 8, s, 128256, args.seed + s)  # as gpu_cases draws them
            lengths = [len(ids) for ids, _ in rows]
            est = estimate(shape, micro_batch=2, seq_len=max(lengths), rank=args.rank)
            mfu_at_1k = 1000 * flops.model_flops(shape, lengths) / sum(lengths) / 989e12
            lines.append(
                f"{name} seq {s}: rows mean {statistics.fmean(lengths):.0f} (max {max(lengths)}), effective "
                f"s {sum(n * n for n in lengths) / sum(lengths):.0f}, planner {est.total / GIB:.1f} GiB at "
                f"micro-batch 2; 1,000 tokens/s on an H100 SXM would be {100 * mfu_at_1k:.2f}% MFU"
            )
        for gib in (24, 80):
            lines.append(
                f"{name}: planner's longest sequence at batch 1 on {gib} GiB: "
                f"{planner_longest(shape, gib * GIB, rank=args.rank, cap=131072, resolution=1024):,}"
            )
    # the search against a simulated card: must find the same length as a brute-force scan
    shape = Shape.from_config(flops.llama_config("llama-3.1-8b"))
    for gib in (16, 24, 40, 80):

        def fits(s, budget=gib * GIB):
            return estimate(shape, micro_batch=1, seq_len=s, rank=args.rank).total <= budget

        found = longest_search(fits, start=4096, cap=131072, resolution=1024)["longest"]
        brute = max((s for s in range(1024, 131072 + 1, 1024) if fits(s)), default=None)
        assert found == brute, f"search found {found}, a scan {brute} ({gib} GiB)"
        lines.append(
            f"search on a simulated {gib} GiB card: {found:,} (brute force {brute:,}), "
            f"{len(longest_search(fits, start=4096, cap=131072, resolution=1024)['tried'])} trials"
        )
    for peak_name in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA GeForce RTX 4090", "Tesla T4"):
        lines.append(f"peak for {peak_name!r}: {flops.gpu_peak_flops(peak_name)}")
    return lines
