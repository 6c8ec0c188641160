"""How `localtune chat` prints one turn: the reasoning folded to one line (or shown), the answer as it streams,
each tool call as a structured line, a call that could not be read raw with a warning; with tools, the person
types each call's result and the model goes on.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from localtune.chat.tool_calls import PARSE_WARNING, call_line, reasoning_fold


class TurnPrinter:
    """Prints turns of several sessions; `reasoning[label]` is each one's latest reasoning (for /reasoning)."""

    def __init__(self, *, show_reasoning: bool = False, read: Callable[[str], str] = input):
        self.show_reasoning, self.read = show_reasoning, read
        self.reasoning: dict[str | None, str] = {}

    def turn(self, label: str | None, session, text: str, *, answer_calls: bool) -> None:
        """Ask `text`; with `answer_calls`, read a result for every call and resume until the model stops calling."""
        self._generate(label, lambda **hooks: session.ask(text, **hooks), session)
        while (reply := getattr(session, "last_reply", None)) is not None:
            for call in reply.calls:
                click.echo(call_line(call))
            for raw in reply.raw_calls:
                click.echo(PARSE_WARNING, err=True)
                click.echo(raw)
            if not (answer_calls and reply.calls):
                return
            try:
                results = [(call, self.read(f"result of {call['function']['name']}> ")) for call in reply.calls]
            except (EOFError, KeyboardInterrupt):  # no result given: the calls stay unanswered
                click.echo()
                return
            for call, result in results:
                session.add_tool_result(call, result)
            self._generate(label, session.resume, session)

    def _generate(self, label, run, session) -> None:
        if label:
            click.echo(f"[{label}] ", nl=False)
        hooks = {"on_token": lambda piece: click.echo(piece, nl=False)}
        if hasattr(session, "last_reply"):  # a llama.cpp session: reasoning and calls come apart from the answer
            hooks.update(on_thinking=lambda: click.echo("thinking…"), on_reasoning=self._reasoned(label))
        run(**hooks)
        click.echo()

    def _reasoned(self, label):
        def said(reasoning: str) -> None:
            self.reasoning[label] = reasoning
            click.echo(f"reasoning:\n{reasoning}\n" if self.show_reasoning else reasoning_fold(reasoning))

        return said

    def show_last_reasoning(self) -> None:
        if not self.reasoning:
            click.echo("(no reasoning yet)")
        for label, reasoning in self.reasoning.items():
            click.echo((f"[{label}] " if label else "") + f"reasoning:\n{reasoning}")
