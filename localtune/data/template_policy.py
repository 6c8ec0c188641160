"""What localtune adds to a chat template for tool and reasoning data: one reasoning policy, and a tool
format for templates that have none. Both are a Jinja preamble in front of the model's own template,
so training, the template embedded in every export, and chat render through the very same text.

- Reasoning policy (`data.reasoning`): which assistant messages keep their `reasoning_content`.
  keep_all: every one; last_turn (default, what Qwen3 and gpt-oss do at inference): those after the
  last user message (the current turn, its tool-call steps included); drop: none.
- A template that does not write `reasoning_content` gets the reasoning inline, at the start of the
  content: "<think>\\n" + reasoning + "\\n</think>\\n\\n".
- A template that does not write `tools` and `tool_calls` gets localtune's default tool format,
  carried in the model's own turns (Hermes style, what most runtimes parse): the tools as JSON lines
  in <tools></tools> in the system message, each call as
  "<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>" after the content, and the results
  as one user message of "<tool_response>\\n...\\n</tool_response>" blocks.
Which of these a template needs is found by rendering probe conversations, never by its name.
"""

from __future__ import annotations

from collections.abc import Callable

from localtune.errors import UsageError

REASONING_POLICIES = ("keep_all", "last_turn", "drop")
MARK = "{#- localtune template:"  # the first line of a wrapped template: wrapping twice is a no-op
TOOLS_INTRO = "Tools you can call, one JSON object each:"
TOOLS_HOWTO = (
    'Call one as <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>; '
    "results come back in <tool_response></tool_response>."
)
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "ltprobetool", "description": "probe", "parameters": {"type": "object", "properties": {}}},
}
_PROBE_CALL = {"id": "call00001", "type": "function", "function": {"name": "ltprobecall", "arguments": {"k": "v"}}}

Render = Callable[..., str]  # render(messages, add_generation_prompt, tools=None) -> text


def _keep(policy: str) -> str:
    return {
        "keep_all": "true",
        "last_turn": "loop.index0 > lt.last_user",
        "drop": "false",
    }[policy]


def preamble(policy: str, *, inline_reasoning: bool, tool_format: bool, system_ok: bool = True) -> str:
    """The Jinja text that rewrites `messages` before the model's template reads them."""
    if policy not in REASONING_POLICIES:
        raise ValueError(policy)
    strip = "['reasoning_content', 'thinking', 'reasoning'" + (", 'tool_calls'" if tool_format else "") + "]"
    if inline_reasoning:
        keep = "{%- set m2 = dict(m2, content='<think>\\n' + r + '\\n</think>\\n\\n' + (m['content'] or '')) -%}"
    else:
        keep = "{%- set m2 = dict(m2, reasoning_content=r, thinking=r) -%}"
    out = [
        f"{MARK} reasoning={policy}{' think=inline' if inline_reasoning else ''}"
        f"{' tools=localtune' if tool_format else ''} -#}}\n",
        "{%- set lt = namespace(last_user=-1, out=[], open_result=false, calls='') -%}",
        "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set lt.last_user = loop.index0 -%}"
        "{%- endif -%}{%- endfor -%}",
        "{%- for m in messages -%}",
        "{%- set r = m['reasoning_content'] if m['reasoning_content'] is string else "
        "(m['thinking'] if m['thinking'] is string else (m['reasoning'] if m['reasoning'] is string else '')) -%}",
        f"{{%- set m2 = dict(m | items | rejectattr('0', 'in', {strip}) | list) -%}}",
        f"{{%- if m['role'] == 'assistant' and r and {_keep(policy)} -%}}{keep}{{%- endif -%}}",
    ]
    if tool_format:
        out += [
            "{%- if m['role'] == 'assistant' and m['tool_calls'] -%}{%- set lt.calls = '' -%}",
            "{%- for c in m['tool_calls'] -%}{%- set f = c['function'] if c['function'] is defined else c -%}",
            "{%- set lt.calls = lt.calls + '<tool_call>\\n{\"name\": ' + f['name'] | tojson + ', \"arguments\": ' + "
            "(f['arguments'] if f['arguments'] is string else f['arguments'] | tojson) + '}\\n</tool_call>' + "
            "('' if loop.last else '\\n') -%}",
            "{%- endfor -%}",
            "{%- set m2 = dict(m2, content=(m2['content'] or '') + ('\\n' if m['content'] else '') + lt.calls) -%}",
            "{%- endif -%}",
            "{%- if m['role'] == 'tool' -%}",
            "{%- set block = '<tool_response>\\n' + m['content'] + '\\n</tool_response>' -%}",
            "{%- if lt.open_result -%}{%- set lt.out = lt.out[:-1] + [{'role': 'user', "
            "'content': lt.out[-1]['content'] + '\\n' + block}] -%}",
            "{%- else -%}{%- set lt.out = lt.out + [{'role': 'user', 'content': block}] -%}{%- endif -%}",
            "{%- set lt.open_result = true -%}",
            "{%- else -%}{%- set lt.out = lt.out + [m2] -%}{%- set lt.open_result = false -%}{%- endif -%}",
        ]
    else:
        out.append("{%- set lt.out = lt.out + [m2] -%}")
    out.append("{%- endfor -%}")
    if tool_format:
        out += [
            "{%- if tools -%}{%- set lt.calls = '' -%}",
            "{%- for t in tools -%}{%- set lt.calls = lt.calls + (t | tojson) + '\\n' -%}{%- endfor -%}",
            f"{{%- set block = '{TOOLS_INTRO}\\n<tools>\\n' + lt.calls + '</tools>\\n{TOOLS_HOWTO}' -%}}",
        ]
        if system_ok:  # into the system message, or a new one
            out += [
                "{%- if lt.out and lt.out[0]['role'] == 'system' -%}",
                "{%- set lt.out = [dict(lt.out[0], content=lt.out[0]['content'] + '\\n\\n' + block)] + lt.out[1:] -%}",
                "{%- else -%}{%- set lt.out = [{'role': 'system', 'content': block}] + lt.out -%}{%- endif -%}",
            ]
        else:  # a template that refuses a system role: in front of the first user message
            out.append(
                "{%- if lt.out -%}{%- set lt.out = [dict(lt.out[0], content=block + '\\n\\n' + lt.out[0]['content'])]"
                " + lt.out[1:] -%}{%- endif -%}"
            )
        out.append("{%- endif -%}")
    out.append("{%- set messages = lt.out -%}\n")
    return "".join(out)


def policy_of(text: str) -> str | None:
    """The reasoning policy a wrapped template applies (None for a template localtune did not wrap)."""
    if not text.lstrip().startswith(MARK):
        return None
    head = text.lstrip()[len(MARK) :].split("-#}", 1)[0]
    return next((w.split("=", 1)[1] for w in head.split() if w.startswith("reasoning=")), None)


def apply_policy(messages: list[dict], policy: str | None) -> list[dict]:
    """`messages` without the reasoning that `policy` leaves out, as the wrapped template does: the view
    in which the text before every turn is a prefix of the whole conversation."""
    if policy is None or policy == "keep_all":
        return messages
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    out = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and (policy == "drop" or i < last_user):
            m = {k: v for k, v in m.items() if k not in ("reasoning_content", "thinking", "reasoning")}
        out.append(m)
    return out


def supports_tools(render: Render) -> bool:
    """Whether the template writes the tools it is given and the calls of an assistant message."""
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]},
        {"role": "tool", "content": "ltproberesult", "tool_call_id": "call00001", "name": "ltprobecall"},
        {"role": "assistant", "content": "a"},
    ]
    try:
        text = render(msgs, False, tools=[_PROBE_TOOL])
    except Exception:
        return False
    return all(word in text for word in ("ltprobetool", "ltprobecall", "ltproberesult"))


def supports_reasoning(render: Render) -> bool:
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "reasoning_content": "ltprobethought"},
    ]
    try:
        return "ltprobethought" in render(msgs, False)
    except Exception:
        return False


def accepts_system(render: Render) -> bool:
    try:
        render([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], True)
        return True
    except Exception:
        return False


def keeps_earlier_reasoning(render: Render) -> bool:
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "reasoning_content": "ltprobefirst"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "b", "reasoning_content": "ltprobesecond"},
    ]
    try:
        return "ltprobefirst" in render(msgs, False)
    except Exception:
        return False


def wrap(
    text: str, make_render: Callable[[str], Render], policy: str, *, tools: bool, reasoning: bool = True
) -> tuple[str, str]:
    """(the wrapped template, what was added, for the run's records). `make_render(text)` renders with a
    template text. A keep_all policy that the template cannot honour is refused."""
    if text.lstrip().startswith(MARK):
        return text, "localtune's wrapping, as recorded"
    own = make_render(text)
    inline = not supports_reasoning(own)
    tool_format = tools and not supports_tools(own)
    wrapped = preamble(policy, inline_reasoning=inline, tool_format=tool_format, system_ok=accepts_system(own)) + text
    if reasoning and policy != "drop" and not supports_reasoning(make_render(wrapped)):
        raise UsageError(
            "the data has reasoning, but this model's chat template removes it even when written inline as "
            "<think>...</think> (as DeepSeek-R1 distills' templates strip it), so none of it would train",
            hint="use data.reasoning: drop to train without it, or give model.chat_template a template that "
            "writes reasoning_content",
            title="reasoning would be lost",
        )
    if policy == "keep_all" and not keeps_earlier_reasoning(make_render(wrapped)):
        raise UsageError(
            "data.reasoning is keep_all, but this model's chat template drops the reasoning of earlier turns "
            "(as Qwen3's does), so training could not keep it either",
            hint="use data.reasoning: last_turn (what the template does) or drop, or give model.chat_template "
            "a template that writes every turn's reasoning",
            title="reasoning policy not possible",
        )
    added = [f"reasoning {policy}"] + (["reasoning inline as <think>"] if inline else [])
    added += ["localtune's tool format (<tool_call> JSON)"] if tool_format else []
    return wrapped, ", ".join(added)
