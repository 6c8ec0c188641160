"""Tool calls, tool results and reasoning in chat rows: reading them, checking them, normalising them.

What a row may hold (OpenAI style; ShareGPT's `function_call` / `observation` turns map onto it):
- `tools`: a list (or its JSON text) of functions, `{"type": "function", "function": {"name",
  "description", "parameters"}}` or the bare `{"name", ...}`; kept in the first form.
- an assistant message with `tool_calls` (content may be empty): each `{"id", "type": "function",
  "function": {"name", "arguments"}}`; arguments are a JSON object, or its JSON text, kept as a dict
  (templates write them with `tojson`, which transformers and llama-cpp-python render alike). Missing
  ids become call00001...
  (nine letters and digits, what Mistral's template demands).
- a `tool` message with the result (`tool_call_id` and `name` optional: results answer the open calls
  in order), content as text or a JSON value.
- reasoning as `reasoning_content` (or `thinking`, `reasoning`), or inline at the start of the content
  as `<think>...</think>`; kept as `reasoning_content`.
The checks: a call to a tool that is not in `tools`, arguments that are not a JSON object, a result
with no open call, a conversation that goes on past a call before its result.
"""

from __future__ import annotations

import json
import re
from typing import Any

REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_INLINE_THINK = re.compile(r"\A\s*<think>\n?(.*?)\n?</think>\s*", re.S)


class ToolDataError(Exception):
    def __init__(self, field: str | None, message: str, fix: str, reason: str):
        super().__init__(message)
        self.field, self.message, self.fix, self.reason = field, message, fix, reason


def read_tools(value: Any, field: str) -> list[dict]:
    """The row's tools as [{"type": "function", "function": {...}}]; ToolDataError names the entry."""
    if isinstance(value, str):  # ShareGPT datasets and CSV cells keep the list as JSON text
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise ToolDataError(
                field, f"'{field}' is text that is not JSON ({exc.msg})", "write the tools as a JSON list", "tools"
            ) from None
    if not isinstance(value, list):
        raise ToolDataError(
            field,
            f"'{field}' must be a list of functions, got {type(value).__name__}",
            'write [{"type": "function", "function": {"name": ..., "parameters": {...}}}]',
            "tools",
        )
    tools = []
    for i, entry in enumerate(value):
        where = f"{field}[{i}]"
        fn = entry.get("function", entry) if isinstance(entry, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise ToolDataError(
                where,
                "a tool needs a function name",
                'write {"type": "function", "function": {"name": "...", "parameters": {...}}}',
                "tools",
            )
        if isinstance(fn.get("parameters"), str):  # some datasets keep the schema as JSON text
            try:
                fn = {**fn, "parameters": json.loads(fn["parameters"])}
            except json.JSONDecodeError:
                pass
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise ToolDataError(
                f"{where}.parameters",
                f"the parameters of tool {name!r} must be a JSON schema object",
                'write "parameters": {"type": "object", "properties": {...}}',
                "tools",
            )
        tools.append({"type": "function", "function": dict(fn)})
    return tools


def tool_names(tools: list[dict] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or ()]


def resolve_tools(turns: list[dict], tools: list[dict] | None, key: str) -> tuple[tuple, tuple]:
    """((role, content), ...) and the matching details of `turns` (formats._conversation's output)."""
    names = tool_names(tools)
    messages, details = [], []
    pending: list[dict] = []  # calls still waiting for their result
    count = 0
    for turn in turns:
        role, content, raw, field = turn["role"], turn["content"], turn["raw"], turn["field"]
        detail: dict = {}
        if role != "tool" and pending:
            raise ToolDataError(
                f"{field}.role",
                f"the conversation goes on with a {role!r} message before the result of the call to "
                f"{pending[0]['function']['name']!r} (id {pending[0]['id']})",
                "add a tool message with that call's result after the call, or remove the call",
                "tool_result",
            )
        if role == "assistant":
            content, reasoning = _reasoning(raw, content, field)
            if reasoning:
                detail["reasoning_content"] = reasoning
            calls = _calls(raw, turn["from"], field)
            for n, call in enumerate(calls):
                count += 1
                detail.setdefault("tool_calls", []).append(_call(call, f"{field}.tool_calls[{n}]", names, tools, count))
            pending = list(detail.get("tool_calls", ()))
        elif role == "tool":
            detail = _result(raw, pending, field)
        messages.append((role, content))
        details.append(detail)
    return tuple(messages), tuple(details)


def _reasoning(raw: dict, content: str, field: str) -> tuple[str, str]:
    for k in REASONING_KEYS:
        value = raw.get(k)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ToolDataError(
                f"{field}.{k}",
                f"reasoning must be text, got {type(value).__name__}",
                "write the reasoning as a string",
                "wrong_type",
            )
        return content, value.strip("\n")
    inline = _INLINE_THINK.match(content)
    if inline:
        return content[inline.end() :], inline.group(1).strip("\n")
    return content, ""


def _calls(raw: dict, source_role: str, field: str) -> list:
    if source_role == "function_call":  # ShareGPT: the value is the call (or a list of calls) as JSON
        value = raw.get("value")
        try:
            value = value if isinstance(value, (dict, list)) else json.loads(value or "")
        except (json.JSONDecodeError, TypeError) as exc:
            raise ToolDataError(
                f"{field}.value",
                f"a function_call turn must hold the call as JSON ({getattr(exc, 'msg', exc)})",
                'write {"name": ..., "arguments": {...}}',
                "tool_call",
            ) from None
        return value if isinstance(value, list) else [value]
    calls = raw.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ToolDataError(f"{field}.tool_calls", "tool_calls must be a list", "write a list of calls", "tool_call")
    return calls


def _call(call: Any, field: str, names: list[str], tools, count: int) -> dict:
    fn = call.get("function", call) if isinstance(call, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise ToolDataError(
            field,
            "a tool call needs a function name",
            'write {"function": {"name": ..., "arguments": {...}}}',
            "tool_call",
        )
    if name not in names:
        raise ToolDataError(
            f"{field}.function.name",
            f"the call is to {name!r}, which is not in the row's tools "
            f"({', '.join(map(repr, names)) if names else 'the row has no tools list'})",
            "add the tool to the row's 'tools' list, or fix the name",
            "tool_call",
        )
    args = fn.get("arguments", fn.get("parameters"))
    if args is None:  # a call without arguments
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolDataError(
                f"{field}.function.arguments",
                f"the arguments of the call to {name!r} are not valid JSON ({exc.msg}): {args[:60]!r}",
                "write the arguments as a JSON object",
                "tool_call",
            ) from None
    if not isinstance(args, dict):
        raise ToolDataError(
            f"{field}.function.arguments",
            f"the arguments of the call to {name!r} must be a JSON object, got {json.dumps(args)[:60]}",
            'write them as an object, e.g. {"city": "Oslo"}',
            "tool_call",
        )
    call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call{count:05d}"
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _result(raw: dict, pending: list[dict], field: str) -> dict:
    if not pending:
        raise ToolDataError(
            f"{field}.role",
            "a tool result with no call before it to answer",
            "put the assistant message with the matching tool_calls before it, or remove the result",
            "tool_result",
        )
    wanted = raw.get("tool_call_id")
    if wanted:
        match = next((c for c in pending if c["id"] == wanted), None)
        if match is None:
            raise ToolDataError(
                f"{field}.tool_call_id",
                f"the result answers call id {wanted!r}, but the open calls are "
                f"{', '.join(repr(c['id']) for c in pending)}",
                "use the id of the call this result belongs to",
                "tool_result",
            )
    else:
        match = pending[0]
    name = raw.get("name")
    if name and name != match["function"]["name"]:
        raise ToolDataError(
            f"{field}.name",
            f"the result is named {name!r}, but it answers the call to {match['function']['name']!r}",
            "give the result its call's name, or fix the order of the results",
            "tool_result",
        )
    pending.remove(match)
    return {"tool_call_id": match["id"], "name": match["function"]["name"]}
