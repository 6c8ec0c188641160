"""Chat templates: which one a run trains with, and where the assistant text lands in a rendering.

The template is the model's own (`tokenizer.chat_template`), a user's override, or, for a model
without one, localtune's default: ChatML. The chosen text is recorded with the run so the GGUF
export embeds exactly what training saw.

Trainable spans come from rendering, never from searching for marker strings: for assistant turn i,
the text before it is the rendering of the conversation up to turn i with the generation prompt, and
the turn ends where the rendering of the conversation up to and including turn i ends. Both must be
prefixes of the full rendering; templates that render the latest assistant turn differently from
earlier ones (Qwen3's empty think block) are handled by locating the turn's own content after its
start and keeping the terminator the template writes after it. A generation prompt that opens more
than the turns it precedes (Qwen3.5's think block, absent from earlier assistant turns) counts only as
far as the full rendering agrees with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localtune.errors import UsageError

# ChatML, the most widely understood chat layout (llama.cpp, Ollama and LM Studio all recognise it).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# The same layout for a tokenizer that has no <|im_end|> token: assistant turns also end with the
# tokenizer's EOS token, so the exported model stops where the training data stopped.
CHATML_EOS_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' + message['content'] + '<|im_end|>' + eos_token + '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class ChatTemplate:
    text: str
    origin: str  # "model", "default ChatML", or the file/flag it came from


class TemplateError(Exception):
    """The template rejected a conversation, or its assistant turns could not be located."""


def resolve_chat_template(
    tokenizer,
    override: str | None = None,
    *,
    reasoning: str | None = None,
    tools: bool = False,
    thoughts: bool = True,
) -> ChatTemplate:
    """The template to train with: an explicit override, the model's own, or default ChatML. For data
    with reasoning or tool calls (`reasoning` names the policy, `tools` says calls are in the data,
    `thoughts` that reasoning is, which the wrapped template must then write) it
    is wrapped by data/template_policy.py, so exports and chat render exactly what training did."""
    chosen = _chosen_template(tokenizer, override)
    if reasoning is None and not tools:
        return chosen
    from localtune.data.template_policy import wrap

    text, added = wrap(
        chosen.text,
        lambda t: make_renderer(tokenizer, ChatTemplate(t, chosen.origin)),
        reasoning or "last_turn",
        tools=tools,
        reasoning=thoughts,
    )
    return ChatTemplate(text, f"{chosen.origin} + {added}")


def _chosen_template(tokenizer, override: str | None) -> ChatTemplate:
    if override:
        if "{" in override:  # the template text itself
            return ChatTemplate(override, "config")
        path = Path(override).expanduser()
        try:
            return ChatTemplate(path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"model.chat_template names {override!r}, which cannot be read ({exc})",
                hint="give the path of a .jinja file, or the template text itself",
                title="chat template not found",
            ) from None
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one trains
        own = own.get("default")
    if own:
        return ChatTemplate(own, "model")
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab and tokenizer.eos_token == "<|im_end|>":
        return ChatTemplate(CHATML_TEMPLATE, "default ChatML")
    return ChatTemplate(CHATML_EOS_TEMPLATE, "default ChatML (+EOS)")


Renderer = Callable[..., str]  # render(messages, add_generation_prompt, tools=None) -> text


def make_renderer(tokenizer, template: ChatTemplate) -> Renderer:
    """render(messages, add_generation_prompt, tools=None) -> text, with the template's errors as TemplateError."""

    def render(messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=template.text,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja's raise_exception ("System role not supported") and friends
            raise TemplateError(f"the chat template rejected this conversation: {exc}") from None

    from localtune.data.template_policy import policy_of

    render.reasoning = policy_of(template.text)
    return render


def _answered_prompt(history: list[dict[str, str]], prompt: str, full: str, render: Renderer, content: str) -> str:
    """The text before an assistant turn when the generation prompt writes more than the answered turn
    opens with (Gemma 4 adds an empty thought channel, "<|channel>thought\\n<channel|>", and Qwen3.5 a
    think block, "<think>\\n", only when prompting): the history, then the longest start of the
    generation prompt that the whole conversation has right before the turn's own text. Anchoring on the
    text keeps an answer that itself starts like the prompt's tail ("<b>", "<think>") whole."""
    history_text = render(history, False)
    if not (prompt.startswith(history_text) and full.startswith(history_text)):
        return prompt
    start, opening = len(history_text), prompt[len(history_text) :]
    best, at = None, full.find(content, start) if content else -1
    while 0 <= at <= start + len(opening):
        if opening.startswith(full[start:at]):
            best = at
        at = full.find(content, at + 1)
    if best is not None:
        return full[:best]
    rest = full[start:]
    n = 0
    while n < len(opening) and n < len(rest) and opening[n] == rest[n]:
        n += 1
    return history_text + opening[:n] if n else prompt


def render_with_spans(
    messages: list[dict], render: Renderer, tools: list[dict] | None = None, train_from: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character spans [start, end) of every assistant turn from message
    `train_from` on (its reasoning, calls and end-of-turn included; tool results are other turns and
    never inside a span)."""
    from localtune.data.template_policy import apply_policy

    messages = apply_policy(messages, getattr(render, "reasoning", None))
    if tools:
        plain = render
        render = lambda msgs, gen: plain(msgs, gen, tools=tools)  # noqa: E731
    full = render(messages, False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i < train_from:
            continue
        before = render(messages[:i], True)
        if not full.startswith(before):
            before = _answered_prompt(messages[:i], before, full, render, m["content"] or _anchor(m))
        if not full.startswith(before):
            raise TemplateError(
                f"the template renders the text before assistant turn {i} differently inside "
                "the whole conversation, so its trainable span cannot be located"
            )
        start = len(before)
        upto = render(messages[: i + 1], False)
        if full.startswith(upto) and len(upto) > start:
            spans.append((start, len(upto)))
            continue
        # The latest assistant turn renders differently from earlier ones (e.g. an added think block):
        # find this turn's content after its start, then the terminator the template writes after it.
        content = m["content"]
        if not content:  # a call with no text: the turn ends where the longest tail of its rendering does
            spans.append((start, _tail_end(full, upto, start)))
            continue
        at = full.find(content, start)
        tail_at = upto.rfind(content)
        if at < 0 or tail_at < 0:
            raise TemplateError(
                f"the template does not write assistant turn {i}'s text verbatim, so its "
                "trainable span cannot be located"
            )
        end = at + len(content)
        terminator = upto[tail_at + len(content) :]
        while terminator and not full.startswith(terminator, end):
            terminator = terminator[:-1]  # e.g. keep "<|im_end|>" when the final "\n" differs
        spans.append((start, end + len(terminator)))
    return full, spans


def _anchor(message: dict) -> str:
    """Text a content-less assistant turn surely renders: its first call's name."""
    calls = message.get("tool_calls") or [{}]
    return (calls[0].get("function") or calls[0]).get("name", "")


def _tail_end(full: str, upto: str, start: int) -> int:
    """Where the turn that `upto` ends with ends inside `full`: after the longest tail of `upto` found in
    `full` from `start` (a longer tail found implies every shorter one is, so the length is bisected)."""
    lo, hi = 0, len(upto) - start
    limit = len(upto)  # the turn is no longer inside the whole than in `upto`: never match a later turn
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if full.find(upto[len(upto) - mid :], start, limit) >= 0:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise TemplateError("the template does not write this assistant turn's call verbatim")
    return full.find(upto[len(upto) - lo :], start, limit) + lo
