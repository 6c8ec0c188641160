"""localtune vs the reference QLoRA stack, side by side: real tokens/s, peak memory, step time, MFU.

The reference is the usual recipe: transformers Trainer + peft + bitsandbytes (NF4 + double quant,
gradient checkpointing, paged_adamw_8bit, SDPA attention). Both stacks train the same model on the
same token rows in the same order with the same rank, targets, sequence length, micro-batch,
accumulation, learning rate and precision (bench/stack_run.py shows each stack's exact setup).

How it measures (performance.md):
- every measured run is a fresh process (bench.stack_run), so peak memory is that run's own
  (GPU: torch.cuda.max_memory_allocated; CPU: peak RSS);
- one warm-up run per stack for each (model, mode) first, then runs alternate localtune, reference,
  localtune, reference (--repeats pairs), so drift on a shared machine hits both alike;
- inside a run the first --warmup-steps optimizer steps are not timed; tokens/s counts real
  (non-padding) tokens only, and the token count of every step is checked to be identical in both stacks;
- on a GPU: MFU (4N + 6*L*d*s FLOPs per token, bench/flops.py, against the card's dense BF16 peak),
  and localtune's memory planner estimate beside the measured peak.

Data: the `demo` cases tokenize the built-in demo set once with localtune's own pipeline
(load_examples + prepare_data); localtune trains on the data spec as a user would (its data
fingerprint is checked against the parent's), the reference gets exactly those rows. The
`synthetic` cases draw random token ids with a realistic length mix (lognormal, mean about 40% of
the sequence length, clipped to it; the first 30% of each row is prompt, label -100).

Presets:
- cpu: a tiny Llama and SmolLM2-135M on the demo data, modes qlora (4-bit NF4 base) and lora (fp32
  base, what `localtune quick` trains on a CPU), plus a tiny-model sweep over --seq-lens for the plot;
- gpu: random-weight Llama-3.2-1B and Llama-3.1-8B shapes (public configs, nothing downloaded) at
  sequence lengths 512, 2048 and 8192, and with --longest the longest sequence each stack trains at
  batch 1 on the card. `--preset gpu --dry-run` checks the arithmetic and runs the whole GPU code path
  on miniature shapes on the CPU.

The GPU preset has not run on a GPU yet; its dry run has (see BENCHMARKS.md).

The package, by stage: cases (the configurations), prepare (the token rows both stacks get), child (one
stack in a fresh process), models, measure, comparison (the schedule of runs), longest (the longest
sequence at batch 1), dry_run, host, chart and report, and cli (the command line).

Run as:  python -m bench.compare_stacks --preset cpu [--models tiny] [--repeats 2] [--threads 1]
         python -m bench.compare_stacks --preset gpu [--no-longest]
         python -m bench.compare_stacks --preset gpu --dry-run
         python -m bench.compare_stacks --report bench/results/compare-....json   # redraw .md and .svg
from the repository root. On a shared machine pass --threads 1: torch's threads otherwise wait on each
other's time slices. Writes bench/results/compare-<preset>-<timestamp>.json, .md and .svg (the plot)
and prints the table.
"""

from __future__ import annotations

from pathlib import Path

# Runs start `python -m bench.stack_run` here, and git describes this tree; both need the root, not the cwd.
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
