"""One run's dashboard: progress, loss and eval-loss sparklines, the event log, and the latest eval report.

It follows the run's events.jsonl (typed events, read where the last poll stopped) and its status
(workspace.summarize), so a run started from here, from the CLI or before the app was opened looks the
same. A run that failed says so with its error instead of waiting for a first step that will not come.

Run as:  localtune tui   (then enter on a run)
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ProgressBar, RichLog, Sparkline, Static

from localtune.errors import LocaltuneError
from localtune.events import describe, rank_speeds
from localtune.runs.layout import CRASHED, FAILED, INTERRUPTED, STARTING, RunDir
from localtune.runs.workspace import read_new_events, stop_training, summarize
from localtune.tui.messages import EvalDone, EvalProgressed, WorkFailed
from localtune.tui.screens import HEAVY_WORK
from localtune.tui.screens.export import ExportScreen
from localtune.units import format_bytes

WAITING = "waiting for the first step ..."
FAILURE_LINES = 4  # of a failure's message under the title; the log below has all of it
STYLES = {"warning": "yellow", "failed": "bold red", "finished": "bold", "interrupted": "bold"}
KEYS = {"finished": "  (e exports)", "interrupted": "  (r resumes it from here)"}  # what to press next


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("s", "stop", "Stop (save)"),
        Binding("S", "stop_now", "Stop now"),
        Binding("r", "resume", "Resume"),
        Binding("e", "export", "Export"),
        Binding("v", "evaluate", "Evaluate"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        self.event_offset = 0
        self.losses: list[float] = []
        self.eval_losses: list[float] = []
        self.evals: list[str] = []
        self.step_line = ""  # the latest step, as the status line shows it
        self.status, self.message = STARTING, ""  # from summarize, polled
        self.failure_logged = False  # whether the log shows the failure already (a Failed event)
        self.shown = WAITING  # what the status line shows, so an unchanged poll does not redraw it

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Run {self.run.name}", id="title")
        yield Static(WAITING, id="status", markup=False)
        yield ProgressBar(total=None, show_eta=True, id="progress")
        yield Label("loss")
        yield Sparkline([], id="loss")
        yield Label("eval loss")
        yield Sparkline([], id="eval")
        yield Static("", id="stats")
        yield Static(eval_summary(self.run_dir), id="evalreport")
        yield RichLog(id="log", max_lines=500, wrap=True, markup=False)  # styled Text: paths may hold [ ]
        yield Footer()

    def on_mount(self) -> None:
        self.poll()
        self.poll_status()
        self.set_interval(0.5, self.poll)
        self.set_interval(1.0, self.poll_status)  # summarize reads the whole run folder: less often

    # ---- following the run ------------------------------------------------------------------------------
    def poll(self) -> None:
        events, self.event_offset = read_new_events(self.run.events, self.event_offset)
        last_step = None
        log = self.query_one(RichLog)
        for e in events:  # many step events per poll coalesce into one redraw
            if e.kind == "step":
                last_step = e
                if math.isfinite(e.loss):  # a nan loss shows in the status line; a sparkline cannot draw it
                    self.losses.append(e.loss)
                continue  # steps are drawn (status line, bar, sparkline), not written to the log
            if e.kind == "eval":
                self.evals.append(f"step {e.step}: {e.loss:.4f}")
                if math.isfinite(e.loss):
                    self.eval_losses.append(e.loss)
                    self.query_one("#eval", Sparkline).data = self.eval_losses[-200:]
            elif e.kind == "failed":
                self.failure_logged = True
            line = describe(e)
            if line:
                log.write(Text(line + KEYS.get(e.kind, ""), style=STYLES.get(e.kind, "")))
        if last_step:
            s = last_step
            self.query_one(ProgressBar).update(total=s.total_steps, progress=s.step)
            self.query_one("#loss", Sparkline).data = self.losses[-200:]
            self.step_line = (
                f"step {s.step}/{s.total_steps}  loss {s.loss:.4f}  lr {s.lr:.2e}  {s.tokens_per_s:,.0f} tok/s"
                f"{rank_speeds(s)}  "
                f"ETA {s.eta_s:.0f}s"
            )
            self.query_one("#stats", Static).update(
                f"memory peak {format_bytes(s.peak_memory_bytes)}  grad norm {s.grad_norm:.2f}  "
                f"eval: {', '.join(self.evals[-3:]) or '-'}"
            )
        self.show_status()

    def poll_status(self) -> None:
        summary = summarize(self.run_dir)
        if summary is None:  # the process has not written its record yet
            return
        self.status, self.message = summary.status, summary.message
        self.sub_title = self.status
        if self.status == FAILED and self.message and not self.failure_logged:
            # failed before training began (a bad flag, the data): no Failed event, only train.log says it
            self.query_one(RichLog).write(Text(f"failed: {self.message}", style=STYLES["failed"]))
            self.failure_logged = True
        self.show_status()

    def show_status(self) -> None:
        """The line under the title: the latest step, or why there will be none (failed, crashed)."""
        if self.status == FAILED:
            lines = (self.message or f"see {self.run.train_log}").splitlines()
            text = "failed: " + "\n".join(lines[:FAILURE_LINES]) + (" ..." if len(lines) > FAILURE_LINES else "")
        elif self.status == CRASHED:
            text = f"crashed: the training process is gone without a message; see {self.run.train_log}"
        elif self.status == INTERRUPTED and self.message and not self.step_line:
            text = f"interrupted: {self.message}"
        else:
            text = self.step_line or WAITING
        if self.status in (FAILED, CRASHED) and self.step_line:
            text += "\n" + self.step_line
        if text != self.shown:
            self.shown = text
            status = self.query_one("#status", Static)
            status.update(text)
            status.set_class(self.status in (FAILED, CRASHED), "failed")

    # ---- actions -----------------------------------------------------------------------------------------
    def action_stop(self) -> None:
        if stop_training(self.run_dir):
            self.notify("Stopping after this step; a checkpoint will be saved", title="Stopping")
        else:
            self.notify("This run is not training", severity="warning")

    def action_stop_now(self) -> None:
        if stop_training(self.run_dir, now=True):
            self.notify("Stopped at once; the last complete checkpoint is kept", title="Stopped")

    def action_resume(self) -> None:
        self.app.resume_run(self.run_dir)

    def action_export(self) -> None:
        self.app.push_screen(ExportScreen(self.run_dir))

    def action_evaluate(self) -> None:
        if not self.run.gguf.is_dir():
            self.notify("Export the run first (e), then evaluate it", severity="warning")
            return
        self.query_one(RichLog).write("evaluating the tuned GGUF against the base and few-shot prompting ...")
        self.run_eval()

    @work(thread=True, exclusive=True, group="eval")
    def run_eval(self) -> None:
        from localtune.evaluation.evaluate import evaluate

        def progress(event) -> None:
            if event.kind == "eval_progress":
                self.post_message(EvalProgressed(f"evaluating: row {event.done}/{event.total}, ETA {event.eta_s:.0f}s"))

        try:
            with HEAVY_WORK:
                report = evaluate(self.run_dir, emit=progress)
        except LocaltuneError as exc:
            self.post_message(WorkFailed(exc.title, exc.render()))
            return
        self.post_message(EvalDone(report.verdict))

    def on_eval_progressed(self, message: EvalProgressed) -> None:
        self.query_one("#evalreport", Static).update(message.text)

    def on_eval_done(self, message: EvalDone) -> None:
        self.query_one("#evalreport", Static).update(eval_summary(self.run_dir))
        self.query_one(RichLog).write(Text(f"eval: {message.verdict}"))

    def on_work_failed(self, message: WorkFailed) -> None:
        self.notify(message.text, title=message.title, severity="error")
        self.query_one("#evalreport", Static).update(eval_summary(self.run_dir))


def eval_summary(run_dir: Path) -> str:
    """The latest `localtune eval` report of a run, in two lines: each system's loss and ROUGE-L, the verdict."""
    from localtune.evaluation.report import latest_report

    report = latest_report(run_dir)
    if report is None:
        return "eval: none yet; v compares the exported GGUF with the base and few-shot prompting"
    num = lambda v, spec: "-" if v is None else format(v, spec)  # JSON keeps NaN as null
    systems = "  ".join(
        f"{s['name']}: loss {num(s['values']['loss'], '.3f')}, ROUGE-L {num(s['values']['rouge_l'], '.2f')}"
        for s in report["systems"]
    )
    return escape(
        f"eval ({Path(report['folder']).name}, {len(report['rows'])} rows): {systems}\nverdict: {report['verdict']}"
    )
