"""The run folder as one typed object: RunDir's layout and "is this a run", RunInfo (run.json) round trips,
typed events read back, and the status a run summary gives: a start that fails at once is "failed" with its
message (the TUI shows it), one still starting is "starting", one that died silently is "crashed"."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import chat, write_jsonl

from localtune.events import Failed, JsonlSink, RunStarted, StepMetrics, Warning
from localtune.runs import RunDir, RunFolderError, RunInfo
from localtune.runs.layout import CRASHED, FAILED, FINISHED, INTERRUPTED, RUNNING, STARTING, BaseInfo, DataInfo
from localtune.runs.lock import RunBusy
from localtune.runs.workspace import list_runs, read_new_events, start_training, summarize


def _reaped() -> int:
    """The pid of a process that has exited and been reaped: what a dead training process looks like."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def step(n: int, total: int, loss: float) -> StepMetrics:
    return StepMetrics(
        step=n,
        total_steps=total,
        epoch=0,
        loss=loss,
        lr=1e-3,
        grad_norm=1.0,
        tokens_per_s=100.0,
        tokens_seen=n * 10,
        peak_memory_bytes=0,
        eta_s=1.0,
    )


# ---- start_training: a start that fails at once --------------------------------------------------------------
def test_a_start_with_a_bad_value_ends_failed_with_the_message(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("Hi?", "Hello.")])
    run = tmp_path / "runs" / "bad-lr"
    proc = start_training(
        ["--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(run), "--lr", "abc"], run
    )
    info = RunDir(run).load_info()
    assert info.status == STARTING and info.pid == proc.pid and info.log_offset == 0  # recorded before it runs
    assert proc.wait(timeout=120) != 0
    summary = summarize(run)
    assert summary.status == FAILED, (summary, RunDir(run).train_log.read_text())
    assert "abc" in summary.message and "--lr" in summary.message
    assert [r.status for r in list_runs(run.parent)] == [FAILED]  # listed although no config.yaml was saved


def test_a_start_missing_an_option_ends_failed_and_a_later_start_has_its_own_message(tmp_path):
    run = tmp_path / "run"
    first = start_training(["--model", str(tmp_path / "m"), "--out", str(run)], run)  # no --data
    first.wait(timeout=120)
    summary = summarize(run)
    assert summary.status == FAILED and "--data" in summary.message, summary
    first_output = RunDir(run).train_log.stat().st_size
    second = start_training(
        ["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--out", str(run), "--lr", "fast"], run
    )
    assert RunDir(run).load_info().log_offset == first_output  # train.log is appended to: this start's part
    second.wait(timeout=120)
    summary = summarize(run)
    assert summary.status == FAILED and "fast" in summary.message and "--data" not in summary.message


def test_start_training_refuses_a_run_that_is_training(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.save_info(RunInfo(status=RUNNING, pid=os.getpid()))
    with pytest.raises(RunBusy, match=f"training by process {os.getpid()}"):
        start_training(["--resume", "--out", str(run)], run.path)
    assert not run.train_log.exists()


# ---- what summarize makes of a process that is gone ------------------------------------------------------------
def started_run(tmp_path, log_before: str, log_after: str, pid: int, status: str = STARTING) -> RunDir:
    """A run folder as start_training leaves it: run.json with the pid and where this start's log begins."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.train_log.write_text(log_before + log_after)
    run.save_info(RunInfo(status=status, pid=pid, log_offset=len(log_before.encode())))
    return run


def test_a_run_still_starting_is_starting(tmp_path):
    run = started_run(tmp_path, "", "", os.getpid())
    assert (summarize(run.path).status, summarize(run.path).message) == (STARTING, "")


def test_a_titled_error_in_the_log_is_the_message(tmp_path):
    err = "error: problems found\nd.jsonl:3: messages: no assistant turn\n    fix: add one\nfix: correct the rows\n"
    run = started_run(tmp_path, "", "config: train.lr = 1e-4 (--lr)\n" + err, _reaped())
    summary = summarize(run.path)
    assert summary.status == FAILED and summary.message == err.rstrip("\n")


def test_a_traceback_gives_its_last_line(tmp_path):
    log = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nRuntimeError: kaboom\n'
    summary = summarize(started_run(tmp_path, "", log, _reaped()).path)
    assert (summary.status, summary.message) == (FAILED, "RuntimeError: kaboom")


def test_a_signal_before_training_is_interrupted(tmp_path):
    log = "interrupted by SIGINT; no incomplete file was left under a final name: run the same command again\n"
    summary = summarize(started_run(tmp_path, "", log, _reaped()).path)
    assert summary.status == INTERRUPTED and summary.message.startswith("interrupted by SIGINT")


def test_a_silent_death_is_crashed_and_an_earlier_starts_error_does_not_count(tmp_path):
    run = started_run(tmp_path, "error: invalid usage\n--lr is bad\n", "step 1/8 loss 2.0\n", _reaped(), RUNNING)
    assert (summarize(run.path).status, summarize(run.path).message) == (CRASHED, "")
    run.save_info(RunInfo(status=RUNNING, pid=_reaped()))  # started from a terminal: no train.log of its own
    assert summarize(run.path).status == CRASHED


# ---- summarize on typed events ---------------------------------------------------------------------------------
def test_summarize_reads_typed_events_and_the_latest_attempts_failure(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text("model:\n  name_or_path: smollm2\ndata:\n  path: data/facts.jsonl\n")
    sink = JsonlSink(run.events)
    for event in (
        RunStarted(str(run), {}),
        step(1, 8, 2.5),
        Failed("error: old failure"),
        RunStarted(str(run), {}),
        step(2, 8, 2.0),
        step(3, 8, float("nan")),
        Warning("loss is nan"),
        Failed("error: diverged", 3),
    ):
        sink(event)
    run.events.open("a").write('{"kind": "from_a_newer_version"}\n{"kind": "step", "step": 4')  # skipped; partial
    run.save_info(RunInfo(status=FAILED, pid=None, error="error: diverged"))
    s = summarize(run.path)
    assert (s.status, s.message, s.model, s.data) == (FAILED, "error: diverged", "smollm2", "data/facts.jsonl")
    assert (s.steps, s.total_steps) == (3, 8) and math.isnan(s.last_loss)  # nan stays visible
    (run.gguf).mkdir()
    (run.gguf / "run-Q8_0.gguf").write_bytes(b"")
    assert summarize(run.path).exported == ["run-Q8_0.gguf"]


def test_read_new_events_gives_typed_events_and_waits_for_a_partial_line(tmp_path):
    path = tmp_path / "events.jsonl"
    assert read_new_events(path, 0) == ([], 0)  # no file yet
    JsonlSink(path)(step(1, 4, 3.0))
    with open(path, "a") as fh:
        fh.write("not json\n" + json.dumps({"kind": "unknown"}) + "\n" + '{"kind": "step", "st')
    events, offset = read_new_events(path, 0)
    assert [type(e) for e in events] == [StepMetrics] and events[0].step == 1
    assert offset == path.read_bytes().rfind(b"\n") + 1
    with open(path, "a") as fh:
        fh.write(
            'ep": 2, "total_steps": 4, "epoch": 0, "loss": "nan", "lr": 0.1, "grad_norm": 1, "tokens_per_s": 1, '
            '"tokens_seen": 2, "peak_memory_bytes": 0, "eta_s": 0}\n'
        )
    events, offset2 = read_new_events(path, offset)
    assert [e.step for e in events] == [2] and math.isnan(events[0].loss) and offset2 == path.stat().st_size


# ---- RunInfo and RunDir --------------------------------------------------------------------------------------
def test_run_info_round_trips_and_stays_strict_json(tmp_path):
    info = RunInfo(
        status=FINISHED,
        started="2025-01-31T12:00:00",
        pid=123,
        log_offset=77,
        base=BaseInfo("smollm2", "llama", "0123456789abcdef"),
        data=DataInfo("fedcba9876543210", 40, 4),
        device="cpu",
        dtype="float32",
        quantized=False,
        micro_batch=2,
        grad_accum=4,
        steps=3,
        tokens_seen=300,
        final_loss=1.5,
        losses=[2.0, float("nan"), 1.5],
        eval_losses=[(2, 1.75)],
        eval_loss=1.75,
        seconds=12.5,
        adapter="/r/adapter",
        extra={"written_by": "a newer version"},
    )
    path = info.save(tmp_path / "run.json")
    raw = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert raw["losses"][1] == "nan" and raw["base"]["model_type"] == "llama" and raw["written_by"] == "a newer version"
    back = RunInfo.load(path)
    assert math.isnan(back.losses[1])
    back.losses[1] = info.losses[1] = 0.0  # nan != nan: compare the rest
    assert back == info


def test_run_info_reads_older_records_and_refuses_unreadable_ones(tmp_path):
    old = tmp_path / "run.json"
    old.write_text(
        json.dumps({"status": "interrupted", "pid": 42, "steps": 5, "base": {"fingerprint": "ab", "future_key": 1}})
    )
    info = RunInfo.load(old)
    assert (info.status, info.pid, info.steps, info.base.fingerprint, info.data) == (INTERRUPTED, 42, 5, "ab", None)
    with pytest.raises(RunFolderError, match="run.json is missing"):
        RunInfo.load(tmp_path / "nowhere" / "run.json")
    old.write_text('{"status": "runn')
    with pytest.raises(RunFolderError, match="cannot be read"):
        RunInfo.load(old)
    assert RunDir(tmp_path).read_info() is None  # listings show what they can instead


def test_is_run(tmp_path):
    assert not RunDir.is_run(tmp_path)  # an empty folder
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert not RunDir.is_run(hf)  # a Hugging Face model folder
    started = RunDir(tmp_path / "started")
    started.path.mkdir()
    started.save_info(RunInfo())
    assert RunDir.is_run(started.path)  # start_training's record, before any config was saved
    configured = RunDir(tmp_path / "configured")
    configured.path.mkdir()
    configured.config.write_text("model: {}\n")
    assert RunDir.is_run(configured.path) and summarize(tmp_path) is None


def test_run_dir_names_every_path(tmp_path):
    run = RunDir(tmp_path / "my-run")
    names = {
        p.relative_to(run.path).as_posix()
        for p in (
            run.config,
            run.run_json,
            run.events,
            run.train_log,
            run.chat_template,
            run.checkpoints,
            run.adapter,
            run.merged,
            run.gguf,
            run.eval,
            run.quick_json,
            run.lock,
            run.card,
            run.modelfile,
        )
    }
    assert names == {
        "config.yaml",
        "run.json",
        "events.jsonl",
        "train.log",
        "chat_template.jinja",
        "checkpoints",
        "adapter",
        "merged",
        "gguf",
        "eval",
        "quick.json",
        ".localtune.lock",
        "gguf/README.md",
        "gguf/Modelfile",
    }
    run.gguf.mkdir(parents=True)
    for name in ("my-run-Q8_0.gguf", "base-Q8_0.gguf", "my-run-adapter-F32.gguf"):
        (run.gguf / name).write_bytes(b"")
    assert [p.name for p in run.tuned_ggufs()] == ["my-run-Q8_0.gguf"]
    assert [p.name for p in run.base_ggufs()] == ["base-Q8_0.gguf"] and os.fspath(run) == str(run.path)


def test_recover_puts_back_a_moved_aside_adapter_and_removes_dead_leftovers(tmp_path):
    run = RunDir(tmp_path / "run")
    dead, alive = _reaped(), os.getppid()
    moved = run.path / f".adapter.old-{dead}"
    moved.mkdir(parents=True)
    (moved / "adapter_config.json").write_text("{}")
    (run.path / f".merged.partial-{dead}").mkdir()
    run.gguf.mkdir()
    (run.gguf / f".run-Q8_0.gguf.partial-{dead}").write_bytes(b"GGUF")
    (run.gguf / f".run-F16.gguf.partial-{alive}").write_bytes(b"GGUF")  # a live process is writing it
    done = run.recover()
    assert run.has_adapter and len(done) == 3
    assert sorted(p.name for p in run.path.iterdir()) == ["adapter", "gguf"]
    assert [p.name for p in run.gguf.iterdir()] == [f".run-F16.gguf.partial-{alive}"]


def test_a_checkpoint_moved_aside_by_an_interrupted_replacement_is_restored(tmp_path):
    from localtune.train.checkpoint import CheckpointStore, Snapshot

    store = CheckpointStore(tmp_path / "ck", keep=2, warn=lambda m: None)
    store.save(Snapshot(2, {}, {}, {}, {}, {"step": 2}, {}), lambda f: (f / "a.bin").write_bytes(b"x"))
    os.rename(tmp_path / "ck" / "step-000002", tmp_path / "ck" / f".step-000002.old-{_reaped()}")  # the crash
    seen = []
    store.warn = seen.append
    store.remove_stale()
    ((folder, manifest),) = [store.latest_valid()]
    assert folder.name == "step-000002" and manifest["step"] == 2 and "restored checkpoint" in seen[0]
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-000002"]
