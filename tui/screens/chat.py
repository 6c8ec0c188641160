"""Chat with a run's exported GGUF, optionally side by side with the base model (ctrl+o).

Replies come from the core's ChatSession (as `localtune chat` uses it) in a thread worker; tokens
stream into a live line as messages that coalesce, then the whole reply joins the log.

Run as:  localtune tui   (then c on an exported run)
"""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, RichLog, Static

from localtune.errors import LocaltuneError
from localtune.tui.messages import ChatLine, ChatStreamed, WorkFailed

SIDES = ("tuned", "base")  # the widget ids of each side's log are these; their live lines add "-live"


class ChatScreen(Screen):
    BINDINGS = [
        Binding("ctrl+o", "toggle_compare", "Compare"),
        Binding("ctrl+r", "reset", "Reset"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, target: Path):
        super().__init__()
        self.target = Path(target)
        self.compare = False
        self.sessions: dict[str, object] = {}  # side -> ChatSession, opened on the first question

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label(f"Chat with {self.target.name} (ctrl+o compares with the base)", id="title")
        with Horizontal(id="chats"):
            for side in SIDES:
                with Vertical(id=f"{side}-side"):
                    yield RichLog(id=side, wrap=True, markup=False)
                    yield Static("", id=f"{side}-live", markup=False)
        yield Input(placeholder="Type a message, enter to send", id="prompt")
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

    @on(Input.Submitted, "#prompt")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        if text:
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
            self.sessions[side] = ChatSession(open_route(spec, n_ctx=2048), sampling=Sampling(max_tokens=200))
        return self.sessions[side]

    @work(thread=True, exclusive=True, group="chat")
    def answer(self, text: str) -> None:
        for side in SIDES if self.compare else SIDES[:1]:
            self.post_message(ChatLine(side, f"you: {text}"))
            try:
                reply = self.ask(side, text)
            except LocaltuneError as exc:
                self.post_message(WorkFailed(exc.title, exc.render()))
                return
            self.post_message(ChatStreamed(side, ""))
            self.post_message(ChatLine(side, f"{side}: {reply.strip()}"))

    def ask(self, side: str, text: str) -> str:
        """One side's reply; its tokens stream into the side's live line as they come (in the worker)."""
        parts: list[str] = []

        def streamed(piece: str) -> None:
            parts.append(piece)
            self.post_message(ChatStreamed(side, f"{side}: {''.join(parts)}"))

        return self.session(side).ask(text, on_token=streamed)

    def on_chat_line(self, message: ChatLine) -> None:
        self.query_one(f"#{message.side}", RichLog).write(message.text)

    def on_chat_streamed(self, message: ChatStreamed) -> None:
        self.query_one(f"#{message.side}-live", Static).update(message.text)

    def on_work_failed(self, message: WorkFailed) -> None:
        self.notify(message.text, title=message.title, severity="error")
