"""The localtune terminal app: runs, new run, training dashboard, export and chat, over SSH.

A face on the core: it starts `localtune train` as its own process (which outlives the app and the
SSH session) and follows the run's `events.jsonl`; export and chat run the same core functions as
the CLI in thread workers, which post messages (messages.py) to their screen. Keyboard first; the
footer lists the keys. One module per screen (screens/), the dialogs in modals.py, the styles in app.tcss.

Run as:  localtune tui [--workspace runs]
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from localtune.errors import LocaltuneError
from localtune.runs.layout import DONE, LIVE, RunDir
from localtune.runs.workspace import start_training, summarize
from localtune.tui.screens.dashboard import DashboardScreen
from localtune.tui.screens.runs import RunsScreen


class LocaltuneApp(App):
    TITLE = "localtune"
    CSS_PATH = "app.tcss"
    BINDINGS = [Binding("ctrl+t", "toggle_theme", "Theme"), Binding("ctrl+q", "quit", "Quit", show=False)]

    def __init__(self, workspace: str | Path = "runs", tools: list[dict] | None = None):
        super().__init__()
        self.workspace = Path(workspace)
        self.tools = tools  # what the chat screen offers the model (localtune tui --tools FILE)

    def on_mount(self) -> None:
        self.push_screen(RunsScreen())

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def known_models(self) -> list[str]:
        """The demo model, models in the local Hugging Face cache, and folders/.gguf files in the workspace."""
        from localtune.model.source import DEMO_MODEL

        found = [DEMO_MODEL]
        hub = Path.home() / ".cache" / "huggingface" / "hub"
        if hub.is_dir():
            found += sorted(p.name.removeprefix("models--").replace("--", "/") for p in hub.glob("models--*"))
        for root in (self.workspace, Path.cwd()):
            if root.is_dir():
                found += sorted(
                    str(p.parent) for p in root.glob("*/config.json") if (p.parent / "tokenizer.json").exists()
                )
                found += sorted(str(p) for p in root.glob("*.gguf"))
        return list(dict.fromkeys(found))

    def param_count(self, run_dir: Path) -> int:
        """The weights of a run's merged model (0 before it is merged), for the export's size estimates."""
        import json

        try:
            cfg = json.loads((RunDir(run_dir).merged / "config.json").read_text())
        except (OSError, ValueError):
            return 0
        from types import SimpleNamespace

        from localtune.planner import Shape

        shape = Shape.from_config(SimpleNamespace(**cfg))  # the planner reads config attributes
        return shape.linear_params() + shape.embedding_params()

    def resume_run(self, run_dir: Path) -> None:
        summary = summarize(run_dir)
        if summary is None:
            return
        if summary.status in LIVE:
            self.notify("This run is already training", severity="warning")
            return
        if summary.status in DONE:
            self.notify("This run has finished; export or chat with it", severity="information")
            return
        try:
            start_training(["--resume", "--out", str(run_dir)], run_dir)
        except LocaltuneError as exc:  # another process took the run meanwhile
            self.notify(exc.render(), title=exc.title, severity="error")
            return
        self.notify("Resuming from the last checkpoint", title="Resumed")
        if not isinstance(self.screen, DashboardScreen):
            self.push_screen(DashboardScreen(run_dir))
