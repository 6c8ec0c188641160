"""Replies taken apart (reasoning, answer, tool calls) for every format, live and whole; a session with tools on a
tiny GGUF, whose prompts are checked against transformers' and llama-cpp-python's own renders of the template."""

from __future__ import annotations

import json

import pytest

from localtune.chat.tool_calls import MARKUP_TOKENS, ReplyStream, load_tools, parse_reply

WEATHER = {"name": "get_weather", "arguments": {"city": "Oslo"}}
TIME = {"name": "get_time", "arguments": {"zone": "CET", "24h": True}}


def fn(call: dict) -> dict:
    return {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}


def hermes(call: dict, arguments=None) -> str:
    args = call["arguments"] if arguments is None else arguments
    return f"<tool_call>\n{json.dumps({'name': call['name'], 'arguments': args})}\n</tool_call>"


HARMONY_CALL = (
    "<|channel|>analysis<|message|>The user wants the weather.<|end|>"
    '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}'
    "<|call|>"
)
CASES = {  # text -> (format, reasoning, content, calls)
    "hermes": (
        "<think>\nOslo, then the time.\n</think>\n\nLet me look.\n" + hermes(WEATHER) + "\n" + hermes(TIME),
        ("hermes", "Oslo, then the time.", "Let me look.", [WEATHER, TIME]),
    ),
    "hermes string arguments": (
        hermes(WEATHER, arguments=json.dumps(WEATHER["arguments"])),
        ("hermes", "", "", [WEATHER]),
    ),
    "llama3 tagged, two": (
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}; '
        '{"name": "get_time", "parameters": {"zone": "CET", "24h": true}}',
        ("llama3", "", "", [WEATHER, TIME]),
    ),
    "llama3 bare": ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}', ("llama3", "", "", [WEATHER])),
    "mistral list": (
        'Sure. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
        '{"name": "get_time", "arguments": {"zone": "CET", "24h": true}}]',
        ("mistral", "", "Sure.", [WEATHER, TIME]),
    ),
    "mistral args": (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time[ARGS]{"zone": "CET", "24h": true}',
        ("mistral", "", "", [WEATHER, TIME]),
    ),
    "harmony call": (HARMONY_CALL, ("harmony", "The user wants the weather.", "", [WEATHER])),
    "harmony answer, no start prefix": (
        "<|channel|>analysis<|message|>Easy.<|end|><|channel|>final<|message|>It is 12 °C.",
        ("harmony", "Easy.", "It is 12 °C.", []),
    ),
    "think opened by the prompt": (
        "first this, then that\n</think>\n\nThe answer.",
        ("plain", "first this, then that", "The answer.", []),
    ),
    "an answer in JSON is no call": ('{"name": "Bob", "age": 3}', ("plain", "", '{"name": "Bob", "age": 3}', [])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parse_reply_every_format(name):
    text, (fmt, reasoning, content, calls) = CASES[name]
    reply = parse_reply(text)
    assert (reply.format, reply.reasoning, reply.content) == (fmt, reasoning, content)
    assert [fn(c) for c in reply.calls] == calls and reply.raw_calls == []
    assert [c["id"] for c in reply.calls] == [f"call{i:05d}" for i in range(1, len(calls) + 1)]
    assert all(c["type"] == "function" for c in reply.calls)


RAW = {
    "hermes, broken JSON": (
        'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>',
        "Checking.",
    ),
    "hermes, arguments not an object": (hermes(WEATHER, arguments=[1, 2]), ""),
    "llama3 tagged python code": ("<|python_tag|>print(get_weather('Oslo'))", ""),
    "llama3 truncated": ('{"name": "get_weather", "parameters": {"city": "Os', ""),
    "mistral list, not JSON": ("[TOOL_CALLS] [{name: get_weather}]", ""),
    "harmony, arguments a list": ("<|channel|>commentary to=functions.get_weather<|message|>[1, 2]<|call|>", ""),
}


@pytest.mark.parametrize("name", list(RAW))
def test_an_unreadable_call_is_kept_raw(name):
    text, content = RAW[name]
    reply = parse_reply(text)
    assert reply.calls == [] and reply.content == content and len(reply.raw_calls) == 1
    assert reply.raw_calls[0].strip() in text and reply.raw_calls[0].strip()  # as the model wrote it


def test_a_good_call_next_to_a_broken_one_keeps_both():
    reply = parse_reply(hermes(WEATHER) + '<tool_call>\n{"name": "get_time", "arguments": {"zone"\n</tool_call>')
    assert [fn(c) for c in reply.calls] == [WEATHER] and len(reply.raw_calls) == 1 and "get_time" in reply.raw_calls[0]


def test_a_call_may_bring_its_own_id():
    reply = parse_reply('[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Oslo"}', first_id=7)
    assert reply.calls[0]["id"] == "a1b2c3d4e" and fn(reply.calls[0]) == WEATHER
    assert parse_reply(hermes(WEATHER), first_id=7).calls[0]["id"] == "call00007"


def _pieces(text: str, size: int) -> list[str]:
    """`text` cut as a tokenizer would: markers whole, the rest in `size`-character pieces."""
    out, pos = [], 0
    while pos < len(text):
        marker = next((m for m in MARKUP_TOKENS if text.startswith(m, pos)), None)
        step = len(marker) if marker else size
        out.append(text[pos : pos + step])
        pos += step
    return out


@pytest.mark.parametrize("size", [1, 3, 7])
@pytest.mark.parametrize("name", list(CASES) + list(RAW))
def test_the_stream_shows_only_the_answer(name, size):
    text = (CASES.get(name) or RAW.get(name))[0]
    opened = name == "think opened by the prompt"
    live, shown, thinking = ReplyStream(reasoning_open=opened), "", []
    for piece in _pieces(text, size) if size > 1 else list(text):
        shown += live.feed(piece)
        thinking.append(live.thinking)
    tail = live.finish()
    assert shown + tail == live.reply.content == parse_reply(text, reasoning_open=opened).content
    for never in ("<", "[TOOL_CALLS]", '"name"', "Oslo, then", "wants the weather", "first this"):
        if never not in live.reply.content:
            assert never not in shown, (never, shown)
    assert any(thinking) == bool(live.reply.reasoning)


def test_a_markers_first_characters_are_held_back():
    live = ReplyStream()
    assert live.feed("Hello") == "Hello"
    assert live.feed(" <tool") == ""  # may be the start of a call
    assert live.feed("_call>\n{") == "" and live.feed('"name": "x", "arguments": {}}\n</tool_call>') == ""
    assert live.finish() == "" and live.reply.content == "Hello"
    live = ReplyStream()
    assert live.feed("1 <") == "1" and live.feed(" 2") == " < 2"


def test_load_tools_names_the_file_and_the_fault(tmp_path):
    from localtune.errors import UsageError

    good = tmp_path / "tools.json"
    good.write_text(json.dumps([{"function": {"name": "get_weather", "parameters": {"type": "object"}}}]))
    assert load_tools(good) == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    for body, fault in [
        ("{not json", "is not JSON"),
        ('{"name": "get_weather"}', "holds a JSON dict, not a list of tools"),
        ('[{"type": "function", "function": {"description": "no name"}}]', "tool 1 has no function.name"),
        ('[{"function": {"name": "a"}}, {"name": "b"}]', "tool 2 has no function.name"),
    ]:
        good.write_text(body)
        with pytest.raises(UsageError, match=fault) as err:
            load_tools(good)
        assert str(good) in str(err.value)
    with pytest.raises(UsageError, match="cannot read the tools file .*missing.json"):
        load_tools(tmp_path / "missing.json")


# --- a session on a tiny GGUF ---------------------------------------------------------------------------------
# Qwen's layout with tools, reasoning and tool results (the tiny models' own templates read none of them)
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
    "{% if m.get('reasoning_content') %}<think>\n{{ m['reasoning_content'] }}\n</think>\n\n{% endif %}"
    "{{ m['content'] }}{% for c in m.get('tool_calls') or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{% elif m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


@pytest.fixture(scope="module")
def tool_gguf(tiny_model_dir, tmp_path_factory):
    from localtune.converters.hf_to_gguf import convert

    folder = tiny_model_dir("qwen3")
    gguf = tmp_path_factory.mktemp("tools") / "qwen3-tools-f32.gguf"
    convert(folder, gguf, out_type="f32", chat_template=TOOL_TEMPLATE)
    return folder, gguf


def _references(llm, tokenizer, msgs) -> tuple[list[int], list[int]]:
    """The prompt ids of `msgs` with TOOLS by transformers' render and by llama-cpp-python's Jinja2ChatFormatter."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    hf = tokenizer.apply_chat_template(
        msgs, tools=TOOLS, chat_template=TOOL_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    special = lambda t: llm.detokenize([t], special=True).decode()  # noqa: E731
    formatter = Jinja2ChatFormatter(TOOL_TEMPLATE, eos_token=special(llm.token_eos()), bos_token="")
    lcpp = formatter(messages=msgs, tools=TOOLS).prompt
    ids = lambda text: llm.tokenize(text.encode(), add_bos=False, special=True)  # noqa: E731
    return ids(hf), ids(lcpp)


def test_session_with_tools_keeps_calls_in_the_messages_shape(tool_gguf, tiny_tokenizer):
    from localtune.chat.runtime import open_gguf
    from localtune.chat.session import ChatSession, Sampling

    folder, gguf = tool_gguf
    tokenizer = tiny_tokenizer("qwen3")
    llm = open_gguf(gguf, n_ctx=1024)
    session = ChatSession(llm, sampling=Sampling(temperature=0.0, max_tokens=6), tools=TOOLS, notice=lambda m: None)
    question = {"role": "user", "content": "What is the weather in Oslo?"}

    # a real reply from the random weights: the prompt llama.cpp ran is the template rendered with the tools
    session.ask(question["content"])
    hf_ids, lcpp_ids = _references(llm, tokenizer, [question])
    assert hf_ids == lcpp_ids and [int(t) for t in llm.input_ids[: len(hf_ids)]] == hf_ids
    assert session.prompt_tokens([question]) == len(hf_ids)
    assert session.prompt_tokens([question]) > ChatSession(llm).prompt_tokens([question])  # the tools count
    session.reset()
    session.sampling.max_tokens = 200

    # random weights write no call: llama.cpp "samples" the reply a tuned model would write, token by token
    prompts, scripted = [], []
    eos = llm.token_eos()

    def generate(ids, **_):
        prompts.append(list(ids))
        return iter(llm.tokenize(scripted.pop(0).encode(), add_bos=False, special=True) + [eos, 0])

    llm.generate = generate
    scripted += ["<think>\nI need the weather tool.\n</think>\n\n" + hermes(WEATHER), "It is 12 °C and raining."]
    streamed, reasoned = [], []
    assert session.ask(question["content"], on_token=streamed.append, on_reasoning=reasoned.append) == ""
    call = {"id": "call00001", "type": "function", "function": WEATHER}
    assert session.history[-1] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I need the weather tool.",
        "thinking": "I need the weather tool.",  # both names, as transformers gives templates
        "tool_calls": [call],
    }
    assert session.last_reply.calls == [call] and streamed == [] and reasoned == ["I need the weather tool."]
    session.add_tool_result(session.last_reply.calls[0], "12 °C, rain")
    assert session.history[-1] == {
        "role": "tool",
        "content": "12 °C, rain",
        "tool_call_id": "call00001",
        "name": "get_weather",
    }
    assert session.resume(on_token=streamed.append) == "It is 12 °C and raining." == "".join(streamed)
    # the tool message went through the GGUF's template as transformers renders it
    hf_ids, lcpp_ids = _references(llm, tokenizer, [question, *session.history[1:3]])
    assert prompts[1] == hf_ids == lcpp_ids
    rendered = llm.detokenize(prompts[1], special=True).decode()
    assert "<tool_response>\n12 °C, rain\n</tool_response>" in rendered and hermes(WEATHER) in rendered
    assert session.history[-1] == {"role": "assistant", "content": "It is 12 °C and raining."}
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"]
    # the next reply's calls get new ids: a conversation's call ids never repeat
    scripted.append(hermes(WEATHER))
    session.ask("And tomorrow?")
    assert session.last_reply.calls[0]["id"] == "call00002"


def test_fit_history_drops_whole_exchanges():
    from localtune.chat.session import Sampling, fit_history

    class Sized:  # a prompt costs its characters
        sampling, n_ctx, notice = Sampling(max_tokens=0), 0, staticmethod(lambda m: None)

        def __init__(self, history):
            self.history = history

        def messages(self, prompt):
            return self.history + ([{"role": "user", "content": prompt}] if prompt is not None else [])

        def prompt_tokens(self, msgs):
            return sum(len(m["content"]) for m in msgs)

    call = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]
    first = [
        {"role": "user", "content": "aaaa"},
        {"role": "assistant", "content": "", "tool_calls": call},
        {"role": "tool", "content": "bbbb", "tool_call_id": "c", "name": "f"},
        {"role": "assistant", "content": "cc"},
    ]
    second = [{"role": "user", "content": "dd"}, {"role": "assistant", "content": "", "tool_calls": call}]
    s = Sized(first + second + [{"role": "tool", "content": "ee", "tool_call_id": "c", "name": "f"}])
    s.n_ctx = 10
    assert fit_history(s, None) == second + [s.history[-1]]  # resuming: the first exchange went whole
    s = Sized(first + second)
    s.n_ctx = 5
    assert fit_history(s, "x") == second + [{"role": "user", "content": "x"}]
    s = Sized(list(second) + [{"role": "tool", "content": "eeeeeeee", "tool_call_id": "c", "name": "f"}])
    from localtune.errors import UsageError

    with pytest.raises(UsageError, match="context window"):  # the exchange being answered is never cut
        fit_history(s, None)
    assert len(s.history) == 3


def test_tools_are_refused_where_the_template_is_not_used(tool_gguf):
    from localtune.chat.routes import Route, RouteSpec
    from localtune.chat.session import ChatSession
    from localtune.errors import UsageError

    class Llm:
        model_path = str(tool_gguf[1])

    with pytest.raises(UsageError, match="tools cannot be used with a prefix route"):
        ChatSession(Route(RouteSpec(tool_gguf[1]), Llm(), pinned=object()), tools=TOOLS)


def test_harmony_structure_tokens_come_through_llama_cpp(tiny_model_dir, tmp_path):
    """gpt-oss writes its channels in special tokens, which llama.cpp leaves out of generated text when they are
    control tokens: the session decodes those with their text, and stops at <|call|> (end of generation)."""
    from localtune.chat.runtime import open_gguf
    from localtune.chat.session import ChatSession, Sampling
    from localtune.converters.hf_to_gguf import convert

    gguf = tmp_path / "gpt-oss-f32.gguf"
    convert(tiny_model_dir("gpt_oss"), gguf, out_type="f32")
    llm = open_gguf(gguf, n_ctx=512)
    written = HARMONY_CALL.replace("<|call|>", "<|call|>never read")
    ids = llm.tokenize(written.encode(), add_bos=False, special=True)
    assert "<|call|>" not in llm.detokenize(ids).decode()  # a control token: out of llama.cpp's own text
    llm.generate = lambda prompt, **_: iter(ids)
    session = ChatSession(llm, sampling=Sampling(max_tokens=200), tools=TOOLS, notice=lambda m: None)
    thinking = []
    assert session.ask("Weather in Oslo?", on_thinking=lambda: thinking.append(True)) == ""
    reply = session.last_reply
    assert reply.format == "harmony" and reply.reasoning == "The user wants the weather." and thinking == [True]
    assert [fn(c) for c in reply.calls] == [WEATHER] and reply.raw_calls == []
    assert "never read" not in str(session.history)


def test_without_tools_bare_json_is_an_answer(tool_gguf):
    """A plain chat whose model answers in JSON that looks like a Llama-3 call: no tools were offered, so it is the
    answer, streamed and kept as text, and the history holds no call that no result could follow."""
    from localtune.chat.runtime import open_gguf
    from localtune.chat.session import ChatSession, Sampling

    _, gguf = tool_gguf
    llm = open_gguf(gguf, n_ctx=512)
    answer = '{"name": "Bob", "parameters": {"age": 3}}'
    llm.generate = lambda ids, **_: iter(llm.tokenize(answer.encode(), add_bos=False, special=True) + [llm.token_eos()])
    streamed = []
    session = ChatSession(llm, sampling=Sampling(temperature=0.0, max_tokens=64), notice=lambda m: None)
    assert session.ask("Describe Bob as JSON.", on_token=streamed.append) == answer == "".join(streamed).strip()
    assert session.history[-1] == {"role": "assistant", "content": answer} and not session.last_reply.calls
    with_tools = ChatSession(llm, sampling=Sampling(temperature=0.0, max_tokens=64), tools=TOOLS, notice=print)
    with_tools.ask("Describe Bob as JSON.")
    assert with_tools.last_reply.calls[0]["function"]["name"] == "Bob"  # offered tools: the same text is a call
