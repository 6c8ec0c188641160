"""Command-line options generated from the config fields: one knob, one declaration.

Each `--flag` of `train`, `quick`, `plan` and `data inspect` is a field of localtune/config.py: its
name, type, choices and help text come from there (`opt()`), and what the user passes comes back as
the `{key: (value, flag)}` overrides `load_config` takes, so a flag's value is checked by the same
validation as a YAML file's, and `localtune config` names the flag as its source.

Run as:  localtune train --help      # every knob of model, data, adapter and train
"""

from __future__ import annotations

from typing import Any

import click

from localtune.config import Knob, knob, knobs
from localtune.train.recipe import RECIPE_KEYS


def dest(key: str) -> str:
    """The Python parameter name click passes a knob's value as ("train.lr" -> "train__lr")."""
    return key.replace(".", "__")


def _param_type(k: Knob):
    if k.choices:
        return click.Choice(k.choices)
    if k.auto is not None:
        return str  # "auto" or a number: config converts and checks it
    return {int: int, float: float}.get(k.type, str)


def option(k: Knob, *, required: bool = False):
    """The click option of one knob."""
    names = [f"{k.flag}/--no-{k.flag[2:]}" if k.is_bool else k.flag] + ([k.short] if k.short else [])
    shown = not (k.is_bool or k.default in ("", None, []) or k.key in RECIPE_KEYS)  # the recipe's: no fixed default
    help_text = k.doc + (f" [default: {k.text(k.default)}]" if shown else "")
    if k.auto is not None:
        help_text += " 'auto' is allowed."
    return click.option(
        *names, dest(k.key), type=None if k.is_bool else _param_type(k), default=None, required=required, help=help_text
    )


def knob_options(*keys: str, required: tuple[str, ...] = ()):
    """Decorate a command with the options of these config keys (in this order in --help)."""

    def decorate(fn):
        for key in reversed(keys):
            fn = option(knob(key), required=key in required)(fn)
        return fn

    return decorate


def overrides(values: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """The knob values click passed (a command's **kwargs) as load_config overrides, each with its flag.
    Values not given are None and keep the file's or the default value."""
    out: dict[str, tuple[Any, str]] = {}
    for name, value in values.items():
        if "__" not in name:
            continue
        key = name.replace("__", ".")
        k = knob(key)
        flag = k.flag if not k.is_bool or value in (None, True) else f"--no-{k.flag[2:]}"
        out[key] = (value, flag)
    return out


# The knobs each command offers. `train` offers every knob of the sections it uses.
TRAIN_KNOBS = tuple(k.key for k in knobs() if k.key.split(".")[0] in ("model", "data", "adapter", "train"))
QUICK_KNOBS = (
    "model.name_or_path",
    "data.path",
    "adapter.method",
    "train.max_steps",
    "train.epochs",
    "train.lr",
    "data.max_seq_len",
    "model.trust_remote_code",
    "train.gpus",
)
PLAN_KNOBS = (
    "model.name_or_path",
    "data.path",
    "data.max_seq_len",
    "adapter.method",
    "adapter.r",
    "adapter.virtual_tokens",
    "train.load_in_4bit",
)
INSPECT_KNOBS = (
    "model.name_or_path",
    "adapter.method",
    "adapter.virtual_tokens",
    "data.format",
    "data.max_seq_len",
    "data.train_on_prompt",
    "data.reasoning",
    "data.skip_invalid",
)
