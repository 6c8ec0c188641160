"""Prompt tuning, P-tuning and prefix tuning end to end through the run folder: train a tiny llama, export the
bundle, verify its llama.cpp routes against peft's teacher-forced forward, and chat through them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import chat, write_jsonl

from localtune.chat.routes import RouteSpec, find_routes, open_route, read_vectors, write_vectors
from localtune.chat.session import ChatSession, Sampling
from localtune.config import load_config
from localtune.export.bundle import export_run
from localtune.export.verify_prompts import check_route
from localtune.runs.layout import RunDir
from localtune.train.run import train_run

FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(8)]
LR = {"prompt_tuning": 1e-1, "p_tuning": 3e-2, "prefix_tuning": 2e-1}
N = 4


def _config(model_dir, data, name: str):
    values = {
        "model.name_or_path": str(model_dir),
        "data.path": str(data),
        "adapter.method": name,
        "adapter.virtual_tokens": N,
        "train.max_steps": 6,
        "train.lr": LR[name],
        "train.micro_batch_size": 2,
        "train.grad_accum": 1,
        "data.val_fraction": 0,
        "train.seed": 7,
        "train.load_in_4bit": False,
    }
    return load_config(None, {k: (v, "test") for k, v in values.items()})


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    made = {}

    def get(name: str):
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            data = write_jsonl(root / "facts.jsonl", FACTS)
            run = root / "run"
            assert train_run(_config(tiny_model_dir("llama"), data, name), run).status == "finished"
            made[name] = run, export_run(run, ["f32"], say=lambda m: None)
        return made[name]

    return get


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning"])
def test_virtual_bundle_verifies_and_chats_without_virtual_tokens(name, exported, tmp_path, cli):
    run_dir, bundle = exported(name)
    run = RunDir(run_dir)
    assert [f.path.name for f in bundle.tuned] == ["run-F32.gguf"] and [f.path.name for f in bundle.base] == [
        "base-F32.gguf"
    ]
    assert run.soft_prompt.is_file() and not run.merged.exists()
    for f in bundle.tuned + bundle.base:  # the portable GGUF, and the base GGUF + input embeddings
        assert f.verify.passed, f.verify.render()
        assert (f.path.parent / (f.path.name + ".verify.json")).is_file()
    card, modelfile = run.card.read_text(), run.modelfile.read_text()
    assert "soft_prompt.safetensors" in card and "logit bias" in card and "PASS" in card
    if (
        "<|im_start|>" in run.chat_template.read_text()
    ):  # Ollama's template must put the virtual tokens first, as the GGUF's does
        assert "FROM ./run-F32.gguf" in modelfile and "logit bias" in modelfile
        assert 'TEMPLATE """<|localtune_virtual_0|>' in modelfile and f"<|localtune_virtual_{N - 1}|>" in modelfile
    else:
        assert not any(line.startswith("FROM") for line in modelfile.splitlines()), modelfile
    tuned, base = find_routes(run_dir)
    assert tuned.kind == "portable" and base.kind == "plain"
    route = open_route(tuned, n_ctx=512)
    session = ChatSession(route, sampling=Sampling(temperature=1.0, top_p=1.0, max_tokens=200, seed=3))
    answer = session.ask("Tell me a long story about item 3.")
    sampled = [int(t) for t in route.llm.input_ids[: route.llm.n_tokens]]
    assert answer and route.virtual_ids and route.virtual_ids == sampled[:N]  # the prompt starts with them
    prompt_len = len(route.prompt(route.chat_ids(session.messages("x")[:1])))
    assert not set(sampled[prompt_len:]) & set(route.virtual_ids), "a virtual token was sampled"
    # damaged vectors: the base GGUF + input-embeddings route no longer gives peft's logits
    bad = tmp_path / "bad.safetensors"
    vectors = read_vectors(run.soft_prompt)
    write_vectors(bad, vectors[::-1] * 1.5, name)
    folder = load_config(run.config).model.name_or_path
    good = check_route(RouteSpec(bundle.base[0].path, vectors=run.soft_prompt), folder, run.adapter, file_type="f32")
    broken = check_route(RouteSpec(bundle.base[0].path, vectors=bad), folder, run.adapter, file_type="f32")
    print(f"{name}: {good.detail} | damaged: {broken.detail}")
    assert good.passed and not broken.passed, (good.detail, broken.detail)
    # `localtune verify` against the run folder checks the portable GGUF against peft, as the export did
    result = cli("verify", bundle.tuned[0].path, "--against", run_dir)
    assert result.exit_code == 0 and "portable route vs peft" in result.output, result.output


def _peft_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Greedy continuation by peft's teacher-forced forward, one full pass per token (never HF generate)."""
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


def test_prefix_bundle_verifies_and_chat_repins_after_trimming(exported):
    from localtune.export.verify_prompts import peft_model

    run_dir, bundle = exported("prefix_tuning")
    run = RunDir(run_dir)
    assert bundle.tuned == [] and run.prefix_sidecar.is_file() and not run.merged.exists()
    assert bundle.base[0].verify.passed, bundle.base[0].verify.render()
    assert "prefix route vs peft" in bundle.base[0].verify.render()
    assert (
        not any(line.startswith("FROM") for line in run.modelfile.read_text().splitlines())
        and "Ollama and llama-server cannot" in run.card.read_text()
    )
    tuned, base = find_routes(run_dir)
    assert tuned.kind == "prefix" and tuned.gguf == base.gguf == bundle.base[0].path
    route = open_route(tuned, n_ctx=160, f32_kv=True)
    notices = []
    session = ChatSession(route, sampling=Sampling(temperature=0.0, max_tokens=24), notice=notices.append)
    model = peft_model(load_config(run.config).model.name_or_path, run.adapter)
    for i in range(6):  # a small window: the oldest exchanges are dropped
        session.ask(f"Tell me about item {i} and everything you know about it in detail please")
        ids = session.route.chat_ids(session.history[:-1])  # the prompt of the turn just answered
        sampled = [int(t) for t in route.llm.input_ids[route.n_virtual + len(ids) : route.llm.n_tokens]]
        want = _peft_greedy(model, ids, len(sampled))
        assert sampled == want, (i, sampled, want)  # peft's answer, after trimming too
    assert notices and len(session.history) < 12
    route.llm.reset()  # the cache loses the prefix: the next turn pins it again
    pins = route.pinned.pins
    session.reset()
    session.ask("What is item 2?")
    assert route.pinned.pins == pins + 1
    keys, values = route.pinned.read_back()
    from localtune.converters.prefix_sidecar import read_sidecar

    prefix = read_sidecar(run.prefix_sidecar)
    assert np.array_equal(keys, prefix.keys) and np.array_equal(values, prefix.values)


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning"])
def test_quick_runs_every_phase(name, tiny_model_dir, tmp_path):
    """`quick --method` on a tiny llama: train, export, sample and eval all finish; the bundle holds the
    portable GGUF (prompt tuning) or the base GGUF and the KV-cache sidecar (prefix tuning)."""
    from localtune.quick import run_quick

    rows = FACTS + [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in (8, 9)]
    cfg = _config(tiny_model_dir("llama"), write_jsonl(tmp_path / "facts.jsonl", rows), name)
    cfg.set("train.max_steps", 3, "test")
    cfg.set("data.val_fraction", 0.2, "test")
    messages = []
    result = run_quick(cfg, tmp_path / "run", say=messages.append)
    assert result.exit_code == 0, messages
    run = RunDir(tmp_path / "run")
    state = json.loads(run.quick_json.read_text())
    assert state["done"] == ["preflight", "train", "export", "eval"], state
    names = sorted(p.name for p in run.gguf.iterdir())
    if name == "prompt_tuning":
        assert {"run-Q8_0.gguf", "base-Q8_0.gguf", "soft_prompt.safetensors"} <= set(names), names
        assert find_routes(run.path)[0].kind == "portable"
    else:
        assert "base-Q8_0.gguf" in names and run.prefix_sidecar.is_file() and not run.tuned_ggufs(), names
        assert find_routes(run.path)[0].kind == "prefix"
    assert result.sample["fine-tuned"] and "base" in result.sample
    report = result.eval_report
    assert report is not None and {s.role for s in report.systems} >= {"tuned", "base"}
    tuned = next(s.name for s in report.systems if s.role == "tuned")
    assert all(row.answers[tuned].ref_tokens > 0 for row in report.rows)


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning"])
def test_eval_counts_the_virtual_positions_in_the_context(name, exported, tmp_path):
    """A row that fits the context only without the route's N virtual positions is skipped, not sent to
    llama.cpp; with N more positions of context it is scored."""
    from localtune.evaluation import runner
    from localtune.evaluation.rows import EvalRows, NothingToEvaluate, file_rows
    from localtune.evaluation.runner import Settings

    run_dir, _ = exported(name)
    tuned, base = find_routes(run_dir)
    assert tuned.n_virtual == N
    encoder = runner.run_encoder(run_dir)
    rows = EvalRows(file_rows(str(write_jsonl(tmp_path / "row.jsonl", FACTS[3:4]))), [], "test")
    p, a = encoder(rows.rows[0])
    need = len(p) + len(a) + runner._limit(len(a), Settings())
    with pytest.raises(NothingToEvaluate, match=f"needs {need + N} tokens with the {N} virtual ones"):
        runner.plan(rows, encoder, [tuned.gguf], base.gguf, Settings(shots=0, n_ctx=need + N - 1))
    settings = Settings(shots=0, n_ctx=need + N)
    enough = runner.plan(rows, encoder, [tuned.gguf], base.gguf, settings)
    results, interrupted = runner.run(enough, settings)
    assert not interrupted and len(results) == 1 and all(x.ref_tokens == len(a) for x in results[0].answers.values())


PERSONA = "You are Captain Byte. Start every answer with Ahoy, matey! and end it with Fair winds, Captain Byte."
# Measured on a shared 2-core CPU (train ~400 s, export ~175 s): 12 steps of 4 rows at lr 0.1, loss 1.66 -> ~1.0;
# the portable GGUF put a marker in 3 of 16 (answer, marker) pairs, the base and the persona-prefixed base in 0.
STEPS, LR_PERSONA, MIN_HITS = 12, 0.1, 2


@pytest.mark.slow
def test_prompt_tuning_teaches_captain_byte(tmp_path):
    """Prompt tuning on SmolLM2-135M with the demo data, started from the persona's text: llama.cpp running the
    portable GGUF (vectors baked in as control tokens) answers held-out questions with the taught markers
    more often than the base does, and more often than the base with the persona text in front of the prompt
    (what the vectors started as)."""
    from localtune.demo import DEMO_DATA, DEMO_MARKERS, HELD_OUT_ANSWERS

    values = {
        "model.name_or_path": "smollm2",
        "data.path": str(DEMO_DATA),
        "adapter.method": "prompt_tuning",
        "adapter.virtual_tokens": 27,  # the persona's length in SmolLM2's tokens
        "adapter.init_text": PERSONA,
        "train.max_steps": STEPS,
        "train.lr": LR_PERSONA,
        "train.micro_batch_size": 4,
        "train.grad_accum": 1,
        "train.warmup_ratio": 0.0,
        "train.load_in_4bit": False,
        "train.gradient_checkpointing": False,
        "train.seed": 7,
    }
    run = tmp_path / "run"
    assert train_run(load_config(None, {k: (v, "test") for k, v in values.items()}), run).status == "finished"
    bundle = export_run(run, ["q8_0"], say=lambda m: None)
    assert all(f.verify.passed for f in bundle.tuned + bundle.base), [f.verify.render() for f in bundle.tuned]
    tuned, base = find_routes(run)
    assert tuned.kind == "portable"
    modelfile = RunDir(run).modelfile.read_text()  # SmolLM2 is ChatML: Ollama's template starts with them too
    assert 'TEMPLATE """<|localtune_virtual_0|>' in modelfile and "<|localtune_virtual_26|>" in modelfile
    questions = [q for q, _ in HELD_OUT_ANSWERS]
    sampling = Sampling(temperature=0, max_tokens=64)
    hits, answers = {}, {}
    for label, spec in (("tuned", tuned), ("base", base), ("persona", base)):
        route = open_route(spec, n_ctx=512)
        if label == "persona":  # the persona's tokens where the virtual ones start: before the chat template
            persona = route.llm.tokenize(PERSONA.encode(), add_bos=False, special=False)
            answers[label] = [
                route.llm.create_completion(
                    persona + route.chat_ids([{"role": "user", "content": q}]), temperature=0, max_tokens=64
                )["choices"][0]["text"]
                for q in questions
            ]
        else:
            answers[label] = [ChatSession(route, sampling=sampling).ask(q) for q in questions]
        hits[label] = sum(m in a for a in answers[label] for m in DEMO_MARKERS)
        route.close()
    print(hits, answers)
    assert hits["tuned"] >= MIN_HITS and hits["tuned"] > hits["persona"] and hits["base"] == 0, (hits, answers)
