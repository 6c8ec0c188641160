"""A model's reply taken apart: its reasoning, its answer, and the tool calls it made, for the formats models
are tuned on. Nothing a model wrote is dropped: a call that cannot be read is kept raw.

- Hermes / Qwen (localtune's default tool format): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
- Llama 3.x: `<|python_tag|>` (optional), then `{"name": ..., "parameters": {...}}`, several joined by `;`;
- Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`, and the newer `[TOOL_CALLS]name[ARGS]{...}`;
- gpt-oss harmony: `<|channel|>analysis<|message|>...<|end|>` (reasoning), `<|channel|>commentary
  to=functions.NAME <|constrain|>json<|message|>{...}<|call|>` (a call), `<|channel|>final<|message|>...`;
- reasoning: `<think>...</think>`, also a lone `</think>` when the prompt opened the block.

Run as:  parse_reply(text) -> Reply;  ReplyStream() fed the pieces as they come says what is safe to show live.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG, MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_ID = "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
HARMONY = ("<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|call|>", "<|return|>")
# The special tokens a reply's structure is written in: a session decodes these with their text (llama.cpp
# leaves control tokens out of generated text by default), every other control token stays hidden.
MARKUP_TOKENS = frozenset(
    (THINK_OPEN, THINK_CLOSE, HERMES_OPEN, HERMES_CLOSE, PYTHON_TAG, MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_ID) + HARMONY
)
CALL_STARTS = (HERMES_OPEN, PYTHON_TAG, MISTRAL_CALLS)
PARSE_WARNING = "warning: could not parse a tool call; shown raw"
_LLAMA_JSON = re.compile(r'\{\s*"name"\s*:')
_MISTRAL_NAME = re.compile(r"\s*([\w.\-]+)\s*(?:\[CALL_ID\]\s*(\w+))?\s*\[ARGS\]")
_HARMONY_MESSAGE = re.compile(
    r"(?P<header>(?:(?!<\|message\|>).)*)<\|message\|>(?P<body>.*?)(?P<end><\|end\|>|<\|call\|>|<\|return\|>|(?=<\|start\|>)|$)",
    re.S,
)


@dataclass
class Reply:
    reasoning: str = ""
    content: str = ""  # the answer, without reasoning and call markup
    calls: list[dict] = field(default_factory=list)  # {"id", "type": "function", "function": {"name", "arguments"}}
    raw_calls: list[str] = field(default_factory=list)  # call markup that could not be read, as the model wrote it
    format: str = "plain"  # "hermes" | "llama3" | "mistral" | "harmony" | "plain"


def parse_reply(text: str, *, reasoning_open: bool = False, first_id: int = 1) -> Reply:
    """`text` taken apart. `reasoning_open`: the prompt ended inside a `<think>` block. Call ids are
    `call00001`, ... from `first_id` (nine alphanumerics: Mistral's templates insist) unless the model wrote one."""
    if any(marker in text for marker in HARMONY[:3]):
        reply = _harmony(text)
    else:
        reasoning, rest = split_reasoning(text, reasoning_open)
        reply = _calls(rest)
        reply.reasoning = reasoning
    reply.calls = [
        {"id": c.get("id") or f"call{first_id + i:05d}", "type": "function", "function": c["function"]}
        for i, c in enumerate(reply.calls)
    ]
    return reply


def split_reasoning(text: str, reasoning_open: bool = False) -> tuple[str, str]:
    """(reasoning, the rest): `<think>` blocks, text before a lone `</think>`, an unclosed block to the end."""
    thoughts, rest = [], text
    if reasoning_open or (THINK_CLOSE in rest and THINK_OPEN not in rest.split(THINK_CLOSE, 1)[0]):
        head, _, rest = rest.partition(THINK_CLOSE)
        thoughts.append(head)
    while THINK_OPEN in rest:
        before, _, after = rest.partition(THINK_OPEN)
        thought, _, after = after.partition(THINK_CLOSE)
        thoughts.append(thought)
        rest = before + after
    return "\n\n".join(t.strip() for t in thoughts if t.strip()), rest


def _call(name, arguments, call_id=None) -> dict | None:
    """One call in the messages' shape, or None when its arguments are not a JSON object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"id": call_id, **call} if call_id else call


def _from_object(obj) -> dict | None:
    """A call from `{"name": ..., "arguments" | "parameters": ...}` (no arguments: none), or None."""
    if not isinstance(obj, dict):
        return None
    args = obj.get("arguments", obj.get("parameters"))
    call_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    return _call(obj.get("name"), {} if args is None else args, call_id)


def _json_values(text: str) -> tuple[list, str]:
    """The JSON values at the start of `text` (separated by `;` or spaces), and what follows them."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return values, text[pos:]
        values.append(value)


def _calls(text: str) -> Reply:
    """The calls in the answer part of a reply (reasoning already taken off)."""
    if HERMES_OPEN in text:
        reply, content = Reply(format="hermes"), []
        parts = text.split(HERMES_OPEN)
        content.append(parts[0])
        for part in parts[1:]:
            body, closed, after = part.partition(HERMES_CLOSE)
            values, left = _json_values(body)
            call = _from_object(values[0]) if len(values) == 1 and not left.strip() else None
            _keep(reply, call, HERMES_OPEN + body + (HERMES_CLOSE if closed else ""))
            content.append(after)
        reply.content = "".join(content).strip()
        return reply
    if MISTRAL_CALLS in text:
        reply = Reply(format="mistral")
        parts = text.split(MISTRAL_CALLS)
        for part in parts[1:]:
            _mistral(reply, part)
        reply.content = parts[0].strip()
        return reply
    stripped = text.strip()
    tagged = stripped.startswith(PYTHON_TAG)
    if tagged or _LLAMA_JSON.match(stripped):
        body = stripped[len(PYTHON_TAG) :] if tagged else stripped
        values, left = _json_values(body)
        if not tagged and values and not left.strip() and not all(_has_arguments(v) for v in values):
            return Reply(content=stripped)  # an answer written in JSON, not a call
        calls = [_from_object(v) for v in values]
        if values and all(calls) and not left.strip():
            return Reply(calls=calls, format="llama3")
        return Reply(raw_calls=[stripped], format="llama3")
    return Reply(content=stripped)


def _has_arguments(value) -> bool:
    return isinstance(value, dict) and ("parameters" in value or "arguments" in value)


def _mistral(reply: Reply, part: str) -> None:
    """One `[TOOL_CALLS]...` stretch: a JSON list of calls, or `name[ARGS]{...}` ones."""
    if part.lstrip().startswith("["):
        values, left = _json_values(part)
        calls = [_from_object(v) for v in values[0]] if values and isinstance(values[0], list) else [None]
        if values and calls and all(calls) and not left.strip():
            reply.calls += calls
        else:
            reply.raw_calls.append(MISTRAL_CALLS + part)
        return
    rest = part
    while rest.strip():
        m = _MISTRAL_NAME.match(rest)
        values, left = _json_values(rest[m.end() :]) if m else ([], rest)
        call = _call(m.group(1), values[0], m.group(2)) if m and values else None
        if call is None:
            reply.raw_calls.append(MISTRAL_CALLS + rest)
            return
        reply.calls.append(call)
        rest = left


def _keep(reply: Reply, call: dict | None, raw: str) -> None:
    if call:
        reply.calls.append(call)
    else:
        reply.raw_calls.append(raw)


def _harmony_kind(header: str) -> tuple[str, str | None]:
    """("call", NAME) for a message to a function, ("reasoning", None) on analysis, else ("answer", None)."""
    recipient = re.search(r"to=(?:functions\.)?([^\s<]+)", header)
    if recipient:
        return "call", recipient.group(1)
    channel = re.search(r"<\|channel\|>\s*(\w+)", header)
    return ("reasoning" if channel and channel.group(1) == "analysis" else "answer"), None


def _harmony(text: str) -> Reply:
    """Harmony messages: analysis = reasoning, a recipient `to=functions.NAME` = a call, any other = the answer.
    Text after the last message (there should be none) is kept as content."""
    reply, thoughts, answer, pos = Reply(format="harmony"), [], [], 0
    for m in _HARMONY_MESSAGE.finditer(text):
        kind, name = _harmony_kind(m.group("header"))
        body = m.group("body")
        if kind == "call":
            values, left = _json_values(body)
            call = _call(name, values[0]) if len(values) == 1 and not left.strip() else None
            _keep(reply, call, m.group(0))
        else:
            (thoughts if kind == "reasoning" else answer).append(body.strip())
        pos = m.end()
    answer.append(text[pos:].strip())
    reply.reasoning = "\n\n".join(t for t in thoughts if t)
    reply.content = "\n\n".join(a for a in answer if a)
    return reply


class ReplyStream:
    """Fed a reply piece by piece: `feed` returns the answer text that is now safe to show (never reasoning,
    never call markup; a piece that may begin a marker is held back until it is known), `thinking` says
    whether the model is inside its reasoning now. `finish()` parses the whole reply and returns the part of
    the answer not shown yet; the Reply is then `reply`."""

    def __init__(self, *, reasoning_open: bool = False, first_id: int = 1):
        self.text, self.shown, self.thinking = "", "", reasoning_open
        self.reasoning_open, self.first_id = reasoning_open, first_id
        self.reply: Reply | None = None

    def feed(self, piece: str) -> str:
        self.text += piece
        live, self.thinking = _live(self.text, self.reasoning_open)
        if not live.startswith(self.shown) or len(live) == len(self.shown):
            return ""
        new, self.shown = live[len(self.shown) :], live
        return new

    @property
    def reasoning(self) -> str:
        """The reasoning written so far."""
        return parse_reply(self.text, reasoning_open=self.reasoning_open).reasoning

    def finish(self) -> str:
        self.reply = parse_reply(self.text, reasoning_open=self.reasoning_open, first_id=self.first_id)
        self.thinking = False
        content = self.reply.content
        return content[len(self.shown) :] if content.startswith(self.shown) else ""


def _held(text: str) -> str:
    """`text` without a trailing piece that could be the start of a marker, and without trailing spaces."""
    for n in range(min(len(text), max(map(len, MARKUP_TOKENS))), 0, -1):
        if any(m.startswith(text[-n:]) for m in MARKUP_TOKENS):
            return text[:-n].rstrip()
    return text.rstrip()


def _live(text: str, reasoning_open: bool) -> tuple[str, bool]:
    """(the answer safe to show so far, inside reasoning now) for a reply still being written."""
    if any(marker in text for marker in HARMONY[:3]):
        answer, thinking = [], False
        for m in _HARMONY_MESSAGE.finditer(text):
            kind, _ = _harmony_kind(m.group("header"))
            done = bool(m.group("end"))
            if kind == "answer":
                answer.append(m.group("body").strip() if done else _held(m.group("body")).strip())
            thinking = kind == "reasoning" and not done
        return "\n\n".join(a for a in answer if a), thinking
    if reasoning_open and THINK_CLOSE not in text:
        return "", True
    if reasoning_open:
        text = text.partition(THINK_CLOSE)[2]
    opened = text.rfind(THINK_OPEN)
    if opened > text.rfind(THINK_CLOSE):  # inside a block now: show what came before it
        return _live(text[:opened], False)[0], True
    answer = split_reasoning(text)[1]
    for marker in CALL_STARTS:
        answer = answer.split(marker, 1)[0]
    answer = answer.lstrip()
    if answer.startswith("{"):  # maybe a Llama 3 call without its tag: shown when the reply is complete
        return "", False
    return _held(answer), False


def call_line(call: dict) -> str:
    """A call as people read it: `→ call get_weather({"city": "Oslo"})`."""
    fn = call["function"]
    return f"→ call {fn['name']}({json.dumps(fn['arguments'], ensure_ascii=False)})"


def words(text: str) -> str:
    n = len(text.split())
    return f"{n} word" + ("" if n == 1 else "s")


def reasoning_fold(reasoning: str, how: str = "/reasoning to show") -> str:
    return f"(reasoning: {words(reasoning)} — {how})"


def load_tools(path) -> list[dict]:
    """The tools of a JSON file: a list of {"type": "function", "function": {"name", "description", "parameters"}}.
    Raises UsageError naming the file and what is wrong with it."""
    from pathlib import Path

    from localtune.errors import UsageError

    hint = 'write a JSON list like [{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}]'
    try:
        tools = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the tools file {path}: {exc.strerror or exc}", hint=hint) from None
    except ValueError as exc:
        raise UsageError(f"the tools file {path} is not JSON: {exc}", hint=hint) from None
    if not isinstance(tools, list):
        raise UsageError(f"the tools file {path} holds a JSON {type(tools).__name__}, not a list of tools", hint=hint)
    for i, tool in enumerate(tools, 1):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise UsageError(f"the tools file {path}: tool {i} has no function.name", hint=hint)
        if tool.get("type", "function") != "function":
            raise UsageError(f"the tools file {path}: tool {i} has type {tool['type']!r}, not 'function'", hint=hint)
    return [{"type": "function", **tool} for tool in tools]
