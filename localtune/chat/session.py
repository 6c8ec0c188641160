"""Chatting with a GGUF offline through llama-cpp-python: the chat template and stop tokens come
from the file; history is kept within the context window (oldest turns dropped first, with a notice).

Run as:  localtune chat GGUF|RUN_DIR [--prompt TEXT] [--compare]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localtune.errors import UsageError
from localtune.runs.layout import RunDir


def find_models(target: str | Path) -> tuple[Path, Path | None]:
    """(fine-tuned GGUF, base GGUF or None) for a GGUF file or a run folder's export bundle."""
    target = Path(target)
    if target.is_file():
        return target, None
    run = RunDir(target)
    tuned, base = run.tuned_ggufs(), run.base_ggufs()
    if not tuned:
        raise UsageError(
            f"{target} holds no exported GGUF", hint=f"run `localtune export {target}` first, or give a .gguf file"
        )
    return tuned[0], (base[0] if base else None)


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 0


@dataclass
class ChatSession:
    llm: object
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    history: list[dict] = field(default_factory=list)
    notice: Callable[[str], None] = print

    def messages(self, prompt: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": prompt}]

    def prompt_tokens(self, msgs: list[dict]) -> int:
        """Tokens of the prompt as the GGUF's own chat template renders it."""
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

    def _fits(self, msgs: list[dict]) -> bool:
        return self.prompt_tokens(msgs) + self.sampling.max_tokens <= self.n_ctx

    def ask(self, prompt: str, on_token: Callable[[str], None] | None = None) -> str:
        msgs = self.messages(prompt)
        while not self._fits(msgs) and len(self.history) >= 2:
            self.history = self.history[2:]
            self.notice("(the oldest exchange was dropped to fit the context window)")
            msgs = self.messages(prompt)
        if not self._fits(msgs):
            raise UsageError(
                f"the prompt needs {self.prompt_tokens(msgs)} tokens plus {self.sampling.max_tokens} "
                f"for the answer, more than the {self.n_ctx}-token context window",
                hint="raise --ctx or lower --max-tokens",
                title="prompt too long",
            )
        s = self.sampling
        stream = self.llm.create_chat_completion(
            msgs, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed, stream=True
        )
        parts = []
        for chunk in stream:
            piece = chunk["choices"][0]["delta"].get("content") or ""
            if piece:
                parts.append(piece)
                if on_token:
                    on_token(piece)
        answer = "".join(parts)
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return answer

    def reset(self) -> None:
        self.history = []

    def save(self, path: str | Path) -> Path:
        """The conversation as JSON, written whole (files.write_json): an interrupted save keeps the old file."""
        from localtune.files import write_json

        return write_json(path, {"system": self.system, "messages": self.history}, indent=1)
