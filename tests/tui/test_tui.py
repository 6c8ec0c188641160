"""The terminal app, driven headless with Textual's Pilot against recorded and real runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import chat, train_tiny_run, write_jsonl

from localtune.config import load_config
from localtune.events import DataPrepared, Failed, Finished, RunStarted
from localtune.tui.app import LocaltuneApp
from localtune.tui.screens.chat import ChatScreen
from localtune.tui.screens.dashboard import DashboardScreen
from localtune.tui.screens.export import ExportScreen
from localtune.tui.screens.new_run import NewRunScreen
from localtune.tui.screens.runs import RunsScreen

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(12)]


def step_event(step, total, loss):
    return {
        "kind": "step",
        "time": 0,
        "step": step,
        "total_steps": total,
        "epoch": 0,
        "loss": loss,
        "lr": 1e-3,
        "grad_norm": 1.5,
        "tokens_per_s": 1000.0,
        "tokens_seen": step * 100,
        "peak_memory_bytes": 2**30,
        "eta_s": float(total - step),
    }


def recorded_run(root: Path, name: str, status: str, steps: int, total: int, pid=None) -> Path:
    """A run folder as the trainer leaves it, with a fixed (recorded) event stream."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name_or_path: smollm2\ndata:\n  path: data/facts.jsonl\n")
    (run / "run.json").write_text(json.dumps({"status": status, "pid": pid}))
    # paths as the trainer would write them from inside the workspace: the same text in every snapshot
    events = [RunStarted(name, {}, time=0).to_dict(), DataPrepared(10, 1, 1000, 800, 0, 0, "model", time=0).to_dict()]
    events += [step_event(s, total, 5.0 / s) for s in range(1, steps + 1)]
    if status == "finished":
        events.append(Finished(steps, 5.0 / steps, None, f"{name}/adapter", 12.0, time=0).to_dict())
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def drive(app, body, size=(100, 32)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await body(pilot)

    asyncio.run(main())


def test_runs_screen_lists_runs_with_status(tmp_path):
    recorded_run(tmp_path, "alpha", "finished", 5, 5)
    recorded_run(tmp_path, "beta", "interrupted", 2, 8)
    recorded_run(tmp_path, "gamma", "running", 1, 4, pid=999_999)  # no such process: it crashed

    async def body(pilot):
        table = pilot.app.screen.query_one("DataTable")
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert [(r[0], r[1], r[4]) for r in rows] == [
            ("alpha", "finished", "5/5"),
            ("beta", "interrupted", "2/8"),
            ("gamma", "crashed", "1/4"),
        ]
        assert rows[0][5] == "1.0000"

    drive(LocaltuneApp(tmp_path), body)


def test_dashboard_follows_a_growing_event_stream(tmp_path):
    run = recorded_run(tmp_path, "live", "running", 2, 10, pid=os.getpid())

    async def body(pilot):
        await pilot.press("enter")
        await pilot.pause(0.7)
        screen = pilot.app.screen
        assert isinstance(screen, DashboardScreen)
        assert "step 2/10" in str(screen.query_one("#status").render())
        with open(run / "events.jsonl", "a") as fh:  # the trainer appends more steps and an eval
            for s in range(3, 8):
                fh.write(json.dumps(step_event(s, 10, 5.0 / s)) + "\n")
            fh.write(json.dumps({"kind": "eval", "time": 0, "step": 7, "loss": 0.9, "rows": 1}) + "\n")
            fh.write('{"kind": "step", "ste')  # a line still being written is not read yet
        await pilot.pause(1.2)
        assert "step 7/10" in str(screen.query_one("#status").render())
        assert screen.query_one("#loss").data == pytest.approx([5.0 / s for s in range(1, 8)])
        assert screen.query_one("ProgressBar").progress == 7
        assert "eval at step 7: loss 0.9000" in "\n".join(str(line.text) for line in screen.query_one("RichLog").lines)
        assert screen.query_one("#eval").data == [0.9]

    drive(LocaltuneApp(tmp_path), body)


def test_progress_messages_from_a_worker_thread_coalesce(tmp_path, monkeypatch):
    """A burst of eval-progress messages posted from a thread redraws a few times, ending at the last one."""
    import threading

    from localtune.tui.messages import ChatStreamed, EvalProgressed

    assert ChatStreamed("tuned", "a").can_replace(ChatStreamed("tuned", "ab"))
    assert not ChatStreamed("tuned", "a").can_replace(ChatStreamed("base", "a"))
    recorded_run(tmp_path, "alpha", "finished", 2, 2)
    shown = []
    monkeypatch.setattr(DashboardScreen, "on_eval_progressed", lambda self, message: shown.append(message.text))

    async def body(pilot):
        await pilot.press("enter")
        await pilot.pause(0.2)
        screen = pilot.app.screen
        burst = threading.Thread(target=lambda: [screen.post_message(EvalProgressed(f"row {i}")) for i in range(500)])
        burst.start()
        burst.join()
        await pilot.pause(0.3)

    drive(LocaltuneApp(tmp_path), body)
    assert shown and shown[-1] == "row 499" and len(shown) < 500


def test_stop_sends_the_graceful_interrupt(tmp_path):
    flag = tmp_path / "got-sigint"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import signal, time\n"
            f"signal.signal(signal.SIGINT, lambda *a: open({str(flag)!r}, 'w').write('x'))\n"
            "time.sleep(30)",
        ]
    )
    time.sleep(0.5)
    recorded_run(tmp_path, "busy", "running", 3, 10, pid=proc.pid)
    try:

        async def body(pilot):
            await pilot.press("enter")
            await pilot.pause(0.3)
            await pilot.press("s")
            await pilot.pause(0.5)

        drive(LocaltuneApp(tmp_path), body)
        assert flag.read_text() == "x"
    finally:
        proc.kill()
        proc.wait()


def test_resume_from_runs_screen_starts_the_trainer(tmp_path, monkeypatch):
    run = recorded_run(tmp_path, "paused", "interrupted", 2, 8)
    started = []
    monkeypatch.setattr("localtune.tui.app.start_training", lambda args, run_dir: started.append((args, run_dir)))

    async def body(pilot):
        await pilot.press("r")
        await pilot.pause(0.3)
        assert isinstance(pilot.app.screen, DashboardScreen)

    drive(LocaltuneApp(tmp_path), body)
    assert started == [(["--resume", "--out", str(run)], run)]


def test_new_run_checks_data_and_starts(tmp_path, monkeypatch, tiny_model_dir):
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS + [{"messages": []}])
    model = tiny_model_dir("qwen2")
    started = []
    monkeypatch.setattr(
        "localtune.tui.screens.new_run.start_training", lambda args, run_dir: started.append((args, run_dir))
    )
    ws = tmp_path / "runs"

    async def body(pilot):
        await pilot.press("n")
        screen = pilot.app.screen
        assert isinstance(screen, NewRunScreen)
        screen.query_one("#knob-model-name_or_path").value = str(model)
        screen.query_one("#knob-data-path").value = str(data)
        screen.query_one("#name").value = "mine"
        screen.query_one("#knob-data-path").focus()  # ctrl+k checks the data even while typing in a field
        await pilot.press("ctrl+k")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        report = str(screen.query_one("#report").render())
        assert "format: chat" in report and f"{data}:13" in report and "token lengths:" in report
        assert "memory:" in str(screen.query_one("#fit").render())
        await pilot.press("ctrl+s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.3)
        assert isinstance(pilot.app.screen, DashboardScreen)

    drive(LocaltuneApp(ws), body)
    ((args, run_dir),) = started
    config = ws / "mine" / "config.yaml"
    assert run_dir == ws / "mine" and args[args.index("--data") + 1] == str(data)
    assert args[args.index("--config") + 1] == str(config) and args[args.index("--out") + 1] == str(run_dir)
    assert "--lr" not in args and "--epochs" not in args
    cfg = load_config(config)  # what `localtune train --config` reads
    assert cfg.model.name_or_path == str(model) and cfg.data.path == str(data)
    assert (cfg.adapter.r, cfg.adapter.alpha) == (16, 32.0)
    # the auto preset leaves epochs and lr unset: the training recipe chooses them (train/recipe.py)
    assert cfg.source_of("train.lr") == "default" and cfg.source_of("train.epochs") == "default"
    assert cfg.source_of("train.max_steps") == "default"


def test_new_run_preset_and_rank_set_the_saved_config(tmp_path, monkeypatch):
    monkeypatch.setattr("localtune.tui.screens.new_run.start_training", lambda args, run_dir: None)
    ws = tmp_path / "runs"

    async def body(pilot):
        await pilot.press("n")
        screen = pilot.app.screen
        screen.query_one("#preset").value = "quick"
        await pilot.pause(0.2)
        assert screen.query_one("#knob-adapter-r").value == "8"
        assert screen.query_one("#knob-adapter-alpha").value == "16.0"
        assert (
            screen.query_one("#knob-train-lr").value == "0.002" and screen.query_one("#knob-train-epochs").value == "1"
        )
        screen.query_one("#knob-adapter-r").value = "12"  # the alpha follows the rank: twice it
        await pilot.pause(0.2)
        assert screen.query_one("#knob-adapter-alpha").value == "24.0"
        screen.query_one("#method").value = "dora"  # the method's line says what it learns and where it runs
        await pilot.pause(0.2)
        hint = str(screen.query_one("#field-method .hint").render())
        assert "magnitude" in hint and "merged GGUF" in hint
        await pilot.press("ctrl+s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.3)
        assert isinstance(pilot.app.screen, DashboardScreen)

    drive(LocaltuneApp(ws), body)
    cfg = load_config(ws / "run-1" / "config.yaml")
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.train.lr, cfg.train.epochs) == (12, 24.0, 2e-3, 1)
    assert cfg.adapter.method == "dora" and cfg.source_of("train.lr") != "default"


TRAINER_ERROR = (
    "error: cannot read data\n"
    "data/facts.jsonl:3: messages[1].role: unknown role 'bot'\n"
    "    fix: use one of: system, user, assistant"
)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("when", ["before-training", "in-training"])
def test_a_failed_start_shows_failed_with_its_message(tmp_path, when):
    """A start that exits with an error is "failed" with the trainer's message, in the Runs list and the
    dashboard, not a dashboard waiting for a first step forever."""
    run = tmp_path / "bad"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name_or_path: smollm2\ndata:\n  path: data/facts.jsonl\n")
    if when == "before-training":  # the CLI stopped it (a flag, the data): only train.log says why
        (run / "run.json").write_text(json.dumps({"status": "starting", "pid": dead_pid(), "log_offset": 0}))
        (run / "train.log").write_text("config: data.path = 'data/facts.jsonl'  (--data)\n" + TRAINER_ERROR + "\n")
    else:  # the trainer recorded it: run.json and a Failed event
        (run / "run.json").write_text(json.dumps({"status": "failed", "pid": dead_pid(), "error": TRAINER_ERROR}))
        events = [RunStarted(run.name, {}, time=0), Failed(TRAINER_ERROR, time=0)]
        (run / "events.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))

    async def body(pilot):
        table = pilot.app.screen.query_one("DataTable")
        assert table.get_row_at(0)[:2] == ["bad", "failed"]
        message = pilot.app.screen.query_one("#message")
        assert message.display and "unknown role 'bot'" in str(message.render())
        await pilot.press("enter")
        await pilot.pause(0.5)
        screen = pilot.app.screen
        assert isinstance(screen, DashboardScreen) and screen.sub_title == "failed"
        status = str(screen.query_one("#status").render())
        assert status.startswith("failed: error: cannot read data") and "unknown role 'bot'" in status
        assert "waiting for the first step" not in status
        log = "\n".join(str(line.text) for line in screen.query_one("RichLog").lines)
        assert "unknown role 'bot'" in log

    drive(LocaltuneApp(tmp_path), body)


def test_a_real_start_that_the_trainer_refuses_shows_failed(tmp_path):
    """The form passes (the file is there), the trainer finds a bad row: the dashboard says failed and why."""
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS[:3] + [{"messages": [{"role": "bot", "content": "hi"}]}])
    ws = tmp_path / "runs"

    async def body(pilot):
        await pilot.press("n")
        screen = pilot.app.screen
        screen.query_one("#knob-data-path").value = str(data)
        screen.query_one("#name").value = "broken"
        await pilot.press("ctrl+s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        dashboard = pilot.app.screen
        assert isinstance(dashboard, DashboardScreen)
        deadline = time.monotonic() + 120
        while dashboard.sub_title != "failed" and time.monotonic() < deadline:
            await pilot.pause(0.5)
        status = str(dashboard.query_one("#status").render())
        assert dashboard.sub_title == "failed", (ws / "broken" / "train.log").read_text()[-2000:]
        assert status.startswith("failed: error:") and "bot" in status, status
        await pilot.press("escape")
        await pilot.pause(0.3)
        assert pilot.app.screen.query_one("DataTable").get_row_at(0)[:2] == ["broken", "failed"]

    drive(LocaltuneApp(ws), body)


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, tiny_model_dir):
    ws = tmp_path_factory.mktemp("ws")
    train_tiny_run(tiny_model_dir("qwen2"), write_jsonl(ws / "facts.jsonl", FACTS), ws / "runs" / "done", steps=3)
    return ws / "runs" / "done"


def test_export_and_chat_flows(exported_run):
    async def body(pilot):
        await pilot.press("e")
        screen = pilot.app.screen
        assert isinstance(screen, ExportScreen)
        await pilot.press("x")
        await pilot.pause(0.2)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        table = screen.query_one("DataTable")
        results = [table.get_row_at(i)[2] for i in range(table.row_count)]
        assert results and set(results) == {"PASS"}
        assert "ollama create done -f Modelfile" in str(screen.query_one("#ollama").render())
        await pilot.press("escape")
        await pilot.press("c")
        chat_screen = pilot.app.screen
        assert isinstance(chat_screen, ChatScreen)
        await pilot.press("ctrl+o")  # compare mode: base and fine-tuned side by side
        chat_screen.query_one("#prompt").value = "What is item 3?"
        await pilot.press("enter")
        await pilot.pause(0.2)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        tuned = "\n".join(str(line.text) for line in chat_screen.query_one("#tuned").lines)
        base = "\n".join(str(line.text) for line in chat_screen.query_one("#base").lines)
        assert "you: What is item 3?" in tuned and "tuned:" in tuned and "base:" in base

    drive(LocaltuneApp(exported_run.parent), body)
    assert (exported_run / "gguf" / "done-Q8_0.gguf").is_file()


def test_dashboard_evaluates_and_shows_the_latest_report(exported_run):
    from localtune.evaluation.report import latest_report

    if not (exported_run / "gguf").is_dir():
        from localtune.export.bundle import export_run

        export_run(exported_run, verify=False, say=lambda m: None)

    async def body(pilot):
        await pilot.press("enter")
        screen = pilot.app.screen
        assert isinstance(screen, DashboardScreen)
        shown = lambda: str(screen.query_one("#evalreport").render())  # noqa: E731
        before = latest_report(exported_run)
        if before is None:
            assert "eval: none yet" in shown()
        await pilot.press("v")
        await pilot.pause(0.2)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        report = latest_report(exported_run)
        assert report is not None and report != before
        assert f"verdict: {report['verdict'][:30]}" in shown() and "tuned Q8_0: loss" in shown()

    drive(LocaltuneApp(exported_run.parent), body)


def test_real_run_started_from_the_tui_outlives_the_app(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    ws = tmp_path / "runs"
    model = tiny_model_dir("qwen2")

    async def start(pilot):
        await pilot.press("n")
        screen = pilot.app.screen
        screen.query_one("#knob-model-name_or_path").value = str(model)
        screen.query_one("#knob-data-path").value = str(data)
        screen.query_one("#name").value = "real"
        screen.query_one("#knob-train-max_steps").value = "4"
        await pilot.press("ctrl+s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)
        assert isinstance(pilot.app.screen, DashboardScreen)

    drive(LocaltuneApp(ws), start)  # the app closes right after starting the run
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        info = json.loads((ws / "real" / "run.json").read_text()) if (ws / "real" / "run.json").exists() else {}
        if info.get("status") in ("finished", "failed"):
            break
        time.sleep(0.5)
    assert info.get("status") == "finished", (ws / "real" / "train.log").read_text()[-2000:]

    async def reopen(pilot):
        table = pilot.app.screen.query_one("DataTable")
        assert table.get_row_at(0)[:2] == ["real", "finished"] and table.get_row_at(0)[4] == "4/4"

    drive(LocaltuneApp(ws), reopen)


def test_every_screen_fits_80x24(tmp_path, exported_run):
    """Nothing essential is cut off at 80x24: each screen's key widgets are inside the terminal."""

    async def body(pilot):
        for key, screen_type in (
            ("n", NewRunScreen),
            ("enter", DashboardScreen),
            ("e", ExportScreen),
            ("c", ChatScreen),
        ):
            await pilot.press(key)
            await pilot.pause(0.3)
            screen = pilot.app.screen
            assert isinstance(screen, screen_type)
            footer = screen.query_one("Footer")
            assert footer.region.bottom <= 24 and footer.region.width == 80
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert isinstance(pilot.app.screen, RunsScreen)

    drive(LocaltuneApp(exported_run.parent), body, size=(80, 24))


@pytest.fixture
def snapshot_workspace(tmp_path, monkeypatch):
    """Fixed content for snapshots: relative paths, recorded runs, no machine-specific model cache."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    recorded_run(tmp_path / "runs", "alpha", "finished", 6, 6)
    recorded_run(tmp_path / "runs", "beta", "interrupted", 2, 8)
    return Path("runs")


SCREENS = {"runs": [], "new-run": ["n"], "dashboard": ["enter"], "export": ["e"], "chat": ["c"]}


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen_snapshots(screen, size, snapshot_workspace, snap_compare):
    async def settle(pilot):
        for key in SCREENS[screen]:
            await pilot.press(key)
        await pilot.pause(0.6)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.2)

    assert snap_compare(LocaltuneApp(snapshot_workspace), terminal_size=size, run_before=settle)
