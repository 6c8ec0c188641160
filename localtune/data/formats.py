"""Row formats: detecting them and turning each row into one `Example`, with precise problems.

Formats (the names `--format` takes):
- `text`: {"text": "..."}: raw text, every token trains.
- `alpaca`: {"instruction", "input" (optional), "output", "system" (optional)}: one user turn
  (instruction, a blank line, input) and one assistant turn.
- `chat`: {"messages": [{"role", "content"}, ...]}, OpenAI style, roles system/user/assistant/tool,
  with an optional `tools` list (JSON-schema functions); see data/tools.py for calls, results and reasoning.
- `sharegpt`: {"conversations": [{"from", "value"}, ...]}: human->user, gpt->assistant, system,
  function_call -> an assistant tool call, observation -> a tool result.
- `prompt_completion`: {"prompt", "completion"}: text continuation (no chat template), loss on the
  completion. When both are lists of messages it is a conversation like `chat`.

A conversation is: an optional first system message, then user and assistant turns alternating,
starting with user and ending with assistant; an assistant turn that calls tools is followed by one
result per call (role tool) and then the assistant again. Everything here runs before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from localtune.data.readers import Record
from localtune.errors import Problem

FORMATS = ("text", "alpaca", "chat", "sharegpt", "prompt_completion")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
# The field whose presence identifies each format, checked in this order.
_SIGNATURES = (
    ("chat", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
)


@dataclass(frozen=True)
class Example:
    """A validated row, ready for rendering: either a conversation, raw text, or prompt+completion."""

    where: str
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...)
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    # Per message, what a plain (role, content) pair cannot hold: tool_calls, reasoning_content,
    # tool_call_id, name (only the keys a message has); None when no message has any.
    details: tuple[dict, ...] | None = None
    tools: tuple[dict, ...] | None = None  # the row's tools, as {"type": "function", "function": {...}}

    @property
    def kind(self) -> str:
        if self.messages is not None:
            return "chat"
        return "text" if self.text is not None else "completion"

    def as_messages(self) -> list[dict]:
        """The conversation as OpenAI-style message dicts, tool calls and reasoning included."""
        details = self.details or ({},) * len(self.messages or ())
        return [{"role": r, "content": c, **d} for (r, c), d in zip(self.messages or (), details)]

    @property
    def tool_list(self) -> list[dict] | None:
        return list(self.tools) if self.tools else None


def detect_format(value: dict[str, Any]) -> str | None:
    """The format whose identifying fields the row has, or None."""
    for name, keys in _SIGNATURES:
        if all(k in value for k in keys):
            return name
    return None


def describe_signatures() -> str:
    return "; ".join(f"{name}: {' + '.join(keys)}" for name, keys in _SIGNATURES)


class _RowProblem(Exception):
    def __init__(self, field: str | None, message: str, fix: str, reason: str):
        super().__init__(message)
        self.field, self.message, self.fix, self.reason = field, message, fix, reason


def to_example(record: Record, fmt: str) -> Example | Problem:
    """Validate one record against `fmt` and convert it; a Problem names the field and the fix."""
    try:
        value = record.value
        found = detect_format(value)
        if found is not None and found != fmt and not _compatible(value, fmt):
            raise _RowProblem(
                None,
                f"the row has the fields of format '{found}' ({', '.join(sorted(value))}), "
                f"but this file is read as '{fmt}'",
                "give every row of a file the same format, or pass --skip-invalid",
                "wrong_format",
            )
        if fmt == "text":
            return Example(record.where, text=_text(value, "text", required=True))
        if fmt == "alpaca":
            return _alpaca(record.where, value)
        if fmt == "chat":
            return _chat_example(record.where, value, "messages")
        if fmt == "sharegpt":
            return _chat_example(record.where, value, "conversations")
        if fmt == "prompt_completion":
            return _prompt_completion(record.where, value)
        raise ValueError(f"unknown format {fmt!r}")
    except _RowProblem as p:
        return Problem(record.where, p.field, p.message, p.fix, p.reason)


def _compatible(value: dict, fmt: str) -> bool:
    """A row may carry extra fields of another format as long as it has the fields of `fmt`."""
    return all(k in value for k in dict(_SIGNATURES)[fmt])


def _text(value: dict, key: str, *, required: bool) -> str:
    if key not in value:
        raise _RowProblem(
            key,
            f"missing field '{key}' (the row has: {', '.join(sorted(value)) or 'no fields'})",
            f"add '{key}' to the row, or pass --skip-invalid",
            "missing_field",
        )
    return _checked_text(value[key], key, f"'{key}'", required=required)


def _checked_text(v: Any, field: str, what: str, *, required: bool = True) -> str:
    """`v` as non-blank text; blank is "" when not required; otherwise a problem naming `what`."""
    if v is None or (isinstance(v, str) and not v.strip()):
        if not required:
            return ""
        raise _RowProblem(
            field,
            f"{what} is {'null' if v is None else 'empty'}",
            "give it some text, or drop the row (--skip-invalid does that)",
            "empty_content",
        )
    if not isinstance(v, str):
        raise _RowProblem(
            field,
            f"{what} must be text, got {type(v).__name__} {json.dumps(v)[:60]}",
            "write the value as a string",
            "wrong_type",
        )
    return v


def _alpaca(where: str, value: dict) -> Example:
    instruction = _text(value, "instruction", required=True)
    extra = _text(value, "input", required=False) if "input" in value else ""
    output = _text(value, "output", required=True)
    system = _text(value, "system", required=False) if "system" in value else ""
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    msgs = ((("system", system),) if system.strip() else ()) + (("user", user), ("assistant", output))
    return Example(where, messages=msgs)


def _prompt_completion(where: str, value: dict) -> Example:
    prompt, completion = value.get("prompt"), value.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt/completion
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            raise _RowProblem(
                "prompt",
                "prompt and completion must both be text or both be lists of messages",
                "make them the same kind",
                "wrong_type",
            )
        return _chat_example(where, {**value, "messages": prompt + completion}, "messages")
    prompt_text = _text(value, "prompt", required=False)
    return Example(where, prompt=prompt_text, completion=_text(value, "completion", required=True))


def _chat_example(where: str, value: dict, key: str) -> Example:
    """A conversation row: its messages, their tool calls, results and reasoning, and the row's tools."""
    from localtune.data.tools import ToolDataError, read_tools, resolve_tools

    turns = _conversation(value, key)
    try:
        tools = read_tools(value["tools"], "tools") if value.get("tools") is not None else None
        messages, details = resolve_tools(turns, tools, key)
    except ToolDataError as exc:
        raise _RowProblem(exc.field, exc.message, exc.fix, exc.reason) from None
    check_order([t["role"] for t in turns], key)
    if not any(details):
        details = None
    return Example(where, messages=messages, details=details, tools=tuple(tools) if tools else None)


def _conversation(value: dict, key: str) -> list[dict]:
    """The raw messages of a conversation as {"role", "content", "raw", "field"} with role names mapped."""
    turns = value.get(key)
    if isinstance(turns, str):  # CSV/TSV cells hold the list as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError as exc:
            raise _RowProblem(
                key,
                f"'{key}' is text that is not a JSON list ({exc.msg})",
                f"write '{key}' as a JSON list of messages",
                "wrong_type",
            ) from None
    if not isinstance(turns, list) or not turns:
        what = "empty" if isinstance(turns, list) else f"{type(turns).__name__}, not a list"
        raise _RowProblem(key, f"'{key}' is {what}", f"give '{key}' a list of messages", "wrong_type")
    out: list[dict] = []
    for i, m in enumerate(turns):
        field = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise _RowProblem(
                field,
                f"a message must be an object, got {type(m).__name__}",
                'write messages as {"role": ..., "content": ...}',
                "wrong_type",
            )
        if "role" in m and ("content" in m or m.get("role") == "assistant"):
            role, content, rkey, ckey = m["role"], m.get("content"), "role", "content"
            mapping = {r: r for r in ROLES}
        elif "from" in m and "value" in m:
            role, content, rkey, ckey = m["from"], m["value"], "from", "value"
            mapping = SHAREGPT_ROLES
        else:
            raise _RowProblem(
                field,
                f"unknown message keys {', '.join(sorted(m)) or '(none)'}",
                "use role/content (OpenAI style) or from/value (ShareGPT style)",
                "unknown_keys",
            )
        if role not in mapping:
            allowed = ", ".join(dict.fromkeys(mapping))
            raise _RowProblem(f"{field}.{rkey}", f"unknown role {role!r}", f"use one of: {allowed}", "unknown_role")
        mapped = mapping[role]
        calls = (mapped == "assistant" and m.get("tool_calls")) or role == "function_call"
        parts = isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content)
        if mapped == "tool" and isinstance(content, (dict, list)) and not parts:  # a JSON result: kept as its text
            content = json.dumps(content, ensure_ascii=False)
        content = "" if role == "function_call" else _content_text(content, f"{field}.{ckey}", required=not calls)
        out.append({"role": mapped, "content": content, "raw": m, "field": field, "from": role})
    return out


def _content_text(content: Any, field: str, *, required: bool = True) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _RowProblem(
                    field,
                    "only text content parts are supported",
                    'use {"type": "text", "text": ...} parts or plain text',
                    "wrong_type",
                )
            parts.append(part["text"])
        content = "".join(parts)
    return _checked_text(content, field, "message content", required=required)


def check_order(roles: list[str], key: str) -> None:
    """The order of user/assistant turns (tool results are checked in data/tools.py); raises _RowProblem."""
    for i, r in enumerate(roles):
        if r == "system" and i > 0:
            raise _RowProblem(
                f"{key}[{i}].role",
                f"a system message at position {i}; only the first message may be a system message",
                "move it to the start or merge it into a user turn",
                "role_order",
            )
    body = roles[1:] if roles[0] == "system" else roles
    offset = len(roles) - len(body)
    if not body:
        raise _RowProblem(
            key, "the conversation has only a system message", "add user and assistant turns", "role_order"
        )
    if body[0] != "user":
        raise _RowProblem(
            f"{key}[{offset}].role",
            f"the conversation starts with {body[0]!r}, not 'user'",
            "add the user message that prompted it, or drop the row",
            "role_order",
        )
    for i in range(1, len(body)):
        if body[i] == body[i - 1] and body[i] != "tool":
            raise _RowProblem(
                f"{key}[{offset + i}].role",
                f"two {body[i]!r} messages in a row (positions {offset + i - 1} and {offset + i})",
                "merge them into one message, or add the missing turn between them",
                "role_order",
            )
    if body[-1] != "assistant":
        raise _RowProblem(
            f"{key}[{len(roles) - 1}].role",
            f"the conversation ends on a {body[-1]!r} message, so its last turn has nothing to learn",
            "add the assistant reply (or call) that follows it, or remove the message",
            "role_order",
        )
