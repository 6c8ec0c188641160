"""The first screen: every run in the workspace with its status, steps, last loss and exports.

Enter opens a run's dashboard; n starts a new one. A run that failed shows its error under the table
while its row is highlighted (RunSummary.message: what the trainer printed).

Run as:  localtune tui [--workspace runs]
"""

from __future__ import annotations

import shutil
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, Static

from localtune.runs.layout import LIVE
from localtune.runs.workspace import RunSummary, list_runs, summarize
from localtune.tui.modals import Confirm
from localtune.tui.screens.chat import ChatScreen
from localtune.tui.screens.dashboard import DashboardScreen
from localtune.tui.screens.export import ExportScreen
from localtune.tui.screens.new_run import NewRunScreen


def fmt_loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


class RunsScreen(Screen):
    BINDINGS = [
        Binding("n", "new", "New run"),
        Binding("enter,o", "open", "Open"),
        Binding("r", "resume", "Resume"),
        Binding("e", "export", "Export"),
        Binding("c", "chat", "Chat"),
        Binding("d", "delete", "Delete"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self):
        super().__init__()
        self.summaries: dict[str, RunSummary] = {}  # row key (the run's path) -> its summary

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Runs in {self.app.workspace}", id="title")
        yield DataTable(id="runs", cursor_type="row")
        yield Static("", id="message", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("run", "status", "model", "data", "steps", "loss", "exported")
        self.refresh_runs()
        self.set_interval(2.0, self.refresh_runs)

    def on_screen_resume(self) -> None:  # back from a dashboard or the form: show what changed meanwhile
        self.refresh_runs()

    def refresh_runs(self) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        self.summaries = {str(r.path): r for r in list_runs(self.app.workspace)}
        for key, r in self.summaries.items():
            table.add_row(
                r.path.name,
                r.status,
                Path(r.model).name or r.model,
                Path(r.data).name,
                f"{r.steps}/{r.total_steps}" if r.total_steps else "-",
                fmt_loss(r.last_loss),
                str(len(r.exported)) + " gguf" if r.exported else "-",
                key=key,
            )
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))
        self.show_message()

    @on(DataTable.RowHighlighted)
    def show_message(self) -> None:
        """The highlighted run's message (a failed run's error), or nothing."""
        run = self.highlighted()
        summary = self.summaries.get(str(run)) if run else None
        text = f"{run.name} {summary.status}: {summary.message}" if summary and summary.message else ""
        box = self.query_one("#message", Static)
        box.update(text)
        box.display = bool(text)

    def highlighted(self) -> Path | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return Path(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def selected(self) -> Path | None:
        run = self.highlighted()
        if run is None:
            self.notify("No run yet: press n to start one", severity="warning")
        return run

    @on(DataTable.RowSelected)
    def row_selected(self) -> None:  # enter on a row
        self.action_open()

    def action_new(self) -> None:
        self.app.push_screen(NewRunScreen())

    def action_open(self) -> None:
        if (run := self.selected()) is not None:
            self.app.push_screen(DashboardScreen(run))

    def action_resume(self) -> None:
        if (run := self.selected()) is not None:
            self.app.resume_run(run)

    def action_export(self) -> None:
        if (run := self.selected()) is not None:
            self.app.push_screen(ExportScreen(run))

    def action_chat(self) -> None:
        if (run := self.selected()) is not None:
            self.app.push_screen(ChatScreen(run, tools=getattr(self.app, "tools", None)))

    def action_delete(self) -> None:
        run = self.selected()
        if run is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                summary = summarize(run)
                if summary and summary.status in LIVE:
                    self.notify("Stop the run before deleting it", title="Run is training", severity="error")
                    return
                shutil.rmtree(run, ignore_errors=True)
                self.refresh_runs()

        self.app.push_screen(Confirm(f"Delete {run.name} and everything in it?"), answered)
