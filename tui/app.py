"""The localtune terminal app: runs, new run, training dashboard, export and chat, over SSH.

A face on the core: it starts `localtune train` as its own process (which outlives the app and the
SSH session) and follows the run's `events.jsonl`; export and chat run the same core functions as
the CLI in worker threads. Keyboard first; the footer lists the keys.

Run as:  localtune tui [--workspace runs]
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (Button, DataTable, DirectoryTree, Footer, Header, Input, Label, ProgressBar, RichLog,
                             Select, SelectionList, Sparkline, Static)

from localtune.errors import LocaltuneError
from localtune.runs.workspace import list_runs, read_events_tail, start_training, stop_training, summarize

PRESETS = {  # name -> (rank, learning rate, epochs); None: the training recipe chooses it (recipe.py)
    "auto": (16, None, None),
    "quick": (8, 2e-3, 1),
    "balanced": (16, 2e-4, 2),
    "quality": (32, 1e-4, 3),
}
# transformers' lazy imports are not thread-safe: background workers that load it take turns.
HEAVY_WORK = threading.Lock()
QUANT_BYTES_PER_PARAM = {"q8_0": 1.07, "q6_k": 0.82, "q5_k_m": 0.71, "q4_k_m": 0.6, "f16": 2.0}


def _fmt_loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


class Confirm(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question)
            with Horizontal():
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class PickFile(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Pick a data file or folder (enter selects a file, escape cancels)")
            yield DirectoryTree(self.root, id="tree")

    @on(DirectoryTree.FileSelected)
    def chosen(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(str(event.path))


class RunsScreen(Screen):
    BINDINGS = [Binding("n", "new", "New run"), Binding("enter,o", "open", "Open"), Binding("r", "resume", "Resume"),
                Binding("e", "export", "Export"), Binding("c", "chat", "Chat"), Binding("d", "delete", "Delete"),
                Binding("q", "app.quit", "Quit")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Runs in {self.app.workspace}", id="title")
        yield DataTable(id="runs", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("run", "status", "model", "data", "steps", "loss", "exported")
        self.refresh_runs()
        self.set_interval(2.0, self.refresh_runs)

    def refresh_runs(self) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for r in list_runs(self.app.workspace):
            table.add_row(r.path.name, r.status, Path(r.model).name or r.model, Path(r.data).name,
                          f"{r.steps}/{r.total_steps}" if r.total_steps else "-", _fmt_loss(r.last_loss),
                          str(len(r.exported)) + " gguf" if r.exported else "-", key=str(r.path))
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))

    def selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            self.notify("No run yet: press n to start one", severity="warning")
            return None
        return Path(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

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
            self.app.push_screen(ChatScreen(run))

    def action_delete(self) -> None:
        run = self.selected()
        if run is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                summary = summarize(run)
                if summary and summary.status in ("starting", "running"):
                    self.notify("Stop the run before deleting it", title="Run is training", severity="error")
                    return
                shutil.rmtree(run, ignore_errors=True)
                self.refresh_runs()

        self.app.push_screen(Confirm(f"Delete {run.name} and everything in it?"), answered)


class NewRunScreen(Screen):
    BINDINGS = [Binding("escape", "app.pop_screen", "Back"), Binding("ctrl+s", "start", "Start"),
                Binding("ctrl+b", "browse", "Browse data"), Binding("ctrl+k", "check", "Check data")]

    def compose(self) -> ComposeResult:
        from localtune.model.source import DEMO_MODEL

        yield Header()
        with VerticalScroll():
            yield Label("Model (hub id, folder, .gguf, or smollm2 for the built-in demo model)")
            yield Select([(m, m) for m in self.app.known_models()], value=DEMO_MODEL, id="model-pick",
                         allow_blank=False)
            yield Input(DEMO_MODEL, id="model")
            yield Label("Training data (file or folder, or demo; ctrl+b to browse)")
            yield Input("demo", id="data")
            yield Label("Run name")
            yield Input("run-1", id="name")
            yield Label("Preset")
            yield Select([(k, k) for k in PRESETS], value="auto", id="preset", allow_blank=False)
            with Horizontal(id="knobs"):
                yield Input("16", id="rank", placeholder="rank")
                yield Input("", id="lr", placeholder="lr: auto")
                yield Input("", id="epochs", placeholder="epochs: auto")
                yield Input("", id="steps", placeholder="max steps")
                yield Input("1024", id="seq", placeholder="max seq len")
            yield Static("", id="fit")
            yield Static("ctrl+k checks the data", id="report")
            with Horizontal():
                yield Button("Check data (ctrl+k)", id="check")
                yield Button("Start (ctrl+s)", id="start", variant="primary")
        yield Footer()

    def on_mount(self) -> None:
        self.update_fit()

    @on(Select.Changed, "#model-pick")
    def model_picked(self, event: Select.Changed) -> None:
        self.query_one("#model", Input).value = str(event.value)

    @on(Select.Changed, "#preset")
    def preset(self, event: Select.Changed) -> None:
        rank, lr, epochs = PRESETS[str(event.value)]
        self.query_one("#rank", Input).value = str(rank)
        self.query_one("#lr", Input).value = "" if lr is None else str(lr)
        self.query_one("#epochs", Input).value = "" if epochs is None else str(epochs)

    @on(Input.Changed, "#model, #rank, #seq")
    def knob_changed(self) -> None:
        self.update_fit()

    @work(thread=True, exclusive=True, group="fit")
    def update_fit(self) -> None:
        with HEAVY_WORK:
                text = fit_text(self.query_one("#model", Input).value, self.query_one("#rank", Input).value,
                            self.query_one("#seq", Input).value)
        self.app.call_from_thread(self.query_one("#fit", Static).update, text)

    def action_browse(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self.query_one("#data", Input).value = path
                self.action_check()

        self.app.push_screen(PickFile(Path.cwd()), chosen)

    @on(Button.Pressed, "#check")
    def action_check(self) -> None:
        self.query_one("#report", Static).update("checking ...")
        self.check_data(self.query_one("#data", Input).value, self.query_one("#model", Input).value,
                        self.query_one("#seq", Input).value)

    @work(thread=True, exclusive=True, group="check")
    def check_data(self, data: str, model: str, seq: str) -> None:
        with HEAVY_WORK:
            text = data_report(data, model, seq)
        self.app.call_from_thread(self.query_one("#report", Static).update, text)

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        v = {k: self.query_one(f"#{k}", Input).value.strip() for k in ("model", "data", "name", "rank", "lr",
                                                                        "epochs", "steps", "seq")}
        run_dir = self.app.workspace / (v["name"] or "run")
        if run_dir.exists() and any(run_dir.iterdir()):
            self.notify(f"{run_dir} already exists: choose another name", title="Run name in use", severity="error")
            return
        args = ["--model", v["model"], "--data", v["data"], "--out", str(run_dir), "--max-seq-len", v["seq"] or "1024"]
        args += ["--lr", v["lr"]] if v["lr"] else []  # empty: the training recipe chooses (printed in the log)
        args += ["--max-steps", v["steps"]] if v["steps"] else ["--epochs", v["epochs"]] if v["epochs"] else []
        if v["rank"]:
            config = run_dir.parent / f".{run_dir.name}.tui.yaml"
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(f"lora:\n  r: {v['rank']}\n  alpha: {2 * int(v['rank'] or 8)}\n")
            args += ["--config", str(config)]
        start_training(args, run_dir)
        self.app.switch_screen(DashboardScreen(run_dir))


def fit_text(model: str, rank: str, seq: str) -> str:
    """The planner's memory-fit line for the New run form (no weights are loaded)."""
    try:
        import torch
        from transformers import AutoConfig

        from localtune.model.source import resolve_model
        from localtune.planner import GIB, CUDA_CONTEXT, Shape, estimate

        location, kwargs = resolve_model(model).from_pretrained_args()
        shape = Shape.from_config(AutoConfig.from_pretrained(location, **kwargs))
        plan = estimate(shape, micro_batch=1, seq_len=int(seq or 1024), rank=int(rank or 16))
        params = shape.linear_params() + shape.embedding_params()
        if torch.cuda.is_available():
            total = torch.cuda.mem_get_info()[1] - CUDA_CONTEXT
            bar = "#" * min(30, int(30 * plan.total / total)) + "." * max(0, 30 - int(30 * plan.total / total))
            return f"memory: [{bar}] {plan.total / GIB:.1f} of {total / GIB:.1f} GiB at micro-batch 1"
        return (f"memory: {plan.total / GIB:.2f} GiB estimated; no GPU: CPU training, expect about "
                f"{1.5e10 / params:.0f} tokens/s ({params / 1e6:.0f} M parameters)")
    except Exception as exc:  # a half-typed model name is normal while typing
        return f"memory: cannot read the model yet ({type(exc).__name__})"


def data_report(data: str, model: str, seq: str) -> str:
    from localtune.config import DataConfig
    from localtune.data.inspect import inspect_data, render_report

    try:
        tokenizer = None
        if model:
            from localtune.model.source import load_tokenizer, resolve_model

            tokenizer = load_tokenizer(resolve_model(model))
        report = inspect_data(DataConfig(path=data, max_seq_len=int(seq or 1024)), tokenizer, model=model)
        text = render_report(report)
        if report.stats and report.stats.lengths:
            text += "\n" + histogram(report.stats.lengths)
        return text
    except LocaltuneError as exc:
        return exc.render()


def histogram(lengths: list[int], bins: int = 8, width: int = 30) -> str:
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - lo) // step)] += 1
    top = max(counts)
    lines = ["token lengths:"]
    for i, c in enumerate(counts):
        lines.append(f"  {lo + i * step:>6}-{lo + (i + 1) * step - 1:<6} {'#' * round(width * c / top):<{width}} {c}")
    return "\n".join(lines)


class DashboardScreen(Screen):
    BINDINGS = [Binding("s", "stop", "Stop (save)"), Binding("S", "stop_now", "Stop now"),
                Binding("r", "resume", "Resume"), Binding("e", "export", "Export"),
                Binding("v", "evaluate", "Evaluate"), Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.event_offset = 0
        self.losses: list[float] = []
        self.eval_losses: list[float] = []
        self.evals: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Run {self.run_dir.name}", id="title")
        yield Static("waiting for the first step ...", id="status")
        yield ProgressBar(total=None, show_eta=True, id="progress")
        yield Label("loss")
        yield Sparkline([], id="loss")
        yield Label("eval loss")
        yield Sparkline([], id="eval")
        yield Static("", id="stats")
        yield Static(eval_summary(self.run_dir), id="evalreport")
        yield RichLog(id="log", max_lines=500, wrap=True, markup=True)
        yield Footer()

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(0.5, self.poll)

    def action_evaluate(self) -> None:
        if not (self.run_dir / "gguf").is_dir():
            self.notify("Export the run first (e), then evaluate it", severity="warning")
            return
        self.query_one(RichLog).write("evaluating the tuned GGUF against the base and few-shot prompting ...")
        self.run_eval()

    @work(thread=True, exclusive=True, group="eval")
    def run_eval(self) -> None:
        from localtune.evaluation.evaluate import evaluate

        status = self.query_one("#evalreport", Static)

        def progress(event) -> None:
            if event.kind == "eval_progress":
                self.app.call_from_thread(status.update, f"evaluating: row {event.done}/{event.total}, "
                                                         f"ETA {event.eta_s:.0f}s")

        try:
            with HEAVY_WORK:
                report = evaluate(self.run_dir, emit=progress)
        except LocaltuneError as exc:
            self.app.call_from_thread(self.notify, exc.render(), title=exc.title, severity="error")
            self.app.call_from_thread(status.update, eval_summary(self.run_dir))
            return
        self.app.call_from_thread(status.update, eval_summary(self.run_dir))
        self.app.call_from_thread(self.query_one(RichLog).write, f"eval: {escape(report.verdict)}")

    def poll(self) -> None:
        events, self.event_offset = read_events_tail(self.run_dir / "events.jsonl", self.event_offset)
        last_step = None
        log = self.query_one(RichLog)
        for e in events:  # many step events per poll coalesce into one redraw
            kind = e.get("kind")
            if kind == "step":
                last_step = e
                if isinstance(e["loss"], (int, float)):
                    self.losses.append(e["loss"])
            elif kind == "eval":
                self.evals.append(f"step {e['step']}: {e['loss']:.4f}")
                self.eval_losses.append(e["loss"])
                self.query_one("#eval", Sparkline).data = self.eval_losses[-200:]
                log.write(f"eval at step {e['step']}: loss {e['loss']:.4f}")
            elif kind == "checkpoint":
                log.write(f"checkpoint saved: {Path(e['path']).name}")
            elif kind == "warning":
                log.write(f"[yellow]warning:[/] {escape(e['message'])}")
            elif kind == "model_loaded":
                log.write(f"model {e['model']} on {e['device']} ({e['dtype']}), {e['params_trainable']:,} trainable")
            elif kind == "recipe":
                log.write(f"recipe: {e['total_steps']} steps at lr {e['lr']:.1e} ({escape(e['reason'])})")
            elif kind == "memory_planned":
                log.write(f"memory: micro-batch {e['micro_batch']}, planned peak "
                          f"{e['estimate_bytes'] / 2**30:.2f} GiB" + (", checkpoints offloaded to CPU"
                                                                      if e['activation_offload'] else ""))
            elif kind == "data_prepared":
                log.write(f"data: {e['train_rows']} training rows, {e['val_rows']} validation rows")
            elif kind == "finished":
                log.write("[bold]finished[/]: export with e")
            elif kind == "interrupted":
                log.write("[bold]interrupted[/]: resume with r")
            elif kind == "failed":
                log.write(f"[bold red]failed[/]: {escape(str(e.get('error', '')))}")
        if last_step:
            from localtune.planner import format_bytes

            self.query_one(ProgressBar).update(total=last_step["total_steps"], progress=last_step["step"])
            self.query_one("#loss", Sparkline).data = self.losses[-200:]
            self.query_one("#status", Static).update(
                f"step {last_step['step']}/{last_step['total_steps']}  loss {_fmt_loss(last_step['loss'])}  "
                f"lr {last_step['lr']:.2e}  {last_step['tokens_per_s']:,.0f} tok/s  ETA {last_step['eta_s']:.0f}s")
            self.query_one("#stats", Static).update(
                f"memory peak {format_bytes(last_step['peak_memory_bytes'])}  grad norm "
                f"{last_step['grad_norm']:.2f}  eval: {', '.join(self.evals[-3:]) or '-'}")
        summary = summarize(self.run_dir)
        if summary:
            self.sub_title = summary.status

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


def eval_summary(run_dir: Path) -> str:
    """The latest `localtune eval` report of a run, in two lines: each system's loss and ROUGE-L, the verdict."""
    from localtune.evaluation.report import latest_report

    report = latest_report(run_dir)
    if report is None:
        return "eval: none yet; v compares the exported GGUF with the base and few-shot prompting"
    num = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731 - JSON keeps NaN as null
    systems = "  ".join(f"{s['name']}: loss {num(s['values']['loss'], '.3f')}, ROUGE-L "
                        f"{num(s['values']['rouge_l'], '.2f')}" for s in report["systems"])
    return escape(f"eval ({Path(report['folder']).name}, {len(report['rows'])} rows): {systems}\n"
                  f"verdict: {report['verdict']}")


class ExportScreen(Screen):
    BINDINGS = [Binding("x", "export", "Export"), Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Export {self.run_dir.name} to GGUF (space toggles, x exports)", id="title")
        yield SelectionList[str](*[(self.label(q), q, q == "q8_0") for q in QUANT_BYTES_PER_PARAM], id="quants")
        yield Button("Export (x)", id="go", variant="primary")
        yield RichLog(id="log", max_lines=400, wrap=True)
        yield DataTable(id="verify")
        yield Static("", id="ollama")
        yield Footer()

    def label(self, quant: str) -> str:
        params = self.app.param_count(self.run_dir)
        size = f" ~{params * QUANT_BYTES_PER_PARAM[quant] / 1e6:,.0f} MB" if params else ""
        return quant + size

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

        log = self.query_one(RichLog)
        try:
            bundle = export_run(self.run_dir, quants, say=lambda m: self.app.call_from_thread(log.write, m))
        except LocaltuneError as exc:
            self.app.call_from_thread(self.notify, exc.render(), title=exc.title, severity="error")
            return
        self.app.call_from_thread(self.show_result, bundle)

    def show_result(self, bundle) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("file", "check", "result", "detail")
        for f in bundle.tuned:
            for c in f.verify.checks if f.verify else []:
                table.add_row(f.path.name, c.name, "PASS" if c.passed else "FAIL", c.detail)
        self.query_one("#ollama", Static).update(
            f"Ollama: cd {bundle.gguf_dir} && ollama create {self.run_dir.name.lower()} -f Modelfile")
        self.notify("Export finished", title="Done")


class ChatScreen(Screen):
    BINDINGS = [Binding("ctrl+o", "toggle_compare", "Compare"), Binding("ctrl+r", "reset", "Reset"),
                Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, target: Path):
        super().__init__()
        self.target = Path(target)
        self.compare = False
        self.sessions: dict[str, object] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Chat with {self.target.name} (ctrl+o compares with the base)", id="title")
        with Horizontal(id="chats"):
            with Vertical(id="tuned-side"):
                yield RichLog(id="tuned", wrap=True, markup=False)
                yield Static("", id="tuned-live")
            with Vertical(id="base-side"):
                yield RichLog(id="base", wrap=True, markup=False)
                yield Static("", id="base-live")
        yield Input(placeholder="Type a message, enter to send", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#base-side").display = False
        self.query_one(Input).focus()

    def action_toggle_compare(self) -> None:
        self.compare = not self.compare
        self.query_one("#base-side").display = self.compare

    def action_reset(self) -> None:
        for s in self.sessions.values():
            s.reset()
        for log in self.query(RichLog):
            log.clear()

    @on(Input.Submitted, "#prompt")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        if text:
            self.answer(text)

    def session(self, which: str):
        if which not in self.sessions:
            from localtune.chat.session import ChatSession, Sampling, find_models
            from localtune.chat.runtime import open_gguf

            tuned, base = find_models(self.target)
            path = tuned if which == "tuned" else base
            if path is None:
                raise LocaltuneError("there is no base model GGUF to compare with", hint="export the run first")
            self.sessions[which] = ChatSession(open_gguf(path, n_ctx=2048), sampling=Sampling(max_tokens=200))
        return self.sessions[which]

    @work(thread=True, exclusive=True, group="chat")
    def answer(self, text: str) -> None:
        for which in ("tuned", "base") if self.compare else ("tuned",):
            log = self.query_one(f"#{which}", RichLog)
            self.app.call_from_thread(log.write, f"you: {text}")
            live = self.query_one(f"#{which}-live", Static)
            parts: list[str] = []

            def streamed(piece: str) -> None:  # tokens appear as they come
                parts.append(piece)
                self.app.call_from_thread(live.update, f"{which}: {''.join(parts)}")

            try:
                reply = self.session(which).ask(text, on_token=streamed)
            except LocaltuneError as exc:
                self.app.call_from_thread(self.notify, exc.render(), title=exc.title, severity="error")
                return
            self.app.call_from_thread(live.update, "")
            self.app.call_from_thread(log.write, f"{which}: {reply.strip()}")


class LocaltuneApp(App):
    TITLE = "localtune"
    CSS = """
    #title { padding: 0 1; text-style: bold; }
    #dialog { width: 70; height: auto; max-height: 90%; border: thick $accent; padding: 1 2; background: $panel; }
    Confirm, PickFile { align: center middle; }
    #knobs Input { width: 1fr; }
    #chats Vertical { width: 1fr; }
    #chats RichLog { border: round $accent; }
    #log { height: 1fr; min-height: 4; }
    #verify { height: auto; max-height: 12; }
    """
    BINDINGS = [Binding("ctrl+t", "toggle_theme", "Theme"), Binding("ctrl+q", "quit", "Quit", show=False)]

    def __init__(self, workspace: str | Path = "runs"):
        super().__init__()
        self.workspace = Path(workspace)

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
                found += sorted(str(p.parent) for p in root.glob("*/config.json") if (p.parent / "tokenizer.json").exists())
                found += sorted(str(p) for p in root.glob("*.gguf"))
        return list(dict.fromkeys(found))

    def param_count(self, run_dir: Path) -> int:
        try:
            import json

            cfg = json.loads((run_dir / "merged" / "config.json").read_text())
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
        if summary.status in ("starting", "running"):
            self.notify("This run is already training", severity="warning")
            return
        if summary.status in ("finished", "stopped_early"):
            self.notify("This run has finished; export or chat with it", severity="information")
            return
        start_training(["--resume", "--out", str(run_dir)], run_dir)
        self.notify("Resuming from the last checkpoint", title="Resumed")
        if not isinstance(self.screen, DashboardScreen):
            self.push_screen(DashboardScreen(run_dir))
