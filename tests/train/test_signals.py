"""Signals that arrive at the awkward moments: while data is prepared, the model loads, an evaluation
runs, a checkpoint is written, or a merge loads and writes. The process delivers the signal to itself at
exactly that moment (LOCALTUNE_FAULT=<point>:sigint|sigterm), then the same checks as for a signal in
the loop: the documented exit code, a resume line, no traceback, every checkpoint complete, no step
lost that was already saved, and the same command finishes the job.
"""

from __future__ import annotations

import json

import pytest
from helpers import chat, train_tiny_run, write_jsonl
from helpers import localtune_process as localtune

from localtune.events import read_events
from localtune.train.checkpoint import CheckpointStore

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(12)]
CODES = {"sigint": 130, "sigterm": 143}


def steps_logged(run):
    return [e.step for e in read_events(run / "events.jsonl") if e.kind == "step"]


@pytest.mark.parametrize(
    "moment,action,saved_step",
    [
        ("train.prepare", "sigint", None),  # data preparation: nothing trained yet
        ("train.load", "sigterm", None),  # loading the base model
        ("train.eval", "sigint", 2),  # the evaluation after step 2: abandoned, step 2 saved
        ("checkpoint.optimizer", "sigterm", 2),  # in the middle of writing the step-2 checkpoint: it completes
    ],
)
def test_a_signal_at_an_awkward_moment_stops_cleanly_and_resume_finishes(
    moment, action, saved_step, tmp_path, tiny_model_dir
):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    run = tmp_path / "run"
    cmd = [
        "train",
        "--model",
        tiny_model_dir("qwen2"),
        "--data",
        data,
        "--out",
        run,
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--eval-every",
        "2",
        "--no-quant",
    ]
    stopped = localtune(*cmd, fault=f"{moment}:{action}")
    assert stopped.returncode == CODES[action], stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    store = CheckpointStore(run / "checkpoints", keep=2, warn=lambda m: None)
    for folder in store.complete():
        store.verify(folder)
    if saved_step is None:
        assert "nothing was trained yet: run the same command again" in stopped.stdout
        assert not store.complete() and not (run / "adapter").exists()
        again = localtune(*cmd)
    else:
        assert "resume with: localtune train --resume --out" in stopped.stdout
        assert store.latest_valid()[1]["step"] == saved_step  # the step trained before the signal is kept
        assert steps_logged(run) == list(range(1, saved_step + 1))  # and nothing ran after it
        again = localtune(*cmd, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert steps_logged(run)[-1] == 4 and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_a_signal_while_a_resume_loads_keeps_the_checkpoint_and_says_how_to_resume(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    run = tmp_path / "run"
    cmd = [
        "train",
        "--model",
        tiny_model_dir("qwen2"),
        "--data",
        data,
        "--out",
        run,
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--no-quant",
    ]
    assert localtune(*cmd, fault="checkpoint.optimizer:sigint").returncode == 130  # stopped with step 2 saved
    stopped = localtune(*cmd, "--resume", fault="train.load:sigint")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "resume with: localtune train --resume --out" in stopped.stdout and "Traceback" not in stopped.stderr
    store = CheckpointStore(run / "checkpoints", keep=2, warn=lambda m: None)
    assert store.latest_valid()[1]["step"] == 2
    assert localtune(*cmd, "--resume").returncode == 0
    assert steps_logged(run) == [1, 2, 3, 4]


@pytest.mark.parametrize("moment,action", [("merge.load", "sigterm"), ("merge.rename", "sigint")])
def test_a_signal_during_a_merge_leaves_nothing_and_the_merge_reruns(moment, action, tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    assert train_tiny_run(tiny_model_dir("llama"), write_jsonl(tmp_path / "d.jsonl", FACTS), run).exit_code == 0
    stopped = localtune("merge", run, fault=f"{moment}:{action}")
    assert stopped.returncode == CODES[action], stopped.stderr[-2000:]
    assert f"interrupted by {action.upper()}" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not (run / "merged").exists() and not list(run.glob(".merged*"))
    again = localtune("merge", run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run / "merged" / "config.json").is_file()
