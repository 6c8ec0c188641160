"""`localtune eval`: metrics against independent references, the known ordering of tuned vs base vs few-shot
on a tiny model trained on a fixed mapping, a GGUF that never stops, partial reports, bad data, the card."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from helpers import chat, write_jsonl

from localtune.evaluation import metrics

ANSWER = "The code word is lantern."
MAPPING = [chat(f"What is the code word for crate {i}?", ANSWER) for i in range(40)]


# ---- metrics ---------------------------------------------------------------------------------------
def test_metrics_against_rouge_score_and_by_hand():
    from rouge_score import rouge_scorer

    reference = rouge_scorer.RougeScorer(["rougeL"])  # the package's own tokenizer, on ASCII text
    pairs = [
        ("the cat sat on the mat", "the cat on mat"),
        ("a b c d e", "e d c b a"),
        ("Paris is the capital of France", "The capital of France is Paris."),
        ("x y z", "nothing alike"),
    ]
    for ref, answer in pairs:
        assert metrics.rouge_l(answer, ref) == pytest.approx(reference.score(ref, answer)["rougeL"].fmeasure)
    assert metrics.rouge_l("the cat on mat", "the cat sat on the mat") == pytest.approx(0.8)  # LCS 4: P 1, R 4/6
    # Words beyond ASCII count: rouge-score's default tokenizer drops them and scores this 0.
    assert reference.score("東京 は 首都", "東京 は 首都")["rougeL"].fmeasure == 0.0
    assert metrics.rouge_l("東京 は 首都", "東京 は 首都") == 1.0 and metrics.rouge_l("café naïve", "café") > 0.6
    # SQuAD-style token F1: 2 of 3 answer words in a 4-word reference -> P 2/3, R 2/4, F1 4/7.
    assert metrics.token_f1("red small thing", "a small red box") == pytest.approx(4 / 7)
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("", "x") == 0.0
    assert metrics.exact_match("  The answer is Rome. ", "the answer is rome") == 1.0
    assert metrics.exact_match("Rome", "Milan") == 0.0
    assert metrics.wins_ties_losses([1, 0.5, 0], [0.5, 0.5, 1]) == (1, 1, 1)
    assert metrics.wins_ties_losses([1.0, 2.0], [2.0, 2.0], higher_is_better=False) == (1, 1, 0)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_rows():
    import random

    rng = random.Random(1)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    small = [rng.random() for _ in range(10)]
    large = small * 20
    lo, hi = metrics.bootstrap_ci(small, mean)
    assert lo < mean(small) < hi
    lo2, hi2 = metrics.bootstrap_ci(large, mean)
    assert hi2 - lo2 < (hi - lo) / 2
    assert metrics.bootstrap_ci([0.5], mean) == (0.5, 0.5) and math.isnan(metrics.bootstrap_ci([], mean)[0])
    assert metrics.bootstrap_ci(small, mean) == (lo, hi)  # seeded: a report repeats


# ---- rows and tokens -------------------------------------------------------------------------------
def test_answer_split_is_the_training_tokenization(tiny_tokenizer):
    """Prompt + answer ids are training's ids; the answer is the last assistant turn's trained tokens, and the
    prompt is what transformers' own generation-prompt rendering tokenizes to."""
    from localtune.data.formats import Example
    from localtune.data.template import make_renderer, resolve_chat_template
    from localtune.data.tokenize import IGNORE, split_answer, tokenize_example

    for arch in ("qwen2", "llama", "gemma"):
        tok = tiny_tokenizer(arch)
        template = resolve_chat_template(tok)
        render = make_renderer(tok, template)
        ex = Example(
            "t:1",
            messages=(
                ("user", "What is 2+2?"),
                ("assistant", "4, of course."),
                ("user", "And 3+3?"),
                ("assistant", "It is 6."),
            ),
        )
        prompt, answer = split_answer(ex, tok, render)
        row = tokenize_example(ex, tok, render, max_seq_len=512)[0]
        assert prompt + answer == row.input_ids[: len(prompt) + len(answer)]
        trained = [i for i, x in enumerate(row.labels) if x != IGNORE]
        assert answer == [row.input_ids[i] for i in trained if i >= len(prompt)] and answer
        assert tok.decode(answer, skip_special_tokens=True).strip() == "It is 6."
        want = tok.apply_chat_template(
            ex.as_messages()[:-1], chat_template=template.text, tokenize=False, add_generation_prompt=True
        )
        assert prompt == tok(want, add_special_tokens=False)["input_ids"], arch
    comp = Example("t:2", prompt="The capital of France is", completion=" Paris.")
    prompt, answer = split_answer(comp, tok, render)
    assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]).strip() == "Paris."


def test_text_rows_and_bad_rows_are_refused_with_file_and_line(tmp_path, evaluated_run, cli):
    run = evaluated_run["run"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat("Hi?", "Hello.")) + "\n" + '{"messages": [{"role": "user", "content": "x"}]}\n')
    result = cli("eval", run, "--data", bad)
    assert result.exit_code == 2 and f"{bad}:2" in result.output and "fix:" in result.output
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "just some text"}])
    result = cli("eval", run, "--data", text)
    assert result.exit_code == 2 and f"{text}:1" in result.output and "no answer" in result.output
    result = cli("eval", tmp_path / "missing")
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not list((run / "eval").glob(".*"))  # no half-written report folder


# ---- the known ordering on a tiny model trained on a fixed mapping ---------------------------------
@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_model_dir):
    """A tiny Qwen2 taught that every crate's code word is 'lantern', exported as f32, then evaluated."""
    from localtune.config import load_config
    from localtune.evaluation.evaluate import evaluate
    from localtune.events import ListSink
    from localtune.export.bundle import export_run
    from localtune.train.run import train_run

    root = tmp_path_factory.mktemp("eval")
    data = write_jsonl(root / "mapping.jsonl", MAPPING)
    values = {
        "model.name_or_path": str(tiny_model_dir("qwen2")),
        "data.path": str(data),
        "train.max_steps": 40,
        "train.lr": 1e-2,
        "train.load_in_4bit": False,
        "data.val_fraction": 0.2,
    }
    train_run(load_config(None, {k: (v, "test") for k, v in values.items()}), root / "run")
    export_run(root / "run", ["f32"], verify=False, say=lambda m: None)
    sink = ListSink()
    report = evaluate(root / "run", emit=sink)
    return {"run": root / "run", "report": report, "events": sink}


def test_tuned_beats_base_and_few_shot_by_a_wide_margin(evaluated_run):
    report = evaluated_run["report"]
    by_role = {s.role: s for s in report.systems}
    tuned, base, few = by_role["tuned"], by_role["base"], by_role["few-shot"]
    assert len(report.rows) == 8 and report.passed and not report.partial
    assert tuned.values["exact"] == 1.0 and tuned.values["stopped"] == 1.0
    assert base.values["exact"] == 0.0 and few.values["exact"] < tuned.values["exact"]
    assert tuned.values["loss"] < 0.2 * base.values["loss"] and tuned.values["loss"] < 0.2 * few.values["loss"]
    assert tuned.intervals["loss"][1] < min(base.intervals["loss"][0], few.intervals["loss"][0])
    for c in report.comparisons:
        assert c.outcome == "ahead" and c.loss == (8, 0, 0)
    assert report.verdict.startswith("tuned F32 is ahead of the base") and "4-shot" in report.verdict
    # Few-shot turns are training rows, never evaluated rows, and they are in the base's prompt.
    evaluated = {r.where for r in report.rows}
    assert len(report.shots) == 4 and not evaluated & set(report.shots)
    for row in report.rows:
        assert row.answers[few.name].prompt_tokens > row.answers[base.name].prompt_tokens + 4 * 10
    progress = [e for e in evaluated_run["events"].events if e.kind == "eval_progress"]
    assert [e.done for e in progress] == list(range(1, 9)) and progress[-1].eta_s == 0


def test_teacher_forced_loss_equals_transformers(evaluated_run):
    """llama.cpp's loss on the f32 GGUFs equals the HF models' own cross-entropy on the same token ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from localtune.config import load_config
    from localtune.evaluation.rows import run_rows
    from localtune.evaluation.runner import run_encoder

    run, report = evaluated_run["run"], evaluated_run["report"]
    encoder = run_encoder(run)
    rows = run_rows(run, load_config(run / "config.yaml")).rows
    base_dir = load_config(run / "config.yaml").model.name_or_path
    for name, folder in (("tuned F32", run / "merged"), ("base", base_dir)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        for ex, row in zip(rows, report.rows):
            prompt, answer = encoder(ex)
            with torch.no_grad():
                logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(answer), reduction="sum").item()
            assert row.answers[name].nll == pytest.approx(nll, rel=1e-3, abs=1e-3), (name, ex.where)


def test_report_files_card_and_latest(evaluated_run):
    from localtune.evaluation.report import latest_report

    run, report = evaluated_run["run"], evaluated_run["report"]
    folder = report.folder
    assert folder.parent == run / "eval" and {p.name for p in folder.iterdir()} == {
        "report.md",
        "report.json",
        "chart.png",
    }
    saved = json.loads((folder / "report.json").read_text())
    assert saved["verdict"] == report.verdict and len(saved["rows"]) == 8 and not saved["partial"]
    assert set(saved["rows"][0]["answers"]) == {s.name for s in report.systems}
    md = (folder / "report.md").read_text()
    assert "## Verdict" in md and "## Sample of rows" in md and ANSWER in md and "| base 4-shot |" in md
    assert (folder / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "gguf" / "README.md").read_text()
    assert card.index("## Evaluation") < card.index("## Use") and report.verdict in card
    assert latest_report(run)["verdict"] == report.verdict


def test_cli_table_and_verdict(evaluated_run, cli):
    run = evaluated_run["run"]
    result = cli("eval", run, "--max-rows", "3", "--shots", "1", "--out", run / "eval" / "cli")
    assert result.exit_code == 0, result.output
    assert "system" in result.output and "tuned F32" in result.output and "base 1-shot" in result.output
    assert "verdict: tuned F32 is ahead" in result.output and "3 row(s)" in result.output
    assert (run / "eval" / "cli" / "report.md").is_file()
    again = cli("eval", run, "--max-rows", "1", "--out", run / "eval" / "cli")  # refused up front, report kept
    assert again.exit_code == 2 and "exists and is not empty" in again.output
    assert "3 held-out row(s)" in (run / "eval" / "cli" / "report.md").read_text()


def test_base_and_shots_from_override_the_run(evaluated_run, cli, tmp_path):
    run = evaluated_run["run"]
    shots = write_jsonl(tmp_path / "shots.jsonl", [chat("Which crate is blue?", "Crate nine is blue.")] * 2)
    base = next((run / "gguf").glob("base-*.gguf"))
    result = cli("eval", run, "--max-rows", "1", "--base", base, "--shots-from", shots, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["shots"] == [f"{shots}:1", f"{shots}:2"] and saved["systems"][2]["name"] == "base 2-shot"
    assert saved["systems"][1]["gguf"] == str(base)
    assert saved["notes"] == ["2 shot(s), not 4: only 2 training row(s) to take them from"]


def test_too_few_rows_is_nothing_to_evaluate(tmp_path):
    """quick skips its eval phase on exactly this error (data under 10 rows has no validation split)."""
    from localtune.config import load_config
    from localtune.evaluation.rows import NothingToEvaluate, run_rows

    data = write_jsonl(tmp_path / "few.jsonl", MAPPING[:5])
    cfg = load_config(None, {"data.path": (str(data), "test")})
    with pytest.raises(NothingToEvaluate, match="no validation rows"):
        run_rows(tmp_path, cfg)
    assert len(run_rows(tmp_path, cfg, str(data)).rows) == 5  # --data still works


def test_all_quants_evaluates_every_tuned_file_of_the_bundle(evaluated_run, cli):
    from localtune.export.gguf import export_model

    run = evaluated_run["run"]
    export_model(run / "merged", ["q8_0"], run / "gguf", verify=False, stem="run", say=lambda m: None)
    result = cli("eval", run, "--all-quants", "--max-rows", "2", "--shots", "0", "--out", run / "eval" / "quants")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "eval" / "quants" / "report.json").read_text())
    assert [s["name"] for s in saved["systems"]] == ["tuned F32", "tuned Q8_0", "base"]
    f32, q8 = saved["systems"][0]["values"], saved["systems"][1]["values"]
    assert q8["loss"] == pytest.approx(f32["loss"], abs=0.1) and q8["exact"] == f32["exact"]


def test_eval_is_refused_while_an_export_holds_the_run(evaluated_run, cli):
    import subprocess
    import sys

    from localtune.runs.lock import LOCK_NAME

    run = evaluated_run["run"]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "what": "export", "since": "now"}))
        result = cli("eval", run, "--max-rows", "1")
        assert result.exit_code == 2 and f"export by process {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
        (run / LOCK_NAME).unlink(missing_ok=True)


def test_interrupt_keeps_finished_rows_as_a_partial_report(evaluated_run, monkeypatch, cli):
    from localtune.evaluation import runner

    run = evaluated_run["run"]
    calls = {"n": 0}
    real = runner.score

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 2:  # in the third row, after two complete rows of three systems
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "score", interrupted)
    result = cli("eval", run, "--out", run / "eval" / "partial")
    assert result.exit_code == 130 and "partial" in result.output
    saved = json.loads((run / "eval" / "partial" / "report.json").read_text())
    assert saved["partial"] and len(saved["rows"]) == 2 and "partial report" in saved["verdict"]


# ---- a GGUF that never stops -----------------------------------------------------------------------
def test_a_gguf_that_never_emits_eos_is_flagged(tmp_path, tiny_model_dir, cli):
    """Zeroed output rows for every special token: greedy decoding never picks EOS, and eval must fail."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localtune.export.gguf import export_model

    src = tiny_model_dir("llama")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[tok.all_special_ids] = 0.0
    folder = tmp_path / "never-stops"
    model.save_pretrained(folder)
    for f in src.iterdir():  # the original tokenizer files (tokenizer.model and friends), untouched
        if f.suffix != ".safetensors" and not (folder / f.name).exists():
            shutil.copy(f, folder / f.name)
    [exported] = export_model(folder, ["f32"], tmp_path / "gguf", verify=False, say=lambda m: None)
    data = write_jsonl(tmp_path / "held.jsonl", MAPPING[:4])
    result = cli("eval", exported.path, "--data", data, "--max-tokens", "24")
    assert result.exit_code == 1, result.output
    assert "never stopped on 4 of 4 rows" in result.output and "0%" in result.output
    assert (
        "llama.cpp's tokenizer"
        in json.loads(next((tmp_path / "gguf" / "eval").glob("*/report.json")).read_text())["tokenization"]
    )
