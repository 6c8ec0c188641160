"""Loss masks come from the rendered template: every assistant turn trains, prompts do not.

Checked on every tiny architecture's own chat template, including Qwen3's, which renders the
latest assistant turn differently from earlier ones.
"""

from __future__ import annotations

import copy

import pytest

from localtune.data.formats import Example
from localtune.data.inspect import TRAIN_CLOSE, TRAIN_OPEN, mark_trained
from localtune.data.template import (
    CHATML_EOS_TEMPLATE,
    CHATML_TEMPLATE,
    make_renderer,
    render_with_spans,
    resolve_chat_template,
)
from localtune.data.tokenize import IGNORE, tokenize_example
from localtune.model.tiny import ARCHITECTURES

# The token each family's template writes at the end of an assistant turn.
TURN_END = {
    "llama": "</s>",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "qwen2": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "qwen3_5": "<|im_end|>",
    "gemma": "<end_of_turn>",
    "gemma2": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "gemma4": "<turn|>",
    "phi3": "<|end|>",
    "granite": "<|end_of_text|>",
    "ministral": "</s>",
    "ministral3": "</s>",
    "smollm3": "<|im_end|>",
    "olmo2": "<|endoftext|>",
    "olmo3": "<|im_end|>",
    "qwen3_moe": "<|im_end|>",
    "gpt_oss": ("<|end|>", "<|return|>"),  # harmony: history turns end with <|end|>, the last with <|return|>
}
CONVERSATION = (
    ("user", "Ask one about rivers"),
    ("assistant", "Reply one is water"),
    ("user", "Ask two about light"),
    ("assistant", "Reply two is fast"),
)


def tokenize(tok, messages, **kw):
    template = resolve_chat_template(tok)
    ex = Example("t.jsonl:1", messages=tuple(messages))
    (row,) = tokenize_example(ex, tok, make_renderer(tok, template), max_seq_len=kw.pop("max_seq_len", 512), **kw)
    return row


def trained_runs(tok, row) -> list[str]:
    marked = mark_trained(row, tok)
    return [part.split(TRAIN_CLOSE)[0] for part in marked.split(TRAIN_OPEN)[1:]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_assistant_turn_trains_and_no_prompt_does(arch, tiny_tokenizer):
    tok = tiny_tokenizer(arch)
    row = tokenize(tok, CONVERSATION)
    runs = trained_runs(tok, row)
    assert len(runs) == 2, runs  # one trained span per assistant turn
    for run, reply in zip(runs, ("Reply one is water", "Reply two is fast")):
        assert reply in run.replace("▁", " ")
        ends = TURN_END[arch] if isinstance(TURN_END[arch], tuple) else (TURN_END[arch],)
        assert any(end in run for end in ends)  # the model learns to end its turn, so the GGUF stops
        assert "Ask" not in run
    assert row.trainable < len(row.input_ids) - 4


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_train_on_prompt_trains_everything(arch, tiny_tokenizer):
    tok = tiny_tokenizer(arch)
    row = tokenize(tok, CONVERSATION, train_on_prompt=True)
    assert row.labels == row.input_ids


def test_qwen3_earlier_turns_render_without_think_block(tiny_tokenizer):
    tok = tiny_tokenizer("qwen3")
    render = make_renderer(tok, resolve_chat_template(tok))
    msgs = [{"role": r, "content": c} for r, c in CONVERSATION]
    full, spans = render_with_spans(msgs, render)
    first, last = (full[a:b] for a, b in spans)
    assert first == "Reply one is water<|im_end|>\n"
    assert last == "<think>\n\n</think>\n\nReply two is fast<|im_end|>\n"


def test_spans_map_to_exact_tokens(tiny_tokenizer):
    """The labels are the assistant tokens of a tokenization of the full text, not of pieces."""
    tok = tiny_tokenizer("qwen2")
    row = tokenize(tok, CONVERSATION[:2])
    full_ids = tok(
        tok.apply_chat_template([{"role": r, "content": c} for r, c in CONVERSATION[:2]], tokenize=False),
        add_special_tokens=False,
    )["input_ids"]
    assert row.input_ids == full_ids
    trained = [t for t, lab in zip(row.input_ids, row.labels) if lab != IGNORE]
    assert tok.decode(trained) == "Reply one is water<|im_end|>\n"


def test_truncation_keeps_the_start(tiny_tokenizer):
    tok = tiny_tokenizer("llama")
    long = (("user", "short question"), ("assistant", "word " * 300))
    row = tokenize(tok, long, max_seq_len=40)
    assert len(row.input_ids) == 40 and row.truncated and row.full_length > 40
    assert row.input_ids == tokenize(tok, long).input_ids[:40]


def test_model_without_template_gets_chatml_with_eos(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer("llama"))
    tok.chat_template = None
    template = resolve_chat_template(tok)
    assert template.text == CHATML_EOS_TEMPLATE and template.origin == "default ChatML (+EOS)"
    runs = trained_runs(tok, tokenize(tok, CONVERSATION))
    assert len(runs) == 2 and all(run.rstrip("\n").endswith("<|im_end|></s>") for run in runs)


def test_model_without_template_but_chatml_tokens_gets_plain_chatml(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer("qwen2"))
    tok.chat_template = None
    template = resolve_chat_template(tok)
    assert template.text == CHATML_TEMPLATE and template.origin == "default ChatML"


def test_template_override_from_file(tmp_path, tiny_tokenizer):
    f = tmp_path / "t.jinja"
    f.write_text(CHATML_TEMPLATE)
    template = resolve_chat_template(tiny_tokenizer("llama"), str(f))
    assert template.text == CHATML_TEMPLATE and template.origin == str(f)


def test_text_rows_split_into_windows_and_end_with_eos(tiny_tokenizer):
    tok = tiny_tokenizer("llama")
    ex = Example("t.txt:1", text="word " * 100)
    rows = tokenize_example(ex, tok, None, max_seq_len=32)
    ids = tok("word " * 100)["input_ids"] + [tok.eos_token_id]
    assert [t for r in rows for t in r.input_ids] == ids  # nothing lost
    assert all(len(r.input_ids) <= 32 for r in rows) and len(rows) == -(-len(ids) // 32)
    assert all(r.labels == r.input_ids for r in rows)


def test_completion_trains_completion_and_eos_only(tiny_tokenizer):
    tok = tiny_tokenizer("llama")
    (row,) = tokenize_example(
        Example("t:1", prompt="The capital of France is", completion=" Paris"), tok, None, max_seq_len=64
    )
    trained = [t for t, lab in zip(row.input_ids, row.labels) if lab != IGNORE]
    assert trained[-1] == tok.eos_token_id
    assert "Paris" in tok.decode(trained) and "capital" not in tok.decode(trained)
    assert row.input_ids[0] == tok.bos_token_id and row.labels[0] == IGNORE


@pytest.mark.parametrize("arch", ["gemma4", "qwen3_5", "qwen3"])
def test_an_answer_that_starts_like_the_generation_prompt_trains_whole(arch, tiny_tokenizer):
    """Gemma 4's and Qwen3.5's generation prompts end with text ("<|channel>thought...", "<think>") that
    answered turns lack; an answer beginning with "<" must still train from its first character."""
    tok = tiny_tokenizer(arch)
    replies = ("<b>Reply one</b> is water", "<think>so</think> Reply two")
    conversation = (("user", "Ask one"), ("assistant", replies[0]), ("user", "Ask two"), ("assistant", replies[1]))
    runs = trained_runs(tok, tokenize(tok, conversation))
    assert len(runs) == 2, runs
    first, last = (run.replace("▁", " ") for run in runs)
    assert first.lstrip().startswith(replies[0]), first  # a history turn trains from its first character
    assert replies[1] in last, last  # the last one after what the generation prompt leaves (Qwen: a think block)
