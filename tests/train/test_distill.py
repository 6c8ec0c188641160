"""`localtune distill` (train/distill.py) on a tiny llama: a LoRA student of a LLaMA-Adapter run and of a
prompt-tuning run comes close to its teacher on held-out rows, measured with peft's own forward passes of the
saved adapters; the student's folder exports to a verified GGUF; the LLaMA-Adapter run itself is refused by
export (exit 2) and chats on transformers with the tokens of a plain argmax loop over peft's model."""

from __future__ import annotations

import pytest
from helpers import chat, localtune_process, write_jsonl
from test_methods import FACTS, config

from localtune.errors import UsageError
from localtune.events import ListSink, StepMetrics
from localtune.train.distill import distill_run
from localtune.train.run import train_run

# distillation settings that make a LoRA r=4 follow a tiny random teacher in a few steps
DISTILL = {"llama_adapter": (16, 1e-2), "prompt_tuning": (32, 1e-2)}
UNQUANTIZED = {"train.load_in_4bit": False}  # the teachers train faster on an fp32 base; 4-bit adds nothing here
HELD_OUT = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in (20, 31, 45)]


@pytest.fixture(scope="module")
def distilled(tiny_model_dir, tmp_path_factory):
    """{method: (teacher run, distilled run, distillation events)}, trained once for the module."""
    root = tmp_path_factory.mktemp("distill")
    data = write_jsonl(root / "facts.jsonl", FACTS)
    model = tiny_model_dir("llama")
    out = {}
    for name, (steps, lr) in DISTILL.items():
        run = root / name
        assert train_run(config(model, data, name, **UNQUANTIZED), run).status == "finished"
        sink = ListSink()
        result = distill_run(run, steps=steps, lr=lr, sinks=[sink])
        assert result.status == "finished" and result.out_dir == run / "distilled"
        out[name] = (run, result.out_dir, sink)
    return out


def _held_out_rows(run) -> list[list[int]]:
    from transformers import AutoTokenizer

    from localtune.config import load_config

    cfg = load_config(run / "config.yaml")
    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    template = (run / "chat_template.jinja").read_text()
    texts = [tok.apply_chat_template(r["messages"], chat_template=template, tokenize=False) for r in HELD_OUT]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _mean_kl(p_model, q_model, rows) -> float:
    """Mean over every position of the rows of KL(p || q), nats per token; virtual-token positions cut off."""
    import torch

    total, n = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids])
            p = torch.log_softmax(p_model(input_ids=x).logits[0, -len(ids) :].double(), -1)
            q = torch.log_softmax(q_model(input_ids=x).logits[0, -len(ids) :].double(), -1)
            total += float((p.exp() * (p - q)).sum())
            n += len(ids)
    return total / n


@pytest.mark.parametrize("name", list(DISTILL))
def test_student_is_close_to_its_teacher_on_held_out_rows(name, distilled, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, student_dir, sink = distilled[name]
    model = tiny_model_dir("llama")
    load = lambda: AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()  # noqa: E731
    teacher = PeftModel.from_pretrained(load(), run / "adapter").eval()
    student = PeftModel.from_pretrained(load(), student_dir / "adapter").eval()
    rows = _held_out_rows(run)
    to_base, to_student = _mean_kl(teacher, load(), rows), _mean_kl(teacher, student, rows)
    # measured (peft 0.21.2, torch 2 CPU, these seeds): KL(teacher||base) -> KL(teacher||student), nats/token:
    # llama_adapter 0.750 -> 0.100 (13%, 16 steps), prompt_tuning 0.703 -> 0.144 (20%, 32 steps)
    figures = f"{name}: KL(teacher||base) {to_base:.3f}, KL(teacher||student) {to_student:.3f} nats/token"
    assert to_base > 0.2, figures  # the teacher's adapter changed the model
    assert to_student <= 0.3 * to_base and to_student < 0.2, figures
    steps = sink.of(StepMetrics)
    assert len(steps) == DISTILL[name][0] and steps[-1].loss < 0.3 * steps[0].loss, [s.loss for s in steps]


def test_distilled_run_is_a_lora_run_that_exports_and_verifies(distilled):
    from localtune.config import load_config
    from localtune.export.bundle import export_run
    from localtune.runs.layout import RunDir

    _, student_dir, _ = distilled["llama_adapter"]
    run = RunDir(student_dir)
    assert load_config(run.config).adapter.method == "lora"
    info = run.load_info()
    assert info.status == "finished" and info.method == "lora" and info.extra["teacher_method"] == "llama_adapter"
    assert run.chat_template.is_file() and run.events.is_file() and run.has_adapter
    bundle = export_run(student_dir, ["f32"], say=lambda m: None)
    assert bundle.tuned and all(f.verify is not None and f.verify.passed for f in bundle.tuned)


def test_llama_adapter_export_is_refused_with_the_way_out(distilled):
    run, _, _ = distilled["llama_adapter"]
    done = localtune_process("export", run, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "gated second attention" in done.stderr and f"localtune distill {run}" in done.stderr


def test_distill_refuses_lora_runs_and_runs_without_an_adapter(distilled, tmp_path):
    import shutil

    run, student_dir, _ = distilled["prompt_tuning"]
    with pytest.raises(UsageError, match="a LoRA already") as info:
        distill_run(student_dir)
    assert info.value.exit_code == 2
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy2(run / "config.yaml", unfinished / "config.yaml")
    with pytest.raises(UsageError, match="no finished adapter") as info:
        distill_run(unfinished)
    assert info.value.exit_code == 2


def test_llama_adapter_chat_gives_the_greedy_tokens_of_peft_forward_passes(distilled, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localtune.chat.hf_session import HFChatSession, stop_ids
    from localtune.chat.session import Sampling
    from localtune.model.run_model import load_run_model

    run, _, _ = distilled["llama_adapter"]
    model = tiny_model_dir("llama")
    rm = load_run_model(run)
    session = HFChatSession(rm.model, rm.tokenizer, rm.template, sampling=Sampling(temperature=0, max_tokens=12))
    pieces: list[str] = []
    answer = session.ask("What is item 3?", on_token=pieces.append)

    # the reference: peft's own model, loaded afresh, argmax of a full forward pass per token
    tok = AutoTokenizer.from_pretrained(model)
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), run / "adapter"
    )
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is item 3?"}],
        chat_template=rm.template,
        tokenize=False,
        add_generation_prompt=True,
    )
    seq = tok(text, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    stops = stop_ids(tok, rm.template)
    with torch.no_grad():
        for _ in range(12):
            nxt = int(reference.eval()(input_ids=torch.tensor([seq + new])).logits[0, -1].argmax())
            if nxt in stops:
                break
            new.append(nxt)
    assert new, "the reference produced no token"
    assert answer == tok.decode(new, skip_special_tokens=True) and "".join(pieces) == answer
    assert session.history[-1] == {"role": "assistant", "content": answer}


def test_a_freeze_run_is_a_teacher_with_its_trained_tensors_in_place(tiny_model_dir, tmp_path):
    """distill (and anything else that loads a run's model) takes freeze tuning's base with the trained tensors
    swapped in: its logits are those of the base loaded by transformers with the run's tensors copied in."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from localtune.model.run_model import load_run_model

    data = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    model = tiny_model_dir("llama")
    run = tmp_path / "freeze"
    over = {**UNQUANTIZED, "adapter.freeze_modules": "last:1", "train.lr": 1e-2, "train.max_steps": 4}
    assert train_run(config(model, data, "freeze", **over), run).status == "finished"
    teacher = load_run_model(run).model
    reference = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    reference.load_state_dict(load_file(str(run / "adapter" / "trainable.safetensors")), strict=False)
    ids = torch.tensor([[1, 5, 9, 77, 300, 42]])
    with torch.no_grad():
        got, want, base = (m(input_ids=ids).logits for m in (teacher, reference, plain))
    assert float((want - base).abs().max()) > 1e-2 and torch.allclose(got, want, atol=1e-6)
    result = distill_run(run, steps=2, lr=1e-2)
    assert result.status == "finished" and (result.out_dir / "adapter" / "adapter_model.safetensors").is_file()
