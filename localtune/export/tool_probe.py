"""The fixed tool conversation `verify` renders through the exported GGUF's template and through the training
template: tools, a call with reasoning, its result, an answer with reasoning, and a follow-up question. Every
part that a runtime's tool-call parser or the reasoning policy depends on is in it, so a template that drifted
in any of them renders differently."""

from __future__ import annotations

PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city today.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "The sum of two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    },
]
PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant with tools."},
    {"role": "user", "content": "What is the weather in Oslo?"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "The user wants the weather; I should call get_weather.",
        "tool_calls": [
            {
                "id": "call00001",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}},
            }
        ],
    },
    {
        "role": "tool",
        "content": '{"temperature": 4, "sky": "rain"}',
        "tool_call_id": "call00001",
        "name": "get_weather",
    },
    {
        "role": "assistant",
        "content": "It is 4 degrees and raining in Oslo.",
        "reasoning_content": "The tool says 4 C and rain.",
    },
    {"role": "user", "content": "And what is 2 plus 3?"},
]
# Rendered whole, and cut at the tool result: the prompt the model sees mid-call, where templates that hide
# earlier reasoning once a later user message exists (Qwen3's) still show the calling turn's reasoning.
PROBES = (("the whole exchange", PROBE_CONVERSATION), ("the exchange up to the tool result", PROBE_CONVERSATION[:4]))
