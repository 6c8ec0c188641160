"""A scripted stand-in for ChatSession (chat/session.py): each turn 'writes' the next text of its script, streamed
and parsed as the session does, so the faces (CLI, TUI) can be tested on replies random weights never write."""

from __future__ import annotations

from localtune.chat.tool_calls import ReplyStream


class ScriptedSession:
    """ChatSession's face; each turn 'writes' the next scripted text, streamed and parsed as a session does."""

    made: list[ScriptedSession] = []

    def __init__(self, llm, *, system=None, sampling=None, notice=None, tools=None, script=()):
        self.tools, self.script, self.results, self.asked, self.last_reply = tools, list(script), [], [], None
        ScriptedSession.made.append(self)

    def ask(self, prompt, on_token=None, *, on_thinking=None, on_reasoning=None):
        self.asked.append(prompt)
        return self._turn(on_token, on_thinking, on_reasoning)

    def resume(self, on_token=None, *, on_thinking=None, on_reasoning=None):
        self.asked.append(None)
        return self._turn(on_token, on_thinking, on_reasoning)

    def _turn(self, on_token, on_thinking, on_reasoning):
        quiet = lambda *a: None  # noqa: E731
        on_token, on_thinking, on_reasoning = on_token or quiet, on_thinking or quiet, on_reasoning or quiet
        live, thought, told = ReplyStream(first_id=len(self.results) + 1), False, False
        for piece in self.script.pop(0).split(" "):
            text = live.feed(piece + " ")
            if live.thinking and not thought:
                thought = True
                on_thinking()
            if text:
                if thought and not told:  # as ChatSession: the reasoning is told when the answer begins
                    told = on_reasoning(live.reasoning) or True
                on_token(text)
        tail = live.finish()
        if live.reply.reasoning and not told:
            on_reasoning(live.reply.reasoning)
        on_token(tail)
        self.last_reply = live.reply
        return live.reply.content

    def add_tool_result(self, call, result):
        self.results.append((call["function"]["name"], result))

    def reset(self):
        pass
