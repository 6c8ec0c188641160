"""Data-parallel training on the CPU: `localtune train --gpus 2` starts two gloo ranks through torchrun's
launcher, on a tiny model.

The reference is the single-process run with the same rows per step (micro-batch 1 x 4 accumulation
steps, against 1 x 2 on each of 2 ranks): its losses must come out again, step by step, within float
tolerance (the ranks sum the gradients in another order), and so must the trained adapter. Then the
faults: a SIGINT to the launcher stops both ranks after one step with one checkpoint, and the resumed
run reproduces the uninterrupted losses; a rank killed with SIGKILL ends the run within seconds, named,
with the last checkpoint intact; a different number of ranks refuses to resume. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import chat, write_jsonl
from helpers import localtune_process as localtune

from localtune.events import read_events
from localtune.train.checkpoint import CheckpointStore

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(16)]
STEPS = 6


def train_args(model, data, run, *extra):
    return [
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        run,
        "--max-steps",
        STEPS,
        "--micro-batch",
        "1",
        "--save-every",
        "2",
        "--eval-every",
        "3",
        "--lora-dropout",
        "0",
        "--no-quant",
        "--device",
        "cpu",
        *extra,
    ]


def info(run):
    return json.loads((run / "run.json").read_text())


def steps(run):
    return [e for e in read_events(run / "events.jsonl") if e.kind == "step"]


def adapter(run):
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def two_ranks_with_fault(runs, run, fault: str, rank: int = 1):
    """The 2-rank run of `runs` into `run`, with LOCALTUNE_FAULT=fault on rank `rank` only."""
    args = train_args(runs["model"], runs["data"], run, "--grad-accum", "2", "--gpus", "2")
    env = {**os.environ, "LOCALTUNE_FAULT": fault, "LOCALTUNE_FAULT_RANK": str(rank)}
    return subprocess.run(
        [sys.executable, "-m", "localtune", *map(str, args)], capture_output=True, text=True, env=env, timeout=240
    )


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """The uninterrupted runs: one process with 4 rows per step, and two ranks with 2 rows each."""
    root = tmp_path_factory.mktemp("ddp")
    model, data = tiny_model_dir("llama"), write_jsonl(root / "facts.jsonl", FACTS)
    one = localtune(*train_args(model, data, root / "one", "--grad-accum", "4"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = localtune(*train_args(model, data, root / "two", "--grad-accum", "2", "--gpus", "2"))
    assert two.returncode == 0, two.stderr[-3000:]
    return {"model": model, "data": data, "root": root, "one": root / "one", "two": root / "two", "two_out": two}


def test_two_ranks_train_exactly_what_one_process_trains_with_the_same_rows_per_step(runs):
    one, two = info(runs["one"]), info(runs["two"])
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["micro_batch"] == two["micro_batch"] == 1 and (one["grad_accum"], two["grad_accum"]) == (4, 2)
    assert len(one["losses"]) == len(two["losses"]) == STEPS
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-6)
    assert [e[1] for e in two["eval_losses"]] == pytest.approx([e[1] for e in one["eval_losses"]], rel=1e-5)
    assert two["tokens_seen"] == one["tokens_seen"]  # the same rows, all of them, once each
    a, b = adapter(runs["one"]), adapter(runs["two"])
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-4 * max(1.0, float(a[k].abs().max())), k
    assert any(float(v.abs().max()) > 0 for k, v in b.items() if "lora_B" in k)  # it trained at all


def test_only_rank_0_writes_and_prints(runs):
    run, out = runs["two"], runs["two_out"]
    logged = steps(run)
    assert [e.step for e in logged] == list(range(1, STEPS + 1))  # each step once: rank 1 wrote no events
    assert all(e.world_size == 2 and len(e.rank_tokens_per_s) == 2 for e in logged)
    assert all(e.tokens_per_s == pytest.approx(sum(e.rank_tokens_per_s), rel=1e-3) for e in logged)
    assert out.stdout.count(f"step {STEPS}/{STEPS}") == 1 and "on 2 ranks" in out.stdout
    assert "Traceback" not in out.stderr and "torch.distributed" not in out.stderr
    store = CheckpointStore(run / "checkpoints", keep=2, warn=lambda m: None)
    assert [f.name for f in store.complete()] == ["step-000002", "step-000004"]
    saved = [e for e in read_events(run / "events.jsonl") if e.kind == "checkpoint"]
    assert len(saved) == 2 and len({e.path for e in saved}) == 2
    assert not list(run.glob("**/*.tmp*")) and not list(run.glob(".*"))


def test_a_sigint_to_the_launcher_stops_every_rank_after_the_step_and_resume_reproduces_the_losses(runs):
    run = runs["root"] / "stopped"
    args = train_args(runs["model"], runs["data"], run, "--grad-accum", "2", "--gpus", "2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALTUNE_FAULT")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localtune", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "events.jsonl").is_file() and any(e.step >= 1 for e in steps(run)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # once: a second one quits at once
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    stopped = info(run)
    assert stopped["status"] == "interrupted" and stopped["world_size"] == 2
    at = stopped["steps"]
    assert 1 <= at < STEPS
    assert out.count("resume with: localtune train --resume") == 1 and "--gpus 2" in out
    store = CheckpointStore(run / "checkpoints", keep=2, warn=lambda m: None)
    for folder in store.complete():
        store.verify(folder)
    assert store.latest_valid()[1]["step"] == at  # the step it stopped after is saved
    again = localtune("train", "--resume", "--out", run, "--model", runs["model"], "--data", runs["data"])
    assert again.returncode == 0, again.stderr[-3000:]
    done = info(run)
    assert done["status"] == "finished" and done["world_size"] == 2
    assert done["losses"] == pytest.approx(info(runs["two"])["losses"], rel=1e-6, abs=1e-7)
    a, b = adapter(run), adapter(runs["two"])
    assert all((a[k] - b[k]).abs().max() <= 1e-6 for k in a)


def test_a_killed_rank_ends_the_run_at_once_naming_it_and_the_checkpoint_is_intact(runs, tmp_path):
    run = tmp_path / "killed"
    started = time.monotonic()
    proc = two_ranks_with_fault(runs, run, "train.step@4:kill")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "rank 1 (pid" in proc.stderr and "was killed by SIGKILL" in proc.stderr
    assert "the last complete checkpoint, step 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 120
    store = CheckpointStore(run / "checkpoints", keep=2, warn=lambda m: None)
    assert [f.name for f in store.complete()] == ["step-000002"]
    store.verify(store.complete()[0])
    failed = info(run)
    assert failed["status"] == "failed" and "lost contact with another rank" in failed["error"]
    assert [e.step for e in steps(run)] == [1, 2, 3]  # rank 0 wrote what was done, and nothing after it
    # the same number of ranks resumes it; another number is refused, saying which one
    resume = ["train", "--resume", "--out", run, "--model", runs["model"], "--data", runs["data"]]
    other = localtune(*resume, "--gpus", "1")
    assert other.returncode == 2 and "number of ranks (2, now 1: resume with --gpus 2" in other.stderr
    again = localtune(*resume)
    assert again.returncode == 0, again.stderr[-3000:]
    assert info(run)["losses"] == pytest.approx(info(runs["two"])["losses"], rel=1e-6, abs=1e-7)


def test_a_signal_on_one_rank_alone_stops_both_after_the_same_step(runs, tmp_path):
    run = tmp_path / "one-rank"
    proc = two_ranks_with_fault(runs, run, "train.step@3:sigterm")
    assert proc.returncode == 143, proc.stderr[-3000:]
    stopped = info(run)
    assert stopped["status"] == "interrupted" and stopped["steps"] == 3
    store = CheckpointStore(run / "checkpoints", keep=2, warn=lambda m: None)
    assert store.latest_valid()[1]["step"] == 3


def test_a_non_finite_loss_on_one_rank_is_skipped_by_both(runs, tmp_path):
    """Rank 1's first micro-batch of step 2 diverges: the step's loss, summed over the ranks, is non-finite
    on both, so both skip that step and go on in step; rank 0 never applies rank 1's NaN gradients."""
    run = tmp_path / "nan"
    proc = two_ranks_with_fault(runs, run, "train.loss@3:nan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("step 2: non-finite loss") == 1  # said once, by rank 0
    losses = info(run)["losses"]
    clean = info(runs["two"])["losses"]
    assert losses[0] == pytest.approx(clean[0], rel=1e-6) and not math.isfinite(float(losses[1]))  # step 2 diverged
    assert all(math.isfinite(v) for v in losses[2:])
    assert all(bool(t.isfinite().all()) for t in adapter(run).values())


def test_an_out_of_memory_before_the_exchange_is_agreed_by_both_ranks(runs, tmp_path):
    """Rank 1 runs out of memory in the first of its two micro-batches of step 2: both ranks learn it before the
    gradient exchange and handle it together. With a fixed micro-batch that means stopping with the diagnosis,
    said once by rank 0 and naming rank 1, and no rank going on alone."""
    run = tmp_path / "oom-early"
    proc = two_ranks_with_fault(runs, run, "train.micro@3:oom")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("out of GPU memory on rank 1 at step 2") == 1
    assert "error: a rank failed" not in proc.stderr and "Traceback" not in proc.stderr  # rank 0 said it all
    assert info(run)["status"] == "failed" and [e.step for e in steps(run)] == [1]


def test_an_out_of_memory_in_the_exchanged_micro_batch_ends_the_run_and_that_rank_says_it(runs, tmp_path):
    run = tmp_path / "oom-last"
    proc = two_ranks_with_fault(runs, run, "train.micro@4:oom")  # rank 1's last micro-batch of step 2
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "out of GPU memory on rank 1 at step 2" in proc.stderr and "cannot be undone" in proc.stderr
    assert "rank 1 (pid" in proc.stderr and "exited with code 1" in proc.stderr  # the launcher blames rank 1
    assert "Traceback" not in proc.stderr
    assert info(run)["status"] == "failed" and [e.step for e in steps(run)] == [1]


def test_quick_trains_on_two_ranks_and_ends_in_a_verified_gguf(runs, tmp_path):
    """quick's training phase as 2 ranks (auto micro-batch: the smallest the ranks plan), then export, verify,
    sample and eval in the one process, as without --gpus."""
    out = tmp_path / "quick"
    proc = subprocess.run(
        [sys.executable, "-m", "localtune", "quick", "--model", str(runs["model"]), "--data", str(runs["data"])]
        + ["--out", str(out), "--max-steps", "4", "--gpus", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "starting 2 ranks (gloo on the CPU)" in proc.stdout and proc.stdout.count("step 4/4") == 1
    done = info(out)
    assert done["world_size"] == 2 and done["status"] == "finished" and len(done["losses"]) == 4
    phases = [(e.name, e.status) for e in read_events(out / "events.jsonl") if e.kind == "phase"]
    assert ("export", "done") in phases and ("eval", "done") in phases
    assert list(out.glob("*.gguf")) or list(out.glob("**/*.gguf"))
