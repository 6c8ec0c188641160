"""The training recipe chosen when the user does not choose one: how long to train and how fast.

A run whose `train.epochs` and `train.lr` were left at their defaults used to train one epoch at
2e-4, which on a small dataset of new facts is a handful of optimizer steps: the model picks up the
tone and invents the facts. The rule below picks each value the user did not set (a flag, a config
file or a preset counts as set), and the run prints it with the reason before training starts.

Epochs, from the data's size (optimizer steps of `rows_per_step` rows):
- at least MIN_STEPS (32) optimizer steps in all: small data needs several passes to be learnt;
- at least 2 epochs for datasets under LARGE_DATA_ROWS (2,000) rows, 1 above (one pass is then
  hundreds of steps);
- at most MAX_EPOCHS (8): more passes over a few rows only memorise them.
`train.max_steps`, when set, replaces the epochs.

Learning rate, from the model's size and the adapter's scale:
- 2e-4 x sqrt(7e9 / parameters), kept within 1e-4 .. 1e-3: 2e-4 is the QLoRA recipe for 7B models,
  and smaller models take (and need) larger steps: about 1e-3 for a 135M model, 5e-4 for 1B;
- times 2 / scale, where scale is the LoRA scale (alpha / r, or alpha / sqrt(r) with rsLoRA) and 2
  is the default alpha 32 / r 16: with Adam the change each step makes to a weight grows with
  scale x lr, so a larger scale gets a proportionally smaller lr (kept within 1e-5 .. 2e-3).
The same rule holds for a 4-bit (QLoRA) and a 16-bit base, and for DoRA, LoHa and LoKr. The other
methods learn at the rate their papers use (localtune/methods.py: e.g. 3e-3 for IA3, 3e-2 for prompt
tuning, 2e-5 for freeze tuning's full-precision weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from localtune.methods import method

RECIPE_KEYS = ("train.epochs", "train.lr")  # the knobs this rule chooses when they are left unset
MIN_STEPS = 32
MAX_EPOCHS = 8
LARGE_DATA_ROWS = 2000
REFERENCE_PARAMS = 7e9
REFERENCE_LR = 2e-4
LR_RANGE = (1e-4, 1e-3)
REFERENCE_SCALE = 2.0  # alpha 32 / r 16, the defaults
SCALED_LR_RANGE = (1e-5, 2e-3)


@dataclass(frozen=True)
class Recipe:
    epochs: int
    lr: float
    total_steps: int
    chosen: tuple[str, ...]  # the config keys this rule set ("train.epochs", "train.lr")
    reason: str


def lora_scale(r: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def choose_epochs(rows: int, rows_per_step: int) -> tuple[int, str]:
    steps_per_epoch = max(1, math.ceil(rows / max(1, rows_per_step)))
    floor = 2 if rows < LARGE_DATA_ROWS else 1
    epochs = min(MAX_EPOCHS, max(floor, math.ceil(MIN_STEPS / steps_per_epoch)))
    why = f"{rows} training rows make {steps_per_epoch} step(s) of {rows_per_step} rows an epoch"
    if epochs == MAX_EPOCHS and epochs * steps_per_epoch < MIN_STEPS:
        why += f"; {MAX_EPOCHS} epochs at most (more would only memorise the rows)"
    elif epochs > floor:
        why += f"; {epochs} epochs reach the {MIN_STEPS} steps small data needs"
    else:
        why += f"; {floor} epoch(s) for {'under' if floor == 2 else 'over'} {LARGE_DATA_ROWS:,} rows"
    return epochs, why


def choose_lr(params: int, scale: float) -> tuple[float, str]:
    by_size = min(LR_RANGE[1], max(LR_RANGE[0], REFERENCE_LR * math.sqrt(REFERENCE_PARAMS / max(1, params))))
    lr = min(SCALED_LR_RANGE[1], max(SCALED_LR_RANGE[0], by_size * REFERENCE_SCALE / scale))
    why = f"{by_size:.1e} for a {_params(params)}-parameter model"
    if abs(scale - REFERENCE_SCALE) > 1e-9:
        why += f", x{REFERENCE_SCALE / scale:.2g} for LoRA scale {scale:.3g}"
    return float(f"{lr:.2e}"), why


def choose_recipe(cfg, *, rows: int, rows_per_step: int, params: int) -> Recipe | None:
    """The recipe for the values of cfg.train the user left at their defaults; None when they set all."""
    t, lo = cfg.train, cfg.adapter
    pick_epochs = (
        t.max_steps <= 0
        and cfg.source_of("train.epochs") == "default"
        and cfg.source_of("train.max_steps") == "default"
    )
    pick_lr = cfg.source_of("train.lr") == "default"
    if not (pick_epochs or pick_lr):
        return None
    epochs, lr, reasons, chosen = t.epochs, t.lr, [], []
    if pick_epochs:
        epochs, why = choose_epochs(rows, rows_per_step)
        reasons.append(why)
        chosen.append("train.epochs")
    fixed = method(lo.method).lr
    if pick_lr and fixed:
        lr, why = fixed, f"{fixed:g}, the usual rate for {method(lo.method).title}"
        reasons.append("lr " + why)
        chosen.append("train.lr")
    elif pick_lr:
        lr, why = choose_lr(params, lora_scale(lo.r, lo.alpha, lo.use_rslora))
        reasons.append("lr " + why)
        chosen.append("train.lr")
    steps_per_epoch = max(1, math.ceil(rows / max(1, rows_per_step)))
    total = t.max_steps if t.max_steps > 0 else epochs * steps_per_epoch
    return Recipe(epochs if t.max_steps <= 0 else 0, lr, total, tuple(chosen), "; ".join(reasons))


def _params(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
