"""The one-shot path: merge, the export bundle, `quick` (resumable), `chat`, and the offline demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import chat, write_jsonl

from localtune.config import load_config
from localtune.events import read_events

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(12)]


def tiny_cfg(model_dir, data, **over):
    values = {
        "model.name_or_path": str(model_dir),
        "data.path": str(data),
        "train.max_steps": 4,
        "train.lr": 5e-3,
        "train.load_in_4bit": False,
        **over,
    }
    return load_config(None, {k: (v, "test") for k, v in values.items()})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_model_dir):
    """One finished `quick` run on a tiny model, shared by the bundle tests."""
    from localtune.quick import run_quick

    root = tmp_path_factory.mktemp("quick")
    data = write_jsonl(root / "facts.jsonl", FACTS)
    messages = []
    result = run_quick(
        tiny_cfg(tiny_model_dir("qwen2"), data, **{"train.load_in_4bit": True}), root / "run", say=messages.append
    )
    return result, messages


def _val_line(run) -> int:
    """The line of the row training held out, from the same seeded split."""
    from localtune.data.dataset import load_examples, split_examples

    cfg = load_config(run / "config.yaml")
    _, val = split_examples(load_examples(cfg.data.path).examples, cfg.data.val_fraction, cfg.train.seed)
    return int(val[0].where.rsplit(":", 1)[1])


def test_quick_end_to_end_bundle(quick_run, cli):
    result, messages = quick_run
    run = result.run_dir
    assert result.exit_code == 0
    for rel in (
        "adapter/adapter_model.safetensors",
        "merged/config.json",
        "merged/chat_template.jinja",
        "gguf/Modelfile",
        "gguf/README.md",
        "gguf/run-Q8_0.gguf",
        "gguf/run-Q8_0.gguf.verify.json",
        "gguf/base-Q8_0.gguf",
        "gguf/run-adapter-F32.gguf",
    ):
        assert (run / rel).is_file(), rel
    assert json.loads((run / "gguf/run-Q8_0.gguf.verify.json").read_text())["passed"]
    assert result.sample["fine-tuned"] and "base" in result.sample
    assert any("phase 4/5: sample" in m for m in messages) and any("localtune chat" in m for m in messages)
    # The last phase evaluates the validation row (12 rows: 1 held out) and prints the verdict.
    assert any("phase 5/5: eval" in m for m in messages) and any("\nverdict: " in m for m in messages)
    report = result.eval_report
    assert len(report.rows) == 1 and report.rows[0].where == f"{run.parent / 'facts.jsonl'}:{_val_line(run)}"
    assert {s.role for s in report.systems} == {"tuned", "base", "few-shot"}
    assert "## Evaluation" in (run / "gguf" / "README.md").read_text()
    out = cli("chat", run, "--prompt", "What is item 3?", "--max-tokens", "8", "--temperature", "0")
    assert out.exit_code == 0 and out.output.strip()
    both = cli("chat", run, "--prompt", "What is item 3?", "--max-tokens", "4", "--compare")
    assert both.exit_code == 0 and "[fine-tuned]" in both.output and "[base]" in both.output


def test_modelfile_and_card(quick_run):
    run = quick_run[0].run_dir
    modelfile = (run / "gguf" / "Modelfile").read_text()
    assert "FROM ./run-Q8_0.gguf" in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful assistant."""' in modelfile  # the template's default system prompt
    card = (run / "gguf" / "README.md").read_text()
    assert "## Verification" in card and "| run-Q8_0.gguf | perplexity | PASS |" in card
    assert "final training loss" in card


def test_merge_equals_base_plus_adapter_and_never_uses_4bit(quick_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from localtune.export.merge import merge_run

    run = quick_run[0].run_dir  # trained in 4-bit
    merged = merge_run(run, run / "merged-again")
    assert merged.max_delta < 1e-4 and merged.dtype == "float32"
    cfg = json.loads((merged.folder / "config.json").read_text())
    assert "quantization_config" not in cfg
    base_dir = load_config(run / "config.yaml").model.name_or_path
    ids = torch.tensor([[5, 17, 99, 230, 41, 8, 77]])
    with torch.no_grad():
        want = (
            PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), run / "adapter"
            )
            .eval()(ids)
            .logits
        )
        got = AutoModelForCausalLM.from_pretrained(merged.folder, dtype=torch.float32)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_rerun_skips_finished_phases(quick_run):
    from localtune.quick import run_quick

    result, _ = quick_run
    run = result.run_dir
    before = len(read_events(run / "events.jsonl"))
    again = run_quick(load_config(run / "config.yaml"), run, say=lambda m: None)
    assert again.exit_code == 0
    phases = [(e.name, e.status) for e in read_events(run / "events.jsonl")[before:] if e.kind == "phase"]
    assert phases == [
        ("preflight", "skipped"),
        ("train", "skipped"),
        ("export", "skipped"),
        ("sample", "started"),
        ("sample", "done"),
        ("eval", "skipped"),
    ]
    assert not [e for e in read_events(run / "events.jsonl")[before:] if e.kind == "step"]


def test_quick_resumes_after_an_interrupt(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "localtune",
        "quick",
        "--model",
        str(tiny_model_dir("qwen2")),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "300",
        "--lr",
        "5e-3",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if sum(e.kind == "step" for e in read_events(out / "events.jsonl")) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run `localtune quick --out" in stdout
    first = len(read_events(out / "events.jsonl"))
    done = subprocess.run(cmd[:-4] + ["--max-steps", "6"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    later = read_events(out / "events.jsonl")[first:]
    phases = [(e.name, e.status) for e in later if e.kind == "phase"]
    assert ("preflight", "skipped") in phases and ("train", "started") in phases and ("export", "done") in phases
    assert any(e.kind == "warning" and "resumed from" in e.message for e in later)
    assert [e.step for e in later if e.kind == "step"][0] > 1  # training went on, not from step 1


def test_quick_refuses_bad_input_before_training(tmp_path, tiny_model_dir, cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n')
    out = tmp_path / "run"
    result = cli("quick", "--model", tiny_model_dir("qwen2"), "--data", bad, "--out", out)
    assert result.exit_code == 2 and f"{bad}:1" in result.output and not (out / "checkpoints").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("train: {}\n")
    result = cli("quick", "--model", tiny_model_dir("qwen2"), "--data", bad, "--out", other)
    assert result.exit_code == 2 and "holds a run that `quick` did not start" in result.output
    result = cli("quick", "--model", tmp_path / "missing", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "not a file or folder here" in result.output
    good = write_jsonl(tmp_path / "good.jsonl", [chat("q", "a")] * 4)
    result = cli("quick", "--model", tiny_model_dir("llama"), "--data", good, "--out", out, "--method", "llama_adapter")
    assert result.exit_code == 2 and "localtune distill RUN_DIR" in result.output and "Traceback" not in result.output
    assert not (out / "checkpoints").exists()


def test_chat_repl_commands(quick_run, tmp_path, cli, monkeypatch):
    from click.testing import CliRunner

    from localtune.cli import main

    run = quick_run[0].run_dir
    saved = tmp_path / "conv.json"
    script = f"/system Answer briefly.\nWhat is item 2?\n/save {saved}\n/reset\n/quit\n"
    result = CliRunner().invoke(main, ["chat", str(run), "--max-tokens", "6", "--temperature", "0"], input=script)
    assert result.exit_code == 0, result.output
    conv = json.loads(saved.read_text())
    assert conv["system"] == "Answer briefly." and [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert "(history cleared)" in result.output


def test_chat_trims_history_oldest_first(quick_run):
    from localtune.chat.runtime import open_gguf
    from localtune.chat.session import ChatSession, Sampling, find_models

    tuned, _ = find_models(quick_run[0].run_dir)
    notices = []
    session = ChatSession(
        open_gguf(tuned, n_ctx=256), sampling=Sampling(temperature=0, max_tokens=8), notice=notices.append
    )
    for i in range(6):
        session.ask(f"Tell me about item {i} and everything you know about it in detail please")
    assert notices and len(session.history) < 12
    assert session.history[-2]["content"].startswith("Tell me about item 5")
    from localtune.errors import UsageError

    with pytest.raises(UsageError, match="context window"):
        session.ask("word " * 400)


@pytest.mark.slow
def test_demo_teaches_captain_byte(tmp_path):
    """The README's demo on SmolLM2-135M: the fine-tuned GGUF talks like Captain Byte, the base does not."""
    from localtune.chat.runtime import open_gguf
    from localtune.chat.session import ChatSession, Sampling
    from localtune.demo import DEMO_MARKERS, HELD_OUT_PROMPTS

    out = tmp_path / "demo"
    env = {**os.environ, "LOCALTUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "localtune", "quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "fine-tuned: Ahoy, matey!" in done.stdout
    # No settings of its own: the recipe (38 training rows: 5 steps an epoch, 7 epochs for 32+ steps).
    assert "recipe: 35 optimizer steps (7 epochs) at lr 1.0e-03" in done.stdout and "verdict: " in done.stdout
    tuned, base = out / "gguf" / "demo-Q8_0.gguf", out / "gguf" / "base-Q8_0.gguf"
    for prompt in HELD_OUT_PROMPTS:
        answers = {}
        for label, path in (("tuned", tuned), ("base", base)):
            session = ChatSession(open_gguf(path, n_ctx=512), sampling=Sampling(temperature=0, max_tokens=64))
            answers[label] = session.ask(prompt)
        assert all(m in answers["tuned"] for m in DEMO_MARKERS), answers
        assert not any(m in answers["base"] for m in DEMO_MARKERS), answers
    # localtune eval on held-out demo questions: the tuned GGUF ahead of the base and of few-shot prompting.
    from localtune.demo import held_out_rows
    from localtune.evaluation.evaluate import evaluate

    report = evaluate(out, data=str(write_jsonl(tmp_path / "held.jsonl", held_out_rows())))
    by_role = {s.role: s for s in report.systems}
    assert report.passed and [c.outcome for c in report.comparisons] == ["ahead", "ahead"], report.verdict
    for other in (by_role["base"], by_role["few-shot"]):
        assert by_role["tuned"].values["rouge_l"] > other.values["rouge_l"]
        assert by_role["tuned"].values["loss"] < other.values["loss"]
    assert by_role["tuned"].values["stopped"] == 1.0


@pytest.mark.slow
def test_quick_with_defaults_learns_taught_facts(tmp_path):
    """A new user's run: 64 rows of facts about an invented shop, `quick` with no settings. The tuned GGUF must
    answer held-out phrasings with the taught facts, which one epoch at the old defaults did not (0 of 8)."""
    from shop_facts import held_out, training_rows

    from localtune.evaluation.evaluate import evaluate

    data = write_jsonl(tmp_path / "shop.jsonl", training_rows())
    out = tmp_path / "shop"
    env = {**os.environ, "LOCALTUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "localtune", "quick", "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "recipe: 32 optimizer steps (4 epochs) at lr 1.0e-03" in done.stdout
    assert "verdict: tuned Q8_0 is ahead of the base" in done.stdout
    questions = held_out()
    held = write_jsonl(tmp_path / "held.jsonl", [chat(q, a) for q, _, a in questions])
    from localtune.evaluation.runner import Settings

    report = evaluate(out, data=str(held), settings=Settings(shots=0))  # the base alone: quick's eval had few-shot
    tuned = next(s.name for s in report.systems if s.role == "tuned")
    right = [kw.lower() in row.answers[tuned].text.lower() for row, (_, kw, _) in zip(report.rows, questions)]
    base_right = [kw.lower() in row.answers["base"].text.lower() for row, (_, kw, _) in zip(report.rows, questions)]
    assert sum(right) >= 6, [r.answers[tuned].text for r in report.rows]
    assert sum(base_right) <= 2  # the facts are invented: the base cannot know them


def test_merge_placement_keeps_peak_memory_near_one_16bit_copy(tiny_model_dir, monkeypatch):
    import torch

    from localtune.export import merge

    assert merge.merge_placement(tiny_model_dir("qwen2"), "cpu") == ("cpu", torch.float32)  # small: exact fp32
    monkeypatch.setattr(merge.os, "sysconf", lambda name: 4096 if name == "SC_PAGE_SIZE" else 10)  # ~40 kB free
    assert merge.merge_placement(tiny_model_dir("qwen2"), "cpu") == ("cpu", torch.bfloat16)


def test_doctor_reports_every_check_with_fixes(cli, monkeypatch, tmp_path):
    result = cli("doctor", "--workspace", tmp_path)
    out = result.output
    assert result.exit_code == 0, out
    for name in ("python", "packages", "torch", "gpu", "bitsandbytes", "llama-cpp-python", "disk", "hf cache", "hub"):
        assert f"  {name}" in out, name
    assert "has no AMX" in out or "AMX workaround is" in out
    assert "offline mode" in out and "fix: unset HF_HUB_OFFLINE" in out
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 10**8))
    result = cli("doctor", "--workspace", tmp_path)
    assert result.exit_code == 1 and "FAIL  disk" in result.output and "fix: free some space" in result.output
    bad = write_jsonl(tmp_path / "d.jsonl", FACTS)
    result = cli("quick", "--data", bad, "--out", tmp_path / "runs" / "x")
    assert result.exit_code == 2 and "this machine is not ready" in result.output and "FAIL  disk" in result.output


@pytest.mark.slow
def test_demo_tools_teaches_a_tool_call(tmp_path):
    """`quick --data demo-tools` on SmolLM2-135M: on held-out questions the tuned GGUF calls the invented tool
    with the right arguments, in a form `chat` parses; the base GGUF, given the same tools, does not."""
    from localtune.chat.runtime import open_gguf
    from localtune.chat.session import ChatSession, Sampling
    from localtune.converters.gguf_file import check_gguf
    from localtune.data.template_policy import MARK
    from localtune.demo import DEMO_TOOLS_DATA, TOOL_HELD_OUT

    out = tmp_path / "tools"
    env = {**os.environ, "LOCALTUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        # 16 steps, not the recipe's 36: its rows are 260 tokens (the tools ride in every prompt), and 16 steps
        # teach the call already; the suite's wall time matters.
        [sys.executable, "-m", "localtune", "quick", "--data", "demo-tools", "--max-steps", "16", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASS  tool template" in done.stdout  # verify rendered the tool conversation alike
    tuned, base = out / "gguf" / "tools-Q8_0.gguf", out / "gguf" / "base-Q8_0.gguf"
    recorded = (out / "chat_template.jinja").read_text()
    assert recorded.startswith(MARK) and "tools=localtune" in recorded.splitlines()[0]  # SmolLM2 has no tool format
    assert check_gguf(tuned).metadata["tokenizer.chat_template"] == recorded
    tools = json.loads(DEMO_TOOLS_DATA.read_text().splitlines()[0])["tools"]
    right = {"tuned": 0, "base": 0}
    replies = {"tuned": [], "base": []}
    for label, path in (("tuned", tuned), ("base", base)):
        llm = open_gguf(path, n_ctx=1024)
        for question, arguments in TOOL_HELD_OUT:
            session = ChatSession(llm, tools=tools, sampling=Sampling(temperature=0, max_tokens=64))
            session.ask(question)
            reply = session.last_reply
            replies[label].append((question, [c["function"] for c in reply.calls], reply.raw_calls))
            name = tools[0]["function"]["name"]
            right[label] += any(c["function"] == {"name": name, "arguments": arguments} for c in reply.calls)
    assert right["tuned"] >= len(TOOL_HELD_OUT) - 1, replies["tuned"]
    assert right["base"] <= 1, replies["base"]
