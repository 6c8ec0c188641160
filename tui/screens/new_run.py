"""The New run form: model, data, run name, a preset and the knobs that matter most, then start.

Each knob field takes its label, one-line hint, tooltip (the whole doc) and default from the config's
own declaration (`localtune.config.knob`), so the form says what `localtune config` and `--help` say.
Start checks the form as `localtune train` checks its flags (load_config), plus a free run name and data
that is there, and shows every problem at its field; only a valid form becomes the run's config.yaml
and a `localtune train --config` process of its own.

Run as:  localtune tui   (then n)
"""

from __future__ import annotations

import functools
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static

from localtune.config import PRESETS, Config, knob, load_config
from localtune.errors import ConfigError, LocaltuneError, Problem
from localtune.methods import METHODS
from localtune.model.source import DEMO_MODEL
from localtune.runs.layout import RunDir
from localtune.runs.workspace import start_training
from localtune.train.recipe import RECIPE_KEYS
from localtune.tui.messages import DataReported, FitEstimated, FormChecked
from localtune.tui.modals import PickFile
from localtune.tui.screens import HEAVY_WORK
from localtune.tui.screens.dashboard import DashboardScreen

MODEL, DATA, METHOD = "model.name_or_path", "data.path", "adapter.method"
KNOBS = ("adapter.r", "adapter.alpha", "train.lr", "train.epochs", "train.max_steps", "data.max_seq_len")  # two a row
AUTO = RECIPE_KEYS  # left empty (unset), the training recipe chooses them: the fields show that
AUTO_TEXT = "auto: the training recipe chooses"
PRESET_KEYS = tuple(dict.fromkeys(key for values in PRESETS.values() for key in values))  # what a preset sets
NAME = "name"  # the run name's field: not a knob (it names the run folder, --out)
START_VALUES = {MODEL: DEMO_MODEL, DATA: "demo", NAME: "run-1"}  # the built-in demo model and data


def input_id(key: str) -> str:
    """The id of a knob's input: "train.lr" -> "knob-train-lr"."""
    return "knob-" + key.replace(".", "-")


def unset_text(key: str) -> str:
    """What a field shows for a knob left unset: empty for the recipe's knobs, else the default."""
    k = knob(key)
    return "" if key in AUTO else k.text(k.default)


def alpha_for(rank: str) -> str | None:
    """The LoRA alpha that goes with a rank as the presets pair them (twice the rank); None if not a rank."""
    try:
        return knob("adapter.alpha").text(2.0 * int(rank))
    except ValueError:
        return None


class Field(Vertical):
    """A label, its control, the one-line hint and, once the form has been checked, the problem found in it."""

    def __init__(self, label: str, hint: str, control: Widget, *, id: str | None = None):
        super().__init__(classes="field", id=id)
        self.label, self.hint, self.control = label, hint, control

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="label")
        yield self.control
        yield Static(self.hint, classes="hint", markup=False)
        yield Static("", classes="problem", markup=False)

    def show_problem(self, text: str) -> None:
        self.query_one(".problem", Static).update(text)
        self.add_class("has-problem")
        for box in self.query(Input):
            box.add_class("error")

    def clear_problem(self) -> None:
        if self.has_class("has-problem"):
            self.remove_class("has-problem")
            for box in self.query(Input):
                box.remove_class("error")


def method_hint(name: str) -> str:
    """The method field's line: what the method learns, and where its result runs."""
    m = METHODS[name]
    return f"{m.summary[0].upper()}{m.summary[1:]}. Runs in: {m.runs_in}."


def knob_field(key: str, value: str, *, beside: Widget | None = None) -> Field:
    """The field of one config knob, everything it says taken from the knob; `beside` sits right of the input."""
    k = knob(key)
    default = k.text(k.default)
    placeholder = AUTO_TEXT if key in AUTO else f"default: {default}" if default else ""
    box = Input(value, placeholder=placeholder, id=input_id(key), compact=True, tooltip=k.doc)
    control = Horizontal(box, beside, classes="row") if beside else box
    return Field(k.label, k.hint, control, id="field-" + input_id(key).removeprefix("knob-"))


class NewRunScreen(Screen):
    # 80x24 has room for one line of hint a field (the tooltip has the whole doc); a taller terminal wraps them.
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+s", "start", "Start"),
        Binding("ctrl+b", "browse", "Browse data"),
        # priority: an Input binds ctrl+k to "delete to the end", which would win while a field has focus
        Binding("ctrl+k", "check", "Check data", priority=True),
    ]

    def __init__(self):
        super().__init__()
        self.preset_name = first = next(iter(PRESETS))  # the form starts as the first preset has it
        self.values = {key: unset_text(key) for key in KNOBS}
        self.values.update({key: knob(key).text(v) for key, v in PRESETS[first].items()})
        self.rank_shown = self.values["adapter.r"]  # the rank the alpha field last followed
        self.fields: dict[str, Field] = {}  # config key (or NAME) -> its field
        self.checking = False  # a start is being checked: a second ctrl+s meanwhile does nothing

    def compose(self) -> ComposeResult:
        models = [(m, m) for m in self.app.known_models()]
        pick = Select(models, value=START_VALUES[MODEL], id="model-pick", allow_blank=False, compact=True)
        presets = [(p, p) for p in PRESETS]
        preset_hint = "Sets " + ", ".join(knob(k).label for k in PRESET_KEYS) + "."
        self.fields = {
            MODEL: knob_field(MODEL, START_VALUES[MODEL], beside=pick),
            DATA: knob_field(DATA, START_VALUES[DATA]),
            NAME: Field(
                "Run name",
                "A new folder for the run in the workspace.",
                Input(START_VALUES[NAME], id=NAME, compact=True),
                id="field-name",
            ),
            "preset": Field(
                "Preset",
                preset_hint,
                Select(presets, value=self.preset_name, id="preset", allow_blank=False, compact=True),
                id="field-preset",
            ),
            METHOD: Field(
                knob(METHOD).label,
                method_hint(knob(METHOD).default),
                Select(
                    [(f"{m.name}: {m.title}", m.name) for m in METHODS.values()],
                    value=knob(METHOD).default,
                    id="method",
                    allow_blank=False,
                    compact=True,
                    tooltip=knob(METHOD).doc,
                ),
                id="field-method",
            ),
        }
        self.fields.update({key: knob_field(key, self.values[key]) for key in KNOBS})
        yield Header()
        with VerticalScroll(id="form"):
            yield self.fields[MODEL]  # full width: paths are long
            yield self.fields[DATA]
            with Grid(id="fields"):
                yield from (f for key, f in self.fields.items() if key not in (MODEL, DATA))
            yield Static("", id="fit", markup=False)
            yield Static("ctrl+k checks the data", id="report", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Check data (ctrl+k)", id="check", compact=True)
                yield Button("Start (ctrl+s)", id="start", variant="primary", compact=True)
        yield Footer()

    def value(self, key: str) -> str:
        if key == METHOD:
            return str(self.query_one("#method", Select).value)
        return self.query_one(f"#{NAME if key == NAME else input_id(key)}", Input).value.strip()

    def on_mount(self) -> None:
        self.refit()

    # ---- reacting to the form ----------------------------------------------------------------------------
    @on(Select.Changed, "#model-pick")
    def model_picked(self, event: Select.Changed) -> None:
        self.query_one(f"#{input_id(MODEL)}", Input).value = str(event.value)

    @on(Select.Changed, "#method")
    def method_picked(self, event: Select.Changed) -> None:
        self.fields[METHOD].query_one(".hint", Static).update(method_hint(str(event.value)))
        self.refit()

    @on(Select.Changed, "#preset")
    def preset(self, event: Select.Changed) -> None:
        values = PRESETS[str(event.value)]
        for key in PRESET_KEYS:  # a key this preset leaves out goes back to unset: the recipe or the default
            text = knob(key).text(values[key]) if key in values else unset_text(key)
            if key == "adapter.r":
                self.rank_shown = text  # the preset's alpha stands, whatever the rank was before
            self.query_one(f"#{input_id(key)}", Input).value = text

    @on(Input.Changed, f"#{input_id('adapter.r')}")
    def rank_changed(self, event: Input.Changed) -> None:
        """The alpha follows the rank, as the presets pair them, unless it was set to something else."""
        new = alpha_for(event.value.strip())
        if new is None:  # half-typed: follow once it is a rank again
            return
        alpha = self.query_one(f"#{input_id('adapter.alpha')}", Input)
        if alpha.value.strip() == alpha_for(self.rank_shown):
            alpha.value = new
        self.rank_shown = event.value.strip()

    @on(Input.Changed)
    def edited(self, event: Input.Changed) -> None:
        field = next((f for f in event.input.ancestors if isinstance(f, Field)), None)
        if field is not None:  # its problem is about the old value
            field.clear_problem()
        if event.input.id in (input_id(MODEL), input_id("adapter.r"), input_id("data.max_seq_len")):
            self.refit()

    def refit(self) -> None:
        self.update_fit(self.value(MODEL), self.value("adapter.r"), self.value("data.max_seq_len"), self.value(METHOD))

    @work(thread=True, exclusive=True, group="fit")
    def update_fit(self, model: str, rank: str, seq: str, method: str = "lora") -> None:
        with HEAVY_WORK:
            self.post_message(FitEstimated(fit_text(model, rank, seq, method)))

    def on_fit_estimated(self, message: FitEstimated) -> None:
        self.query_one("#fit", Static).update(message.text)

    def action_browse(self) -> None:
        def chosen(path: str | None) -> None:
            if path:
                self.query_one(f"#{input_id(DATA)}", Input).value = path
                self.action_check()

        self.app.push_screen(PickFile(Path.cwd()), chosen)

    @on(Button.Pressed, "#check")
    def action_check(self) -> None:
        self.query_one("#report", Static).update("checking ...")
        self.check_data(self.value(DATA), self.value(MODEL), self.value("data.max_seq_len"))

    @work(thread=True, exclusive=True, group="check")
    def check_data(self, data: str, model: str, seq: str) -> None:
        with HEAVY_WORK:
            self.post_message(DataReported(data_report(data, model, seq)))

    def on_data_reported(self, message: DataReported) -> None:
        self.query_one("#report", Static).update(message.text)

    # ---- starting ------------------------------------------------------------------------------------------
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self.checking:
            return
        for field in self.fields.values():
            field.clear_problem()
        self.checking = True
        run_dir = self.app.workspace / (self.value(NAME) or "run")
        self.check_start(run_dir, {key: self.value(key) for key in (MODEL, DATA, METHOD, *KNOBS)})

    @work(thread=True, exclusive=True, group="start")
    def check_start(self, run_dir: Path, values: dict[str, str]) -> None:
        with HEAVY_WORK:  # resolving a hub dataset id loads huggingface_hub
            cfg, problems = check_form(run_dir, values)
        self.post_message(FormChecked(run_dir, cfg, problems))

    def on_form_checked(self, message: FormChecked) -> None:
        self.checking = False
        if message.problems:
            self.show_problems(message.problems)
        else:
            self.start(message.run_dir, message.config)

    def show_problems(self, problems: list[Problem]) -> None:
        """Each problem under its field (the first one scrolled into view and focused), all in a notification."""
        placed = [self.fields[p.field] for p in problems if p.field in self.fields]
        for p in problems:
            if p.field in self.fields:
                self.fields[p.field].show_problem(f"{p.message}; fix: {p.fix}")
        if placed:
            placed[0].scroll_visible()
            placed[0].query(Input).first().focus()
        self.notify(
            "\n".join(p.render() for p in problems),
            title=f"Not started: {len(problems)} problem(s)",
            severity="error",
            timeout=10,
        )

    def start(self, run_dir: Path, cfg: Config) -> None:
        run = RunDir(run_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config, only_set=True)  # unset stays unset: the recipe still chooses epochs and lr
        # model and data are in the config file too; as flags they show in `ps` and in the log's "config:" lines
        args = ["--model", cfg.model.name_or_path, "--data", cfg.data.path]
        args += ["--out", str(run.path), "--config", str(run.config)]
        try:
            start_training(args, run.path)
        except LocaltuneError as exc:
            self.notify(exc.render(), title=exc.title, severity="error")
            return
        self.app.switch_screen(DashboardScreen(run.path))


def check_form(run_dir: Path, values: dict[str, str]) -> tuple[Config | None, list[Problem]]:
    """The form's config and every problem with it: the same validation as `localtune train`'s flags, plus
    what only a form can get wrong (an empty model or data field, a run name in use) and data that is not
    there. `values` maps config keys to the texts typed; the config is None when there are problems."""
    problems: list[Problem] = []
    run = RunDir(run_dir)
    if run.path.exists() and any(run.path.iterdir()):
        problems.append(Problem("New run: Run name", NAME, f"{run.path} already exists", "choose another name"))
    overrides: dict[str, tuple[str, str]] = {}
    for key, text in values.items():
        k = knob(key)
        if not text and key in (MODEL, DATA):
            problems.append(Problem(f"New run: {k.label}", key, "is empty", f"give the {k.label.lower()}"))
        # Empty is unset, as a flag not given; so is the default of a knob the recipe does not choose (the
        # form shows it): train.max_steps at 0 must stay unset for the recipe to choose the epochs.
        if text and (key in AUTO or text != k.text(k.default)):
            overrides[key] = (text, f"New run: {k.label}")
    cfg = None
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        problems += exc.problems
    if values.get(DATA):
        from localtune.data.readers import resolve_data_files

        try:
            resolve_data_files(values[DATA])
        except LocaltuneError as exc:
            label = knob(DATA).label
            found = getattr(exc, "problems", None) or [Problem("", None, exc.message, exc.hint or "")]
            problems += [Problem(f"New run: {label}", DATA, f"{p.message} ({values[DATA]})", p.fix) for p in found]
    return (None if problems else cfg), problems


@functools.lru_cache(maxsize=8)
def model_shape(model: str):
    """The planner's Shape of a model, from its configuration alone. Cached: for a .gguf that takes seconds,
    and the fit line is recomputed at every keystroke in the rank and sequence-length fields."""
    from transformers import AutoConfig

    from localtune.model.source import resolve_model
    from localtune.planner import Shape

    location, kwargs = resolve_model(model).from_pretrained_args()
    return Shape.from_config(AutoConfig.from_pretrained(location, **kwargs))


def fit_text(model: str, rank: str, seq: str, method: str = "lora") -> str:
    """The planner's memory-fit line for the New run form (no weights are loaded)."""
    try:
        import torch

        from localtune.planner import CUDA_CONTEXT, GIB, estimate

        shape = model_shape(model)
        plan = estimate(
            shape,
            micro_batch=1,
            seq_len=int(seq or knob("data.max_seq_len").default),
            rank=int(rank or knob("adapter.r").default),
            method=method,
        )
        params = shape.linear_params() + shape.embedding_params()
        if torch.cuda.is_available():
            total = torch.cuda.mem_get_info()[1] - CUDA_CONTEXT
            bar = "#" * min(30, int(30 * plan.total / total)) + "." * max(0, 30 - int(30 * plan.total / total))
            return f"memory: [{bar}] {plan.total / GIB:.1f} of {total / GIB:.1f} GiB at micro-batch 1"
        return (
            f"memory: {plan.total / GIB:.2f} GiB estimated; no GPU: CPU training, expect about "
            f"{1.5e10 / params:.0f} tokens/s ({params / 1e6:.0f} M parameters)"
        )
    except Exception as exc:  # a half-typed model name is normal while typing
        return f"memory: cannot read the model yet ({type(exc).__name__})"


def data_report(data: str, model: str, seq: str) -> str:
    """The data check (the report of `localtune data inspect`) with a histogram of the token lengths."""
    from localtune.data.inspect import inspect_data, render_report

    try:
        cfg = load_config(None, {DATA: (data, "New run"), "data.max_seq_len": (seq or None, "New run")})
        tokenizer = None
        if model:
            from localtune.model.source import load_tokenizer, resolve_model

            tokenizer = load_tokenizer(resolve_model(model))
        report = inspect_data(cfg.data, tokenizer, model=model)
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
