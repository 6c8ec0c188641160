"""The training recipe chosen for what the user leaves unset: the documented rule, applied and saved by a run."""

from __future__ import annotations

import pytest
import yaml
from helpers import chat, write_jsonl

from localtune.config import load_config
from localtune.train.recipe import choose_epochs, choose_lr, choose_recipe, lora_scale


@pytest.mark.parametrize("rows, epochs", [(64, 4), (38, 7), (3, 8), (300, 2), (1999, 2), (5000, 1), (200, 2)])
def test_epochs_from_the_data_size(rows, epochs):
    got, why = choose_epochs(rows, 8)
    assert got == epochs and f"{rows} training rows" in why
    steps = got * -(-rows // 8)
    assert steps >= 32 or got == 8  # at least 32 optimizer steps, unless capped at 8 epochs


@pytest.mark.parametrize("params, lr", [(135e6, 1e-3), (7e9, 2e-4), (70e9, 1e-4), (1.24e9, 4.75e-4)])
def test_lr_from_the_model_size(params, lr):
    assert choose_lr(int(params), 2.0)[0] == pytest.approx(lr, rel=0.01)


def test_lr_follows_the_lora_scale():
    assert lora_scale(16, 32, False) == 2.0 and lora_scale(16, 32, True) == 8.0
    assert choose_lr(7_000_000_000, 8.0)[0] == pytest.approx(5e-5)  # rsLoRA's 4x scale: a 4x smaller step
    assert choose_lr(135_000_000, 1.0)[0] == pytest.approx(2e-3)  # scale 1 doubles it, within the cap
    assert "x0.25 for LoRA scale 8" in choose_lr(7_000_000_000, 8.0)[1]


def test_only_unset_values_are_chosen():
    def cfg(**over):
        return load_config(None, {k: (v, "--flag") for k, v in over.items()})

    both = choose_recipe(cfg(), rows=64, rows_per_step=8, params=135_000_000)
    assert both.chosen == ("train.epochs", "train.lr") and (both.epochs, both.lr, both.total_steps) == (4, 1e-3, 32)
    lr_set = choose_recipe(cfg(**{"train.lr": 3e-4}), rows=64, rows_per_step=8, params=135_000_000)
    assert lr_set.chosen == ("train.epochs",) and lr_set.lr == 3e-4
    steps_set = choose_recipe(cfg(**{"train.max_steps": 5}), rows=64, rows_per_step=8, params=135_000_000)
    assert steps_set.chosen == ("train.lr",) and steps_set.total_steps == 5
    assert choose_recipe(cfg(**{"train.lr": 3e-4, "train.epochs": 1}), rows=64, rows_per_step=8, params=1) is None


def test_a_run_prints_applies_and_saves_its_recipe(tmp_path, tiny_model_dir, cli):
    """`train` with nothing set: the recipe line, the steps it names, and a config.yaml that keeps it on resume."""
    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"Q{i}?", f"A{i}.") for i in range(12)])
    run = tmp_path / "run"
    result = cli("train", "--model", tiny_model_dir("qwen2"), "--data", data, "--out", run, "--no-quant")
    assert result.exit_code == 0, result.output
    # 12 rows, 1 held out: 11 rows make 2 steps of 8 an epoch; 16 epochs would reach 32 steps, 8 is the cap.
    assert "recipe: 16 optimizer steps (8 epochs) at lr 1.0e-03" in result.output
    assert "set --epochs/--max-steps and --lr to choose yourself" in result.output
    assert "step 16/16" in result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 8 and saved["train"]["lr"] == 1e-3
    again = load_config(run / "config.yaml")  # what --resume loads: the values are now set, nothing is re-chosen
    assert choose_recipe(again, rows=11, rows_per_step=8, params=1) is None
    mine = cli(
        "train",
        "--model",
        tiny_model_dir("qwen2"),
        "--data",
        data,
        "--out",
        tmp_path / "mine",
        "--no-quant",
        "--max-steps",
        "2",
        "--lr",
        "5e-3",
    )
    assert mine.exit_code == 0 and "recipe:" not in mine.output
