"""`localtune train` as a user runs it, in a subprocess: signals, kill -9 mid-save, refused resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import chat, write_jsonl

from localtune.events import read_events
from localtune.train.checkpoint import CheckpointStore

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(10)]


def train_cmd(model, data, out, *extra):
    return [
        sys.executable,
        "-m",
        "localtune",
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--lr",
        "5e-3",
        *extra,
    ]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def start_and_wait(cmd, run_dir, steps: int) -> subprocess.Popen:
    """Start `cmd` in the background and return once it has logged `steps` optimizer steps."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while steps_done(run_dir) < steps and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    return proc


def steps_done(run_dir) -> int:
    try:
        return max((e.step for e in read_events(run_dir / "events.jsonl") if e.kind == "step"), default=0)
    except (OSError, ValueError):
        return 0


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_complete_checkpoint_and_resume_finishes(sig, code, tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    out = tmp_path / "run"
    proc = start_and_wait(
        train_cmd(tiny_model_dir("qwen2"), data, out, "--max-steps", "400", "--save-every", "1000"), out, 3
    )
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "resume with: localtune train --resume --out" in stdout and "Traceback" not in stderr
    store = CheckpointStore(out / "checkpoints", keep=2, warn=print)
    folder, manifest = store.latest_valid()
    interrupted_at = manifest["step"]
    assert 3 <= interrupted_at < 400
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    done = run(
        [
            sys.executable,
            "-m",
            "localtune",
            "train",
            "--resume",
            "--out",
            str(out),
            "--max-steps",
            str(interrupted_at + 3),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert "finished: " in done.stdout and (out / "adapter" / "adapter_model.safetensors").is_file()
    steps = [e.step for e in read_events(out / "events.jsonl") if e.kind == "step"]
    assert steps[-3:] == [interrupted_at + 1, interrupted_at + 2, interrupted_at + 3]


def test_kill_9_during_a_save_resumes_from_the_last_complete_checkpoint(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    out = tmp_path / "run"
    env = {**os.environ, "LOCALTUNE_FAULT": "checkpoint.adapter@2:kill"}  # SIGKILL inside the second save
    killed = run(train_cmd(tiny_model_dir("qwen2"), data, out, "--max-steps", "8", "--save-every", "2"), env=env)
    assert killed.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(leftovers) == 2 and leftovers[0].startswith(".step-000004.partial-") and leftovers[1] == "step-000002"
    resumed = run([sys.executable, "-m", "localtune", "train", "--resume", "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert "removed incomplete checkpoint" in resumed.stderr and "resumed from" in resumed.stderr
    assert "step-000002 at step 2" in resumed.stderr
    steps = [e.step for e in read_events(out / "events.jsonl") if e.kind == "step"]
    assert steps == [1, 2, 3, 4, 3, 4, 5, 6, 7, 8]


def test_resume_with_changed_data_is_refused_by_the_cli(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    out = tmp_path / "run"
    env = {**os.environ, "LOCALTUNE_FAULT": "checkpoint.adapter@2:kill"}
    run(train_cmd(tiny_model_dir("qwen2"), data, out, "--max-steps", "6", "--save-every", "2"), env=env)
    write_jsonl(data, FACTS[:-2])
    refused = run([sys.executable, "-m", "localtune", "train", "--resume", "--out", str(out)])
    assert refused.returncode == 2
    assert "error: cannot resume" in refused.stderr and "different training data" in refused.stderr
    assert "--force-resume" in refused.stderr and "Traceback" not in refused.stderr


def test_cli_train_prints_progress_and_config_overrides(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    done = run(train_cmd(tiny_model_dir("qwen2"), data, tmp_path / "run", "--max-steps", "3", "--no-quant"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "config: train.max_steps = 3  (--max-steps)" in out
    assert "model: " in out and "parameters train" in out and "data: 9 training rows, 1 validation rows" in out
    assert "step 3/3" in out and "tok/s" in out and "finished: 3 steps" in out
    missing = run([sys.executable, "-m", "localtune", "train", "--out", str(tmp_path / "x")])
    assert missing.returncode == 2 and "--model and --data are required" in missing.stderr


def test_second_signal_exits_at_once_and_keeps_the_last_checkpoint(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    out = tmp_path / "run"
    proc = start_and_wait(
        train_cmd(tiny_model_dir("qwen2"), data, out, "--max-steps", "400", "--save-every", "2"), out, 5
    )
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    folder, manifest = CheckpointStore(out / "checkpoints", keep=2, warn=print).latest_valid()
    assert manifest["step"] >= 4 and folder.name == f"step-{manifest['step']:06d}"


def test_second_writer_is_refused_naming_the_holder_and_stale_locks_are_taken_over(tmp_path, tiny_model_dir):
    from localtune.runs.lock import LOCK_NAME

    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    out = tmp_path / "run"
    first = start_and_wait(
        train_cmd(tiny_model_dir("qwen2"), data, out, "--max-steps", "400", "--save-every", "1"), out, 2
    )
    second = run([sys.executable, "-m", "localtune", "train", "--resume", "--out", str(out)])
    assert second.returncode == 2 and "is in use: training by process" in second.stderr
    assert str(first.pid) in second.stderr
    export = run([sys.executable, "-m", "localtune", "export", str(out)])
    assert export.returncode == 2 and "is in use" in export.stderr
    first.send_signal(signal.SIGKILL)  # dies holding the lock
    first.communicate(timeout=60)
    assert (out / LOCK_NAME).is_file()
    resumed = run(
        [
            sys.executable,
            "-m",
            "localtune",
            "train",
            "--resume",
            "--out",
            str(out),
            "--max-steps",
            str(steps_done(out) + 2),
        ]
    )
    assert resumed.returncode == 0, resumed.stderr  # the stale lock was taken over
    assert not (out / LOCK_NAME).exists()
