"""Export a run to GGUF: pick the types, watch the export, read each file's verification.

The export is the core's `export_run` (as `localtune export RUN_DIR` runs it) in a thread worker that
posts its narration and result as messages.

Run as:  localtune tui   (then e on a run)
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Label, RichLog, SelectionList, Static

from localtune.converters.quants import expected_bytes
from localtune.errors import LocaltuneError
from localtune.tui.messages import ExportDone, ExportSaid, WorkFailed

# The types the list offers (`localtune export -q` takes any of converters.quants.QUANT_TYPES); q8_0 is
# picked at first: the closest to the trained weights, and quick to write and verify.
OFFERED = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "f16")
PICKED = "q8_0"


class ExportScreen(Screen):
    BINDINGS = [Binding("x", "export", "Export"), Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Export {self.run_dir.name} to GGUF (space toggles, x exports)", id="title")
        yield SelectionList[str](*[(self.label(q), q, q == PICKED) for q in OFFERED], id="quants")
        yield Button("Export (x)", id="go", variant="primary")
        yield RichLog(id="log", max_lines=400, wrap=True)
        yield DataTable(id="verify")
        yield Static("", id="ollama")
        yield Footer()

    def label(self, quant: str) -> str:
        """The type with the file size it will have, when the run has a merged model to count."""
        params = self.app.param_count(self.run_dir)
        return quant + (f" ~{expected_bytes(params, quant) / 1e6:,.0f} MB" if params else "")

    @on(Button.Pressed, "#go")
    def action_export(self) -> None:
        quants = list(self.query_one(SelectionList).selected)
        if not quants:
            self.notify("Select at least one type", severity="warning")
            return
        self.query_one(RichLog).write(f"exporting {', '.join(quants)} ...")
        self.run_export(quants)

    @work(thread=True, exclusive=True, group="export")
    def run_export(self, quants: list[str]) -> None:
        from localtune.export.bundle import export_run

        try:
            bundle = export_run(self.run_dir, quants, say=lambda line: self.post_message(ExportSaid(line)))
        except LocaltuneError as exc:
            self.post_message(WorkFailed(exc.title, exc.render()))
            return
        self.post_message(ExportDone(bundle))

    def on_export_said(self, message: ExportSaid) -> None:
        self.query_one(RichLog).write(message.text)

    def on_work_failed(self, message: WorkFailed) -> None:
        self.notify(message.text, title=message.title, severity="error")

    def on_export_done(self, message: ExportDone) -> None:
        bundle = message.bundle
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("file", "check", "result", "detail")
        for f in bundle.tuned:
            for c in f.verify.checks if f.verify else []:
                table.add_row(f.path.name, c.name, "PASS" if c.passed else "FAIL", c.detail)
        self.query_one("#ollama", Static).update(
            f"Ollama: cd {bundle.gguf_dir} && ollama create {self.run_dir.name.lower()} -f Modelfile"
        )
        self.notify("Export finished", title="Done")
