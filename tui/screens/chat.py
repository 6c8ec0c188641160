"""Chat with a run's exported GGUF, optionally side by side with the base model (ctrl+o).

Replies come from the core's ChatSession (as `localtune chat` uses it) in a thread worker; the answer's
text streams into a live line as messages that coalesce, then the whole reply joins the log: its reasoning
folded (a Collapsible under the log holds the latest), each tool call as a structured line, a call that
could not be read raw with a warning. Opened with tools, the input then asks for each call's result in turn
and the model goes on once all are given.

Run as:  localtune tui   (then c on an exported run)
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Collapsible, Footer, Header, Input, Label, RichLog, Static

from localtune.chat.tool_calls import PARSE_WARNING, Reply, call_line, reasoning_fold, words
from localtune.errors import LocaltuneError
from localtune.tui.messages import ChatLine, ChatReasoned, ChatStreamed, ToolCallsPending, WorkFailed

SIDES = ("tuned", "base")  # the widget ids of each side's log are these; their live lines add "-live"
PLACEHOLDER = "Type a message, enter to send"


class ChatScreen(Screen):
    BINDINGS = [
        Binding("ctrl+o", "toggle_compare", "Compare"),
        Binding("ctrl+r", "reset", "Reset"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, target: Path, tools: list[dict] | None = None):
        super().__init__()
        self.target = Path(target)
        self.tools = tools
        self.compare = False
        self.sessions: dict[str, object] = {}  # side -> ChatSession, opened on the first question
        self.pending: list[tuple[str, dict]] = []  # calls waiting for the person's result
        self.calling: list[str] = []  # the sides that resume once every pending call has its result

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Chat with {self.target.name} (ctrl+o compares with the base)", id="title")
        with Horizontal(id="chats"):
            for side in SIDES:
                with Vertical(id=f"{side}-side"):
                    yield RichLog(id=side, wrap=True, markup=False)
                    yield Static("", id=f"{side}-live", markup=False)
        yield Input(placeholder=PLACEHOLDER, id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#base-side").display = False
        self.query_one(Input).focus()

    def action_toggle_compare(self) -> None:
        self.compare = not self.compare
        self.query_one("#base-side").display = self.compare

    def action_reset(self) -> None:
        for s in self.sessions.values():
            s.reset()
        for log in self.query(RichLog):
            log.clear()
        self.pending, self.calling = [], []
        self.query_one(Input).placeholder = PLACEHOLDER

    @on(Input.Submitted, "#prompt")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        if self.pending:  # the text is the result of the next call
            side, call = self.pending.pop(0)
            self.session(side).add_tool_result(call, text)
            self.query_one(f"#{side}", RichLog).write(f"result of {call['function']['name']}: {text}")
            if self.pending:
                event.input.placeholder = f"result of {self.pending[0][1]['function']['name']}"
            else:
                event.input.placeholder = PLACEHOLDER
                self.answer(None, self.calling)
        elif text:
            self.answer(text)

    def session(self, side: str):
        if side not in self.sessions:
            from localtune.chat.routes import find_routes, open_route
            from localtune.chat.session import ChatSession, Sampling
            from localtune.cli.hf_chat import hf_session, transformers_method

            if transformers_method(self.target):  # LLaMA-Adapter: the run's model on transformers, as `chat` does
                self.sessions[side] = hf_session(
                    self.target,
                    compare=side != "tuned",
                    system=None,
                    sampling=Sampling(max_tokens=200),
                    ctx=2048,
                    notice=lambda _m: None,
                )[1]
                return self.sessions[side]
            # a prompt- or prefix-tuning run: its GGUF with the learned vectors or prefix (chat/routes.py)
            tuned, base = find_routes(self.target)
            spec = tuned if side == "tuned" else base
            if spec is None:
                raise LocaltuneError("there is no base model GGUF to compare with", hint="export the run first")
            self.sessions[side] = ChatSession(
                open_route(spec, n_ctx=2048), sampling=Sampling(max_tokens=200), tools=self.tools
            )
        return self.sessions[side]

    @work(thread=True, exclusive=True, group="chat")
    def answer(self, text: str | None, sides: list[str] | None = None) -> None:
        """Each side's reply to `text` (None: each of `sides` goes on after its tool results)."""
        pending = []
        for side in sides or (SIDES if self.compare else SIDES[:1]):
            if text is not None:
                self.post_message(ChatLine(side, f"you: {text}"))
            try:
                reply = self.ask(side, text)
            except LocaltuneError as exc:
                self.post_message(WorkFailed(exc.title, exc.render()))
                return
            self.post_message(ChatStreamed(side, ""))
            pending += self.show_reply(side, reply)
        if pending:
            self.post_message(ToolCallsPending(pending))

    def ask(self, side: str, text: str | None) -> Reply:
        """One side's reply; its answer streams into the side's live line as it comes (in the worker)."""
        parts: list[str] = []

        def streamed(piece: str) -> None:
            parts.append(piece)
            self.post_message(ChatStreamed(side, f"{side}: {''.join(parts)}"))

        session = self.session(side)
        hooks = {"on_token": streamed}
        if hasattr(session, "last_reply"):  # a llama.cpp session parses reasoning and calls
            hooks["on_thinking"] = lambda: self.post_message(ChatStreamed(side, f"{side}: thinking…"))
        answer = session.ask(text, **hooks) if text is not None else session.resume(**hooks)
        return getattr(session, "last_reply", None) or Reply(content=answer.strip())

    def show_reply(self, side: str, reply: Reply) -> list[tuple[str, dict]]:
        """The reply's lines in the side's log; the calls the person is to answer (with tools)."""
        if reply.reasoning:
            self.post_message(ChatReasoned(side, reply.reasoning))
        if reply.content or not (reply.calls or reply.raw_calls):
            self.post_message(ChatLine(side, f"{side}: {reply.content}"))
        for call in reply.calls:
            self.post_message(ChatLine(side, call_line(call)))
        for raw in reply.raw_calls:
            self.post_message(ChatLine(side, PARSE_WARNING))
            self.post_message(ChatLine(side, raw))
        return [(side, call) for call in reply.calls] if self.tools else []

    def on_chat_line(self, message: ChatLine) -> None:
        self.query_one(f"#{message.side}", RichLog).write(message.text)

    def on_chat_reasoned(self, message: ChatReasoned) -> None:
        """A one-line summary in the log; the text itself in the side's folded Collapsible (the latest reply's)."""
        self.query_one(f"#{message.side}", RichLog).write(reasoning_fold(message.text, "expand it below"))
        title = f"reasoning ({words(message.text)})"
        found = self.query(f"#{message.side}-reasoning")
        if found:
            fold = found.first(Collapsible)
            fold.title = title
            fold.query_one(".reasoning-text", Static).update(message.text)
        else:
            fold = Collapsible(
                Static(message.text, markup=False, classes="reasoning-text"),
                title=title,
                id=f"{message.side}-reasoning",
            )
            self.query_one(f"#{message.side}-side").mount(fold, before=f"#{message.side}-live")

    def on_tool_calls_pending(self, message: ToolCallsPending) -> None:
        self.pending = list(message.calls)
        self.calling = list(dict.fromkeys(side for side, _ in message.calls))
        self.query_one(Input).placeholder = f"result of {self.pending[0][1]['function']['name']}"

    def on_chat_streamed(self, message: ChatStreamed) -> None:
        self.query_one(f"#{message.side}-live", Static).update(message.text)

    def on_work_failed(self, message: WorkFailed) -> None:
        self.notify(message.text, title=message.title, severity="error")
