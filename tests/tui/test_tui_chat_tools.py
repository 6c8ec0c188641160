"""The chat screen with reasoning and tool calls, on a scripted session (replies random weights never write)."""

from __future__ import annotations

import asyncio

from scripted_chat import ScriptedSession
from textual.widgets import Collapsible, Input, RichLog

from localtune.tui.app import LocaltuneApp
from localtune.tui.screens.chat import ChatScreen

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
BROKEN = '<tool_call>\n{"name": "get_time", "arguments": {"zone": \n</tool_call>'


def chat_on(tmp_path, script, tools=None, checks=None):
    """Open the chat screen with a session that writes `script`, then run `checks(pilot, screen)`."""

    async def main():
        async with LocaltuneApp(tmp_path).run_test(size=(100, 32)) as pilot:
            screen = ChatScreen(tmp_path, tools=tools)
            await pilot.app.push_screen(screen)
            screen.sessions["tuned"] = ScriptedSession(None, tools=tools, script=script)
            await checks(pilot, screen)

    asyncio.run(main())


async def send(pilot, screen, text: str) -> None:
    screen.query_one("#prompt", Input).value = text
    await pilot.press("enter")
    await pilot.pause(0.1)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.1)


def log_text(screen) -> str:
    return "\n".join(str(line.text) for line in screen.query_one("#tuned", RichLog).lines)


def test_calls_are_structured_and_an_unreadable_one_is_raw_with_a_warning(tmp_path):
    async def checks(pilot, screen):
        await send(pilot, screen, "Weather and time?")
        log = log_text(screen)
        assert "tuned: On it." in log and '→ call get_weather({"city": "Oslo"})' in log
        assert "warning: could not parse a tool call; shown raw" in log and '"zone":' in log
        assert "(reasoning: 3 words — expand it below)" in log
        fold = screen.query_one("#tuned-reasoning", Collapsible)
        assert fold.collapsed and "Two tools needed." in str(fold.query_one(".reasoning-text").render())
        assert screen.query_one("#prompt", Input).placeholder.startswith("Type a message")  # no tools: no result asked
        await send(pilot, screen, "Thanks")  # the fold holds the latest reply's reasoning
        assert "Again." in str(fold.query_one(".reasoning-text").render()) and fold.title == "reasoning (1 word)"

    script = ["<think> Two tools needed. </think> On it. " + CALL + " " + BROKEN, "<think> Again. </think> Done."]
    chat_on(tmp_path, script, checks=checks)


def test_with_tools_the_input_takes_the_result_and_the_model_goes_on(tmp_path):
    async def checks(pilot, screen):
        await send(pilot, screen, "Weather in Oslo?")
        prompt = screen.query_one("#prompt", Input)
        assert prompt.placeholder == "result of get_weather"
        await send(pilot, screen, "12 °C, rain")
        session = screen.sessions["tuned"]
        assert session.results == [("get_weather", "12 °C, rain")] and session.asked == ["Weather in Oslo?", None]
        log = log_text(screen)
        assert "result of get_weather: 12 °C, rain" in log and "tuned: It is 12 °C in Oslo." in log
        assert prompt.placeholder.startswith("Type a message")

    chat_on(tmp_path, [CALL, "It is 12 °C in Oslo."], tools=TOOLS, checks=checks)
