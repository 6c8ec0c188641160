"""The New run form against the config it edits: its fields say what the knobs say, and a form the CLI
would refuse is refused at its fields, before any process starts."""

from __future__ import annotations

import asyncio

from localtune.config import PRESETS, knob, knobs
from localtune.tui.app import LocaltuneApp
from localtune.tui.screens.new_run import NewRunScreen

# The id each knob's input has, derived here from the config (not from the TUI's own helper).
KNOB_OF_INPUT = {"knob-" + k.key.replace(".", "-"): k.key for k in knobs()}


def drive(app, body, size=(100, 32)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await body(pilot)

    asyncio.run(main())


def field_of(widget):
    return next(a for a in widget.ancestors if a.has_class("field"))


def test_every_knob_field_has_its_knobs_label_and_hint(tmp_path):
    shown: set[str] = set()

    async def body(pilot):
        await pilot.press("n")
        await pilot.pause(0.2)
        screen = pilot.app.screen
        assert isinstance(screen, NewRunScreen)
        for box in screen.query("Input"):
            if not (box.id or "").startswith("knob-"):
                continue
            k = knob(KNOB_OF_INPUT[box.id])  # KeyError: an input named after no knob
            field = field_of(box)
            labels, hints = field.query(".label"), field.query(".hint")
            assert [str(w.render()) for w in labels] == [k.label], box.id
            assert [str(w.render()) for w in hints] == [k.hint], box.id
            for w in (labels.first(), hints.first(), box):  # visible: on the screen, not scrolled or hidden away
                assert w.display and w.region.height >= 1 and screen.region.contains_region(w.region), box.id
            shown.add(k.key)

    drive(LocaltuneApp(tmp_path / "runs"), body)
    assert {"model.name_or_path", "data.path", "adapter.r", "train.lr", "train.epochs"} <= shown
    preset_keys = {key for values in PRESETS.values() for key in values}
    assert preset_keys <= shown, f"preset keys without a field: {preset_keys - shown}"


def test_knob_fields_start_at_their_defaults_and_the_recipe_knobs_empty(tmp_path):
    async def body(pilot):
        await pilot.press("n")
        await pilot.pause(0.2)
        screen = pilot.app.screen
        for key in ("train.max_steps", "data.max_seq_len", "adapter.r", "adapter.alpha"):
            k = knob(key)
            assert screen.query_one("#knob-" + key.replace(".", "-")).value == k.text(k.default), key
        for key in ("train.lr", "train.epochs"):  # unset: the training recipe chooses
            box = screen.query_one("#knob-" + key.replace(".", "-"))
            assert box.value == "" and box.placeholder.startswith("auto")

    drive(LocaltuneApp(tmp_path / "runs"), body)


def test_invalid_learning_rate_is_shown_at_its_field_and_starts_nothing(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("localtune.tui.screens.new_run.start_training", lambda args, run_dir: started.append(args))
    ws = tmp_path / "runs"

    async def body(pilot):
        await pilot.press("n")
        screen = pilot.app.screen
        lr = screen.query_one("#knob-train-lr")
        lr.focus()
        await pilot.press("a", "b", "c")
        assert lr.value == "abc"
        await pilot.press("ctrl+s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.3)
        assert pilot.app.screen is screen  # still the form, not a dashboard waiting for nothing
        problem = field_of(lr).query_one(".problem")
        text = str(problem.render())
        assert problem.display and problem.region.height >= 1
        assert "'abc'" in text and "fix:" in text
        assert lr.has_class("error")
        others = [p for p in screen.query(".problem") if p is not problem]
        assert not any(p.display for p in others)  # the other fields are fine
        notes = [n.message for n in pilot.app._notifications]
        assert any("New run: Learning rate" in n and "train.lr" in n for n in notes)
        lr.value = "3e-4"  # editing the field clears its problem
        await pilot.pause(0.1)
        assert not problem.display and not lr.has_class("error")

    drive(LocaltuneApp(ws), body)
    assert started == [] and not (ws / "run-1").exists()


def test_missing_data_and_a_name_in_use_are_refused_at_their_fields(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("localtune.tui.screens.new_run.start_training", lambda args, run_dir: started.append(args))
    ws = tmp_path / "runs"
    (ws / "taken").mkdir(parents=True)
    (ws / "taken" / "config.yaml").write_text("model:\n  name_or_path: smollm2\n")

    async def body(pilot):
        await pilot.press("n")
        screen = pilot.app.screen
        screen.query_one("#knob-data-path").value = str(tmp_path / "nowhere.jsonl")
        screen.query_one("#name").value = "taken"
        screen.query_one("#knob-train-max_steps").value = "-3"
        await pilot.press("ctrl+s")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.3)
        assert pilot.app.screen is screen
        shown = {f.id: str(f.query_one(".problem").render()) for f in screen.query(".field.has-problem")}
        assert set(shown) == {"field-data-path", "field-name", "field-train-max_steps"}
        assert "no such file or folder" in shown["field-data-path"] and "nowhere.jsonl" in shown["field-data-path"]
        assert "already exists" in shown["field-name"]
        assert "must not be negative" in shown["field-train-max_steps"]

    drive(LocaltuneApp(ws), body)
    assert started == []
