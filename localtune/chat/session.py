"""Chatting with a GGUF offline through llama-cpp-python: the chat template and stop tokens come
from the file; history is kept within the context window (oldest turns dropped first, with a notice).

Run as:  localtune chat GGUF|RUN_DIR [--prompt TEXT] [--compare]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from localtune.errors import UsageError

if TYPE_CHECKING:
    from localtune.chat.tool_calls import Reply


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


def fit_history(session, prompt: str | None) -> list[dict]:
    """The messages of `prompt` after the session's history (prompt None: the history as it is, to resume after
    tool results), dropping the oldest exchanges whole (a user message up to the next one: its calls and their
    results go with it), with a notice, until they and the answer fit the context window; a prompt that cannot
    fit alone is refused. `session` has messages(), prompt_tokens(), history, notice, sampling and n_ctx
    (ChatSession, chat.hf_session's)."""

    def fits(msgs: list[dict]) -> bool:
        return session.prompt_tokens(msgs) + session.sampling.max_tokens <= session.n_ctx

    msgs = session.messages(prompt)
    while not fits(msgs) and (cut := _first_exchange(session.history, keep_last=prompt is None)):
        session.history = session.history[cut:]
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


def _first_exchange(history: list[dict], keep_last: bool) -> int:
    """How many messages the oldest exchange holds (0: none may go; `keep_last` keeps the one being answered)."""
    if not history:
        return 0
    cut = next((i for i, m in enumerate(history) if i > 0 and m["role"] == "user"), len(history))
    return 0 if keep_last and cut == len(history) else cut


@dataclass
class ChatSession:
    """A conversation with one GGUF. `ask` returns the answer text; the whole reply (reasoning, tool calls, raw
    calls that could not be read) is `last_reply`, and the history holds it in the messages' shape, so the
    GGUF's template decides what of it is rendered again. With `tools`, the template is rendered with them; the
    person answers each call with `add_tool_result`, then `resume` generates the next turn."""

    llm: object  # a llama_cpp.Llama, or a chat.routes.Route (prompt tuning, prefix tuning)
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    history: list[dict] = field(default_factory=list)
    notice: Callable[[str], None] = print
    tools: list[dict] | None = None
    last_reply: Reply | None = None

    def __post_init__(self) -> None:
        from localtune.chat.routes import as_route

        self.route = as_route(self.llm)
        self.llm = self.route.llm
        self.calls_made = 0  # call ids run on across the conversation
        if self.tools and self.route.kind in ("vectors", "prefix"):
            raise UsageError(
                f"tools cannot be used with a {self.route.kind} route: its prompt is not rendered with the "
                "GGUF's template",
                hint="chat without --tools, or export the run to a merged GGUF",
                title="tools not supported here",
            )

    def messages(self, prompt: str | None) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + ([{"role": "user", "content": prompt}] if prompt is not None else [])

    def render(self, msgs: list[dict]) -> str | None:
        """The prompt as the GGUF's own chat template renders it (with the tools), None without a template."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        text = lambda tid: self.llm.detokenize([tid], special=True).decode("utf-8", errors="replace")  # noqa: E731
        try:
            return Jinja2ChatFormatter(
                template,
                eos_token=text(self.llm.token_eos()),
                bos_token=text(self.llm.token_bos()),
                add_generation_prompt=True,
            )(messages=msgs, tools=self.tools or None).prompt
        except Exception as exc:  # the template's raise_exception ("roles must alternate") or jinja's errors
            raise UsageError(
                f"this GGUF's chat template refuses the conversation: {str(exc).splitlines()[0] if str(exc) else exc}",
                hint="/reset to start again"
                + ("; its template may not know tool messages: chat without --tools" if self.tools else ""),
                title="chat template error",
            ) from None

    def prompt_tokens(self, msgs: list[dict]) -> int:
        """Tokens of the prompt as the GGUF's own chat template renders it (with the route's virtual part)."""
        if self.route.kind in ("vectors", "prefix"):
            return self.route.n_virtual + len(self.route.chat_ids(msgs))
        prompt = self.render(msgs)
        if prompt is None:
            return sum(len(self.llm.tokenize((m.get("content") or "").encode(), add_bos=False)) + 8 for m in msgs)
        return len(self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    @property
    def n_ctx(self) -> int:
        # llama.cpp may round its context up; llama-cpp-python's token buffer keeps the size asked for.
        return min(self.llm.n_ctx(), len(self.llm.input_ids))

    def ask(self, prompt: str, on_token=None, *, on_thinking=None, on_reasoning=None) -> str:
        """The answer to `prompt`; its text streams to `on_token` as it becomes safe to show (never reasoning or
        call markup). `on_thinking()` when the model starts reasoning, `on_reasoning(text)` once it is done."""
        msgs = fit_history(self, prompt)
        reply = self._reply(msgs, on_token, on_thinking, on_reasoning)
        self.history += [{"role": "user", "content": prompt}, self._assistant_message(reply)]
        return reply.content

    def add_tool_result(self, call: dict, result: str) -> None:
        """The person's answer to one of the last reply's calls, as a tool message."""
        self.history.append(
            {"role": "tool", "content": result, "tool_call_id": call["id"], "name": call["function"]["name"]}
        )

    def resume(self, on_token=None, *, on_thinking=None, on_reasoning=None) -> str:
        """The next assistant turn after the tool results, with no new user message."""
        msgs = fit_history(self, None)
        reply = self._reply(msgs, on_token, on_thinking, on_reasoning)
        self.history.append(self._assistant_message(reply))
        return reply.content

    def _assistant_message(self, reply: Reply) -> dict:
        # call markup that could not be read stays in the content: the model said it, the next turn sees it
        content = "\n".join(x for x in [reply.content, *reply.raw_calls] if x)
        message = {"role": "assistant", "content": content}
        if reply.reasoning:  # under both names, as transformers gives templates (gpt-oss reads `thinking`)
            message["reasoning_content"] = message["thinking"] = reply.reasoning
        if reply.calls:
            message["tool_calls"] = reply.calls
        return message

    def _reply(self, msgs, on_token, on_thinking, on_reasoning) -> Reply:
        from localtune.chat.tool_calls import ReplyStream

        prompt = None if self.route.kind in ("vectors", "prefix") else self.render(msgs)
        live = ReplyStream(
            reasoning_open=bool(prompt) and prompt.rstrip().endswith("<think>"), first_id=self.calls_made + 1
        )
        thinking = told = False
        for piece in self._pieces(msgs, prompt):
            text = live.feed(piece)
            if live.thinking and not thinking:
                thinking = True
                if on_thinking:
                    on_thinking()
            if text:
                if thinking and not told and live.reasoning:  # the answer begins: the reasoning is complete
                    told = True
                    if on_reasoning:
                        on_reasoning(live.reasoning)
                if on_token:
                    on_token(text)
        tail = live.finish()
        reply = live.reply
        if not self.tools and reply.format == "llama3" and reply.calls:  # no tools offered: bare JSON is an answer
            from localtune.chat.tool_calls import Reply, split_reasoning

            reasoning, rest = split_reasoning(live.text, live.reasoning_open)
            reply = Reply(reasoning=reasoning, content=rest.strip())
            tail = reply.content[len(live.shown) :] if reply.content.startswith(live.shown) else reply.content
        if reply.reasoning and not told and on_reasoning:
            on_reasoning(reply.reasoning)
        if tail and on_token:
            on_token(tail)
        self.calls_made += len(reply.calls)
        self.last_reply = reply
        return reply

    def _pieces(self, msgs: list[dict], prompt: str | None):
        """The reply's text as it is generated."""
        s = self.sampling
        options = dict(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed, stream=True)
        if self.route.kind in ("vectors", "prefix"):  # the prompt as tokens after the pinned vectors / prefix
            for chunk in self.route.complete(self.route.chat_ids(msgs), **options):
                yield chunk["choices"][0]["text"] or ""
        elif prompt is None:  # no template in the file: llama-cpp-python's fallback format
            for chunk in self.llm.create_chat_completion(msgs, logit_bias=self.route.bias or None, **options):
                yield chunk["choices"][0]["delta"].get("content") or ""
        else:
            yield from self._generate(prompt)

    def _generate(self, prompt: str):
        """Sampling as llama-cpp-python's chat handler does (its defaults, the route's -inf bias, stop at an
        end-of-generation token), but the structure tokens of a reply are decoded with their text."""
        import codecs

        import llama_cpp
        import numpy as np

        from localtune.chat.tool_calls import MARKUP_TOKENS

        llm, s = self.llm, self.sampling
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        processors = None
        if self.route.bias:  # a portable GGUF's virtual tokens are never sampled
            banned = np.array(list(self.route.bias), dtype=np.intc)

            def ban(_ids, scores):
                scores = np.copy(scores)
                scores[banned] = -np.inf
                return scores

            processors = llama_cpp.LogitsProcessorList([ban])
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")  # as llama-cpp-python drops broken bytes
        llm.set_seed(s.seed)
        # generate's other defaults (top_k 40, min_p 0.05, no repeat penalty) are create_chat_completion's
        tokens = llm.generate(ids, temp=s.temperature, top_p=s.top_p, logits_processor=processors)
        for n, token in enumerate(tokens, 1):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            piece = llm.detokenize([token], special=True)
            if piece.decode("utf-8", errors="replace") not in MARKUP_TOKENS:
                piece = llm.detokenize([token])
            yield decoder.decode(piece)
            if n >= s.max_tokens:
                break
        yield decoder.decode(b"", final=True)

    def reset(self) -> None:
        self.history = []
        self.route.repin()

    def save(self, path: str | Path) -> Path:
        """The conversation as JSON, written whole (files.write_json): an interrupted save keeps the old file."""
        from localtune.files import write_json

        return write_json(path, {"system": self.system, "messages": self.history}, indent=1)
