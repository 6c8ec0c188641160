"""Tool calls, tool results and reasoning in training rows: checked line by line, rendered through the
model's own template (or localtune's tool format where it has none), and masked token by token: the
assistant's calls, reasoning and end-of-turn train, tool results never do, under every reasoning policy.
"""

from __future__ import annotations

import json

import pytest

from localtune.data.dataset import load_examples, template_for
from localtune.data.template import make_renderer
from localtune.data.template_policy import MARK
from localtune.data.tokenize import IGNORE, tokenize_example
from localtune.errors import UsageError
from localtune.model.tiny import LLAMA3_TOOL_TEMPLATE, MISTRAL_TOOL_TEMPLATE, QWEN3_TOOL_TEMPLATE
from tests.helpers import write_jsonl

TIDE = {
    "type": "function",
    "function": {
        "name": "get_tide",
        "description": "High and low water at a port",
        "parameters": {
            "type": "object",
            "properties": {"port": {"type": "string"}, "day": {"type": "string"}},
            "required": ["port"],
        },
    },
}


def call(name: str, args, call_id: str = "abc123def") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


# user, call (with reasoning), result, answer (with reasoning); then a second user turn in the same shape.
CONVERSATION = [
    {"role": "user", "content": "What is the tide at Oslo?"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "Oslo needs a lookup",
        "tool_calls": [call("get_tide", {"port": "Oslo", "day": "today"})],
    },
    {"role": "tool", "content": "High water 14:05", "tool_call_id": "abc123def"},
    {"role": "assistant", "content": "High water is at 14:05.", "reasoning_content": "The table says 14:05"},
    {"role": "user", "content": "And at Bergen tomorrow?"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "Another lookup for Bergen",
        "tool_calls": [call("get_tide", {"port": "Bergen", "day": "tomorrow"}, "xyz789uvw")],
    },
    {"role": "tool", "content": "Low water 09:40", "name": "get_tide"},
    {"role": "assistant", "content": "Low water is at 09:40.", "reasoning_content": "Read the second result"},
]
ASSISTANT = [i for i, m in enumerate(CONVERSATION) if m["role"] == "assistant"]
LAST_USER = max(i for i, m in enumerate(CONVERSATION) if m["role"] == "user")
TURN_END = {"qwen3": ("<|im_end|>",), "llama3": ("<|eot_id|>", "<|eom_id|>"), "mistral": ("</s>",)}
# (tiny tokenizer, template): the family's own tool-calling template, and its plain tiny template, which
# has no tool support and so gets localtune's tool format.
CASES = [
    ("qwen3", QWEN3_TOOL_TEMPLATE),
    ("llama3", LLAMA3_TOOL_TEMPLATE),
    ("mistral", MISTRAL_TOOL_TEMPLATE),
    ("qwen3", None),
    ("llama3", None),
    ("mistral", None),
]
IDS = ["qwen3-tools", "llama3-tools", "mistral-tools", "qwen3-plain", "llama3-plain", "mistral-plain"]


def example(tmp_path, messages=CONVERSATION, tools=(TIDE,)):
    path = write_jsonl(tmp_path / "tools.jsonl", [{"tools": list(tools), "messages": messages}])
    (ex,) = load_examples(str(path)).examples
    return ex


def trained_runs(tok, row) -> tuple[list[str], str]:
    """The decoded runs of consecutive trained tokens, and the decoded text of every untrained token."""
    runs, current, untrained = [], [], []
    for tid, label in zip(row.input_ids, row.labels):
        assert label in (tid, IGNORE)
        if label == IGNORE:
            if current:
                runs.append(current)
                current = []
            untrained.append(tid)
        else:
            current.append(tid)
    if current:
        runs.append(current)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
    return [decode(r) for r in runs], decode(untrained)


@pytest.mark.parametrize("policy", ["last_turn", "drop", "keep_all"])
@pytest.mark.parametrize(("arch", "template"), CASES, ids=IDS)
def test_calls_reasoning_and_turn_ends_train_and_results_do_not(tmp_path, tiny_model_dir, arch, template, policy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir(arch))
    ex = example(tmp_path)
    try:
        chosen = template_for([ex], tok, template, policy)
    except UsageError as exc:  # only a template that drops earlier reasoning itself may refuse keep_all
        assert policy == "keep_all" and template is QWEN3_TOOL_TEMPLATE, exc
        assert "drops the reasoning of earlier turns" in exc.message
        return
    assert chosen.text.startswith(MARK)
    rows = tokenize_example(ex, tok, make_renderer(tok, chosen), max_seq_len=4096)
    # One rendering of the whole, or one row per user turn: under last_turn (so that every turn's reasoning
    # trains as the model sees it at that turn), and where the template moves earlier text once later turns
    # follow (Mistral puts the tools before the last user turn).
    split = policy == "last_turn" or template is MISTRAL_TOOL_TEMPLATE
    assert len(rows) == (2 if split else 1)
    groups = [ASSISTANT[:2], ASSISTANT[2:]] if split else [ASSISTANT]
    for row, group in zip(rows, groups):
        runs, untrained = trained_runs(tok, row)
        full = tok.decode(row.input_ids, skip_special_tokens=False)
        assert len(runs) == len(group), runs  # one run per trained assistant turn, nothing else
        for run, i in zip(runs, group):
            m = CONVERSATION[i]
            assert m["content"] in run
            for c in m.get("tool_calls", ()):
                assert c["function"]["name"] in run
                for value in c["function"]["arguments"].values():
                    assert json.dumps(value) in run  # the arguments train, written as JSON
            assert run.rstrip().endswith(TURN_END[arch]), run  # the end-of-turn token trains
            if policy == "drop":
                assert m["reasoning_content"] not in full  # dropped by the policy: not rendered at all
            elif m["reasoning_content"] in full or template in (None, QWEN3_TOOL_TEMPLATE):
                # Qwen3's template and localtune's format write every kept reasoning; Llama-3's writes only
                # the call of a calling turn, so its reasoning can only train where the template writes it.
                assert m["reasoning_content"] in run
        for i in range(group[0]):  # an earlier user turn, in a row of a later one: context only
            m = CONVERSATION[i]
            if policy == "last_turn" and m["role"] == "assistant":
                assert m["reasoning_content"] not in full  # an earlier turn's reasoning, as at inference
            assert m["content"] in untrained
        for m in CONVERSATION[: group[-1]]:
            if m["role"] in ("user", "tool"):
                assert m["content"] in untrained and not any(m["content"] in run for run in runs)


@pytest.mark.parametrize(("arch", "template"), CASES[:2] + CASES[3:4], ids=IDS[:2] + IDS[3:4])
def test_train_on_prompt_still_leaves_tool_results_untrained(tmp_path, tiny_model_dir, arch, template):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir(arch))
    ex = example(tmp_path)
    chosen = template_for([ex], tok, template, "last_turn")  # a row per user turn: each trains its own turn
    rows = tokenize_example(ex, tok, make_renderer(tok, chosen), max_seq_len=4096, train_on_prompt=True)
    assert len(rows) == 2
    (first, untrained_first), (second, untrained) = (trained_runs(tok, row) for row in rows)
    assert "What is the tide at Oslo?" in "".join(first) and "What is the tide at Oslo?" in untrained
    trained = "".join(first + second)
    untrained += untrained_first
    assert "What is the tide at Oslo?" in trained and "And at Bergen tomorrow?" in trained
    assert "High water 14:05" in untrained and "Low water 09:40" in untrained
    assert "High water 14:05" not in trained and "Low water 09:40" not in trained


def test_localtune_tool_format_renders_alike_in_llama_cpp_python(tmp_path, tiny_model_dir):
    """The wrapped template is what the GGUF embeds; llama-cpp-python's own formatter must read it as
    transformers does, tools, calls, results and reasoning included."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))
    chosen = template_for([example(tmp_path)], tok, None, "last_turn")
    for upto in (3, 7, len(CONVERSATION)):  # the full conversation last: its text is checked below
        msgs = CONVERSATION[:upto]
        want = tok.apply_chat_template(
            msgs, tools=[TIDE], chat_template=chosen.text, tokenize=False, add_generation_prompt=upto != 8
        )
        got = Jinja2ChatFormatter(chosen.text, eos_token=tok.eos_token, bos_token="", add_generation_prompt=upto != 8)(
            messages=msgs, tools=[TIDE]
        ).prompt
        assert got == want
    assert '<tool_call>\n{"name": "get_tide", "arguments": {"port": "Bergen", "day": "tomorrow"}}\n</tool_call>' in want
    assert "<tool_response>\nLow water 09:40\n</tool_response>" in want and '"name": "get_tide"' in want
    assert "<think>\nRead the second result\n</think>" in want and "Oslo needs a lookup" not in want
    again = template_for([example(tmp_path)], tok, chosen.text, "last_turn")  # the run's recorded template
    assert again.text == chosen.text  # is not wrapped twice


def test_inline_think_and_sharegpt_function_calls_are_read(tmp_path):
    rows = [
        {
            "tools": json.dumps([TIDE["function"]]),  # ShareGPT keeps tools as JSON text, bare functions
            "conversations": [
                {"from": "human", "value": "Tide at Oslo?"},
                {"from": "function_call", "value": json.dumps({"name": "get_tide", "arguments": {"port": "Oslo"}})},
                {"from": "observation", "value": "High water 14:05"},
                {"from": "gpt", "value": "<think>\nA table lookup.\n</think>\n\nHigh water is at 14:05."},
            ],
        }
    ]
    (ex,) = load_examples(str(write_jsonl(tmp_path / "sg.jsonl", rows))).examples
    msgs = ex.as_messages()
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["content"] == "" and msgs[1]["tool_calls"][0]["function"] == {
        "name": "get_tide",
        "arguments": {"port": "Oslo"},
    }
    assert msgs[2]["tool_call_id"] == msgs[1]["tool_calls"][0]["id"] and msgs[2]["name"] == "get_tide"
    assert msgs[3] == {
        "role": "assistant",
        "content": "High water is at 14:05.",
        "reasoning_content": "A table lookup.",
    }
    assert ex.tools[0]["function"]["name"] == "get_tide"


def bad(*messages, tools=(TIDE,)):
    return {"tools": list(tools), "messages": list(messages)}


USER = {"role": "user", "content": "Tide at Oslo?"}
ANSWER = {"role": "assistant", "content": "High water is at 14:05."}
RESULT = {"role": "tool", "content": "High water 14:05"}


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        (
            bad(USER, {"role": "assistant", "tool_calls": [call("get_weather", {})]}, RESULT, ANSWER),
            "messages[1].tool_calls[0].function.name",
            ("'get_weather'", "not in the row's tools", "'get_tide'"),
        ),
        (
            bad(USER, {"role": "assistant", "tool_calls": [call("get_tide", "[1, 2]")]}, RESULT, ANSWER),
            "messages[1].tool_calls[0].function.arguments",
            ("must be a JSON object", "[1, 2]"),
        ),
        (
            bad(USER, {"role": "assistant", "tool_calls": [call("get_tide", "{port: Oslo}")]}, RESULT, ANSWER),
            "messages[1].tool_calls[0].function.arguments",
            ("not valid JSON", "{port: Oslo}"),
        ),
        (bad(USER, RESULT, ANSWER), "messages[1].role", ("a tool result with no call",)),
        (
            bad(USER, {"role": "assistant", "tool_calls": [call("get_tide", {})]}, ANSWER),
            "messages[2].role",
            ("before the result of the call to 'get_tide'", "abc123def"),
        ),
        (
            bad(USER, {"role": "assistant", "tool_calls": [call("get_tide", {})]}, {**RESULT, "tool_call_id": "nope"}),
            "messages[2].tool_call_id",
            ("'nope'", "'abc123def'"),
        ),
        (
            bad(USER, {"role": "assistant", "tool_calls": [call("get_tide", {})]}, RESULT, ANSWER, tools=()),
            "messages[1].tool_calls[0].function.name",
            ("no tools list",),
        ),
        (
            {"tools": [{"type": "function", "function": {"description": "x"}}], "messages": [USER, ANSWER]},
            "tools[0]",
            ("needs a function name",),
        ),
        (
            bad(USER, {"role": "assistant", "tool_calls": [call("get_tide", {})]}, RESULT),
            "messages[2].role",
            ("ends on a 'tool' message",),
        ),
    ],
    ids=["unknown-tool", "args-not-object", "args-not-json", "result-without-call", "no-result", "wrong-id",
         "no-tools", "tool-without-name", "ends-on-result"],
)  # fmt: skip
def test_bad_tool_rows_name_line_field_and_fix(tmp_path, row, field, words):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [USER, ANSWER]}, row])
    loaded = load_examples(str(path), strict=False)
    (problem,) = loaded.problems
    assert problem.where == f"{path}:2" and problem.field == field, problem
    for word in words:
        assert word in problem.message, problem.message
    assert problem.fix


def test_demo_tools_rows_are_valid_generated_and_keep_the_held_out_questions_out():
    from localtune.demo import DEMO_TOOLS_DATA, TOOL_HELD_OUT
    from localtune.demo.tool_rows import jsonl

    assert DEMO_TOOLS_DATA.read_text(encoding="utf-8") == jsonl()  # the file is what tool_rows.py writes
    loaded = load_examples("demo-tools")
    assert len(loaded.examples) == 48 and not loaded.problems
    seen = {json.dumps(m.get("tool_calls")) for ex in loaded.examples for m in ex.as_messages()}
    text = DEMO_TOOLS_DATA.read_text(encoding="utf-8")
    for question, arguments in TOOL_HELD_OUT:
        assert question not in text and f'"port": "{arguments["port"]}"' not in text
    assert len(seen) > 30  # varied calls, not one memorised answer


def test_a_repeated_call_only_turn_keeps_the_result_between_untrained(tmp_path, tiny_model_dir):
    """Two identical calls around a result: the first call's span must end at its own turn, not the second's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))
    again = {"role": "assistant", "content": "", "tool_calls": [call("get_tide", {"port": "Oslo"}, "abc123dez")]}
    msgs = [CONVERSATION[0], {**again, "tool_calls": [call("get_tide", {"port": "Oslo"})]}]
    msgs += [{"role": "tool", "content": "error, try again"}, again]
    ex = example(tmp_path, msgs)
    chosen = template_for([ex], tok, QWEN3_TOOL_TEMPLATE, "last_turn")
    (row,) = tokenize_example(ex, tok, make_renderer(tok, chosen), max_seq_len=4096)
    runs, untrained = trained_runs(tok, row)
    assert len(runs) == 2 and "error, try again" in untrained and not any("error" in r for r in runs)


def test_lenient_shapes_of_real_datasets_are_read(tmp_path):
    rows = [
        {"messages": [USER, ANSWER], "tools": None},  # a Parquet/HF column that is null on rows without tools
        {
            "tools": [{"type": "function", "function": {"name": "now", "parameters": '{"type": "object"}'}}],
            "conversations": [
                {"from": "human", "value": "Time?"},
                {"from": "function_call", "value": {"name": "now", "arguments": None}},  # an object, no arguments
                {"from": "observation", "value": [{"type": "text", "text": "12:00"}]},  # content parts
                {"from": "gpt", "value": "Noon."},
            ],
        },
    ]
    a, b = (
        load_examples(str(write_jsonl(tmp_path / "mixed.jsonl", rows[:1]))).examples
        + load_examples(str(write_jsonl(tmp_path / "sg.jsonl", rows[1:]))).examples
    )
    assert a.tools is None and a.details is None
    msgs = b.as_messages()
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "now", "arguments": {}}
    assert msgs[2]["content"] == "12:00" and b.tools[0]["function"]["parameters"] == {"type": "object"}


def test_reasoning_a_template_would_strip_is_refused(tmp_path, tiny_model_dir):
    """A template that keeps only what follows </think> (DeepSeek-R1 distills') would train no reasoning."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))
    strips = (
        "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'].split('</think>')[-1] "
        "+ '<|im_end|>\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
        "{%- endif -%}"
    )
    thought = {"role": "assistant", "content": "4.", "reasoning_content": "Two and two."}
    ex = example(tmp_path, [USER, thought], tools=())
    with pytest.raises(UsageError, match="removes it"):
        template_for([ex], tok, strips, "last_turn")
    assert template_for([ex], tok, strips, "drop").text.startswith(MARK)  # dropping it is what was asked
