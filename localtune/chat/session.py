"""Chatting with a GGUF offline through llama-cpp-python: the chat template and stop tokens come
from the file; history is kept within the context window (oldest turns dropped first, with a notice).

Run as:  localtune chat GGUF|RUN_DIR [--prompt TEXT] [--compare]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localtune.errors import UsageError


def find_models(target: str | Path) -> tuple[Path, Path | None]:
    """(fine-tuned GGUF, base GGUF or None) for a GGUF file or a run folder's export bundle. A prefix bundle's
    (or a vectors-only bundle's) fine-tuned GGUF is its base GGUF: open it with `chat.routes.find_routes`."""
    from localtune.chat.routes import find_routes

    tuned, base = find_routes(target)
    return tuned.gguf, (base.gguf if base else None)


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 0


def fit_history(session, prompt: str) -> list[dict]:
    """The messages of `prompt` after the session's history, dropping the oldest exchanges (with a notice) until
    they and the answer fit the context window; a prompt that cannot fit alone is refused. `session` has
    messages(), prompt_tokens(), history, notice, sampling and n_ctx (ChatSession, chat.hf_session's)."""

    def fits(msgs: list[dict]) -> bool:
        return session.prompt_tokens(msgs) + session.sampling.max_tokens <= session.n_ctx

    msgs = session.messages(prompt)
    while not fits(msgs) and len(session.history) >= 2:
        session.history = session.history[2:]
        session.notice("(the oldest exchange was dropped to fit the context window)")
        msgs = session.messages(prompt)
    if not fits(msgs):
        raise UsageError(
            f"the prompt needs {session.prompt_tokens(msgs)} tokens plus {session.sampling.max_tokens} "
            f"for the answer, more than the {session.n_ctx}-token context window",
            hint="raise --ctx or lower --max-tokens",
            title="prompt too long",
        )
    return msgs


@dataclass
class ChatSession:
    llm: object  # a llama_cpp.Llama, or a chat.routes.Route (prompt tuning, prefix tuning)
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    history: list[dict] = field(default_factory=list)
    notice: Callable[[str], None] = print

    def __post_init__(self) -> None:
        from localtune.chat.routes import as_route

        self.route = as_route(self.llm)
        self.llm = self.route.llm

    def messages(self, prompt: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": prompt}]

    def prompt_tokens(self, msgs: list[dict]) -> int:
        """Tokens of the prompt as the GGUF's own chat template renders it (with the route's virtual part)."""
        if self.route.kind in ("vectors", "prefix"):
            return self.route.n_virtual + len(self.route.chat_ids(msgs))
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return sum(len(self.llm.tokenize(m["content"].encode(), add_bos=False)) + 8 for m in msgs)
        text = lambda tid: self.llm.detokenize([tid], special=True).decode("utf-8", errors="replace")  # noqa: E731
        prompt = Jinja2ChatFormatter(
            template,
            eos_token=text(self.llm.token_eos()),
            bos_token=text(self.llm.token_bos()),
            add_generation_prompt=True,
        )(messages=msgs).prompt
        return len(self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    @property
    def n_ctx(self) -> int:
        # llama.cpp may round its context up; llama-cpp-python's token buffer keeps the size asked for.
        return min(self.llm.n_ctx(), len(self.llm.input_ids))

    def ask(self, prompt: str, on_token: Callable[[str], None] | None = None) -> str:
        msgs = fit_history(self, prompt)
        s = self.sampling
        options = dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed, stream=True)
        if self.route.kind in ("vectors", "prefix"):  # the prompt as tokens after the pinned vectors / prefix
            stream = self.route.complete(self.route.chat_ids(msgs), **options)
            content = lambda chunk: chunk["choices"][0]["text"]  # noqa: E731
        else:  # the GGUF's own template (a portable GGUF's starts with its virtual tokens), their -inf bias
            stream = self.llm.create_chat_completion(msgs, logit_bias=self.route.bias or None, **options)
            content = lambda chunk: chunk["choices"][0]["delta"].get("content")  # noqa: E731
        parts = []
        for chunk in stream:
            piece = content(chunk) or ""
            if piece:
                parts.append(piece)
                if on_token:
                    on_token(piece)
        answer = "".join(parts)
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return answer

    def reset(self) -> None:
        self.history = []
        self.route.repin()

    def save(self, path: str | Path) -> Path:
        """The conversation as JSON, written whole (files.write_json): an interrupted save keeps the old file."""
        from localtune.files import write_json

        return write_json(path, {"system": self.system, "messages": self.history}, indent=1)
