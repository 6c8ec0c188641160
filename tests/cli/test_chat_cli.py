"""`localtune chat` with tools and reasoning: the tools file's faults, and the flow of a call's result typed back
(on a scripted session: what the model writes is the input here, the printing and the flow are under test)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from scripted_chat import ScriptedSession

from localtune.cli import main

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """scripted(*texts) -> a .gguf path whose chat session writes `texts`, one a turn."""
    import localtune.chat.routes as routes
    import localtune.chat.session as session
    from localtune.chat.routes import RouteSpec

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    ScriptedSession.made = []

    def use(*texts):
        monkeypatch.setattr(routes, "find_routes", lambda target: (RouteSpec(gguf), None))
        monkeypatch.setattr(routes, "open_route", lambda spec, **kw: object())
        monkeypatch.setattr(session, "ChatSession", lambda llm, **kw: ScriptedSession(llm, script=texts, **kw))
        return gguf

    return use


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_a_bad_tools_file_is_refused_with_its_name(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    tools = tmp_path / "tools.json"
    for body, fault in [
        ("[1, 2", "is not JSON"),
        ('{"tools": []}', "holds a JSON dict, not a list of tools"),
        ('[{"type": "function", "function": {"parameters": {}}}]', "tool 1 has no function.name"),
    ]:
        tools.write_text(body)
        result = run("chat", gguf, "--tools", tools, "--prompt", "hi")
        assert result.exit_code == 2 and fault in result.output and str(tools) in result.output, result.output
        assert "Traceback" not in result.output
    result = run("chat", gguf, "--tools", tmp_path / "nope.json", "--prompt", "hi")
    assert result.exit_code == 2 and "cannot read the tools file" in result.output and "nope.json" in result.output


def test_a_call_is_answered_and_the_model_goes_on(scripted, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    gguf = scripted("<think> I need the weather. </think> Let me check. " + CALL, "It is 12 °C in Oslo.")
    result = run("chat", gguf, "--tools", tools, input="Weather in Oslo?\n12 °C, rain\n/reasoning\n/quit\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "thinking…" in out and "(reasoning: 4 words — /reasoning to show)" in out
    assert 'Let me check.\n→ call get_weather({"city": "Oslo"})\nresult of get_weather> It is 12 °C in Oslo.' in out
    assert "<tool_call>" not in out and "I need the weather" in out.split("/reasoning to show)")[1]  # asked for
    session = ScriptedSession.made[0]
    assert session.tools == TOOLS and session.results == [("get_weather", "12 °C, rain")]
    assert session.asked == ["Weather in Oslo?", None]


def test_without_tools_calls_are_shown_and_an_unreadable_one_is_raw(scripted):
    gguf = scripted(CALL + ' <tool_call> {"name": "get_weather", "arguments": {"city": </tool_call>', "Fine.")
    result = run("chat", gguf, input="Weather?\nThanks\n/quit\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert '→ call get_weather({"city": "Oslo"})' in out and "result of" not in out
    assert "warning: could not parse a tool call; shown raw\n<tool_call>" in out and '"city": </tool_call>' in out
    assert "Fine." in out and ScriptedSession.made[0].asked == ["Weather?", "Thanks"]


def test_one_shot_prints_the_fold_the_answer_and_the_calls(scripted, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    gguf = scripted("<think> Weather first. </think> Checking. " + CALL)
    result = run("chat", gguf, "--tools", tools, "--prompt", "Weather?")
    assert result.exit_code == 0, result.output
    assert (
        result.output.index("(reasoning: 2 words")
        < result.output.index("Checking.")
        < result.output.index("→ call get_weather")
    )
    assert "result of" not in result.output
    shown = run("chat", scripted("<think> Weather first. </think> Checking."), "--prompt", "W?", "--show-reasoning")
    assert "reasoning:\nWeather first.\n" in shown.output and "/reasoning to show" not in shown.output


def test_input_ending_at_a_result_prompt_ends_the_chat_cleanly(scripted, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    gguf = scripted(CALL, "never asked")
    result = run("chat", gguf, "--tools", tools, input="Weather in Oslo?\n")  # then end of input, no result
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "result of get_weather>" in result.output and ScriptedSession.made[0].asked == ["Weather in Oslo?"]
