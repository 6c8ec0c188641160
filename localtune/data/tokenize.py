"""Turning examples into token ids and labels, with the loss mask taken from rendered spans.

Labels are the input ids where the loss applies and IGNORE (-100) elsewhere, the convention of
transformers' causal-LM loss (which shifts them by one itself).

- chat: rendered with the chat template (and the row's tools); assistant spans train: their reasoning,
  tool calls and end-of-turn. With train_on_prompt every token trains except the tool results, which
  the model never writes.
- text: the tokenizer's own special tokens (BOS) plus EOS; every token trains. Rows longer than
  max_seq_len are split into consecutive windows instead of being truncated: no text is lost.
- completion: prompt + completion + EOS as plain text; the completion and EOS train.
Chat and completion rows are truncated to max_seq_len (keeping the start).
"""

from __future__ import annotations

from dataclasses import dataclass

from localtune.data.formats import Example
from localtune.data.template import Renderer, TemplateError, render_with_spans

IGNORE = -100


@dataclass
class TokenizedRow:
    where: str
    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation or windowing
    truncated: bool = False

    @property
    def trainable(self) -> int:
        """Tokens that contribute to the loss: the first token is never predicted."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


def tokenize_example(
    example: Example, tokenizer, render: Renderer, *, max_seq_len: int, train_on_prompt: bool = False
) -> list[TokenizedRow]:
    """One example -> one row (or several windows for long raw text). TemplateError propagates."""
    if example.kind == "text":
        ids = _with_eos(_encode(tokenizer, example.text, add_special_tokens=True).ids, tokenizer)
        return [
            TokenizedRow(example.where, ids[i : i + max_seq_len], ids[i : i + max_seq_len], len(ids))
            for i in range(0, len(ids), max_seq_len)
        ]
    if example.kind == "completion":
        text = example.prompt + example.completion
        enc = _encode(tokenizer, text, add_special_tokens=True)
        spans = [(len(example.prompt), len(text))]
        ids = _with_eos(enc.ids, tokenizer)
        labels = _labels(enc, spans, train_on_prompt) + ids[len(enc.ids) :]
    else:
        return [
            _row(example.where, ids, labels, max_seq_len)
            for ids, labels in _chat_rows(example, tokenizer, render, train_on_prompt)
        ]
    return [_row(example.where, ids, labels, max_seq_len)]


def _row(where: str, ids: list[int], labels: list[int], max_seq_len: int) -> TokenizedRow:
    n = len(ids)
    return TokenizedRow(where, ids[:max_seq_len], labels[:max_seq_len], n, truncated=n > max_seq_len)


def _chat_rows(example: Example, tokenizer, render: Renderer, train_on_prompt: bool) -> list[tuple[list, list]]:
    """(ids, labels) of a conversation: one rendering of the whole, or one row per user turn, each training
    only that turn's assistant messages, when the whole cannot hold what the model saw at every turn:
    the template renders earlier turns differently once later ones follow (Mistral moves the tools and
    system prompt to the last user turn), or the reasoning policy keeps only the current turn's
    reasoning (last_turn), which a single rendering would lose for every earlier turn."""
    messages, tools = example.as_messages(), example.tool_list
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    policy = getattr(render, "reasoning", None)
    lost = policy == "last_turn" and any(m.get("reasoning_content") for m in messages[: users[-1]])
    if not lost or len(users) < 2:
        try:
            return [_chat_labels(tokenizer, messages, render, tools, 0, train_on_prompt)]
        except TemplateError:
            if len(users) < 2:
                raise
    ends = users[1:] + [len(messages)]
    return [_chat_labels(tokenizer, messages[:end], render, tools, u, train_on_prompt) for u, end in zip(users, ends)]


def _chat_labels(tokenizer, messages, render, tools, train_from: int, train_on_prompt: bool) -> tuple[list, list]:
    full, spans = render_with_spans(messages, render, tools, train_from)
    enc = _encode(tokenizer, full, add_special_tokens=False, spans=spans)
    if not train_on_prompt:
        return enc.ids, _labels(enc, spans, False)
    # Everything trains but the tool results and, in a row of a later user turn, the earlier turns
    # (which the row of their own turn trains): from that user message's text on.
    cut = full.rfind(messages[train_from]["content"], 0, spans[0][0]) if train_from and spans else 0
    skip = _result_spans(full, messages, spans, train_from) + [(0, max(cut, 0))]
    return enc.ids, [IGNORE if any(a <= s < b for a, b in skip) else t for t, s in zip(enc.ids, enc.starts)]


@dataclass
class _Encoding:
    ids: list[int]
    starts: list[int]  # character offset where each token starts (-1 for added special tokens)


def _encode(tokenizer, text: str, *, add_special_tokens: bool, spans=()) -> _Encoding:
    try:
        enc = tokenizer(
            text, add_special_tokens=add_special_tokens, return_offsets_mapping=True, return_special_tokens_mask=True
        )
    except NotImplementedError:  # a tokenizer without offsets: encode span by span instead
        return _encode_by_segments(tokenizer, text, add_special_tokens, spans)
    starts = [
        -1 if special and a == b else a for (a, b), special in zip(enc["offset_mapping"], enc["special_tokens_mask"])
    ]
    return _Encoding(list(enc["input_ids"]), starts)


def _encode_by_segments(tokenizer, text: str, add_special_tokens: bool, spans) -> _Encoding:
    cuts = sorted({0, len(text), *(p for span in spans for p in span)})
    ids: list[int] = []
    starts: list[int] = []
    if add_special_tokens and tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", True):
        ids.append(tokenizer.bos_token_id)
        starts.append(-1)
    for a, b in zip(cuts, cuts[1:]):
        piece = tokenizer.encode(text[a:b], add_special_tokens=False)
        ids += piece
        starts += [a] * len(piece)
    return _Encoding(ids, starts)


def _labels(enc: _Encoding, spans: list[tuple[int, int]], train_on_prompt: bool) -> list[int]:
    if train_on_prompt:
        return list(enc.ids)
    return [tid if any(a <= s < b for a, b in spans) else IGNORE for tid, s in zip(enc.ids, enc.starts)]


def _result_spans(full: str, messages: list[dict], spans: list[tuple[int, int]], train_from: int) -> list:
    """Where each tool result's text lies in the rendering: its content, found after the assistant turn
    that called it."""
    out, at, turn = [], 0, 0
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i >= train_from:
            at = max(at, spans[turn][1])
            turn += 1
        elif m["role"] == "tool" and m["content"]:
            found = full.find(m["content"], at)
            if found >= 0:
                out.append((found, found + len(m["content"])))
                at = found + len(m["content"])
    return out


def _with_eos(ids: list[int], tokenizer) -> list[int]:
    """End raw text with EOS (so the model learns to stop), unless the tokenizer already added it."""
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def split_answer(example: Example, tokenizer, render: Renderer) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a row whose last turn is the answer, tokenized as training does: the
    whole rendering at once, the answer being the last assistant span (with its end-of-turn), or the
    completion and EOS. The prompt ids are everything before the answer. TemplateError propagates."""
    if example.kind == "completion":
        enc = _encode(tokenizer, example.prompt + example.completion, add_special_tokens=True)
        at = next((i for i, s in enumerate(enc.starts) if s >= len(example.prompt)), len(enc.ids))
        return enc.ids[:at], _with_eos(enc.ids, tokenizer)[at:]
    full, spans = render_with_spans(example.as_messages(), render, example.tool_list)
    start, end = spans[-1]
    enc = _encode(tokenizer, full, add_special_tokens=False, spans=spans)
    inside = [i for i, s in enumerate(enc.starts) if start <= s < end]
    if not inside:
        return enc.ids, []
    return enc.ids[: inside[0]], enc.ids[inside[0] : inside[-1] + 1]
