"""Chatting with a run's model on transformers, for adapters that have no GGUF form (LLaMA-Adapter).

The same face as chat/session.py's ChatSession (ask with streaming, reset, save, system, history), but the
model is peft's base + adapter and each new token comes from a full forward pass over the whole sequence:
no KV cache. HF `generate()` with its cache is wrong for prompt-learning adapters (prompt tuning: logits
off by ~5 from the second decoded token, measured); for AdaptionPrompt it matched a no-cache loop to 2e-6
over 12 tokens (peft 0.21.2), but the no-cache loop is correct by construction and chat on transformers
is for small models anyway. Cost: quadratic in the answer's length.

Run as:  localtune chat RUN_DIR   (a llama_adapter run; cli/chat.py loads the model, model/run_model.py)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from localtune.chat.session import Sampling, fit_history
from localtune.data.template import ChatTemplate, make_renderer

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def stop_ids(tokenizer, template: str) -> set[int]:
    """The end-of-sequence id and the end-of-turn tokens the template writes."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in END_OF_TURN if t in template and t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def next_tokens(model, ids: list[int], sampling: Sampling, stops: set[int]) -> Iterator[int]:
    """Token ids after `ids`, one forward pass over the whole sequence each (no cache): greedy when
    sampling.temperature <= 0, else top-p sampling seeded by sampling.seed. Ends at a stop id (not yielded)
    or after sampling.max_tokens."""
    import torch

    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(sampling.seed)
    seq = list(ids)
    for _ in range(sampling.max_tokens):
        x = torch.tensor([seq], device=device)
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float().cpu()
        if sampling.temperature <= 0:
            tok = int(logits.argmax())
        else:
            probs = torch.softmax(logits / sampling.temperature, dim=-1)
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < sampling.top_p  # the smallest set reaching top_p
            sorted_p = sorted_p * keep
            tok = int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)])
        if tok in stops:
            return
        seq.append(tok)
        yield tok


@dataclass
class HFChatSession:
    model: object  # peft.PeftModel (model/run_model.py load_run_model)
    tokenizer: object
    template: str  # the run's chat template
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    history: list[dict] = field(default_factory=list)
    notice: Callable[[str], None] = print
    n_ctx: int = 2048

    def messages(self, prompt: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": prompt}]

    def prompt_ids(self, msgs: list[dict]) -> list[int]:
        text = make_renderer(self.tokenizer, ChatTemplate(self.template, "run"))(msgs, True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_tokens(self, msgs: list[dict]) -> int:
        return len(self.prompt_ids(msgs))

    def ask(self, prompt: str, on_token: Callable[[str], None] | None = None) -> str:
        ids = self.prompt_ids(fit_history(self, prompt))  # the oldest exchanges dropped to fit, as ChatSession does
        out: list[int] = []
        shown = ""
        for tok in next_tokens(self.model, ids, self.sampling, stop_ids(self.tokenizer, self.template)):
            out.append(tok)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            if on_token and len(text) > len(shown):
                on_token(text[len(shown) :])
            shown = text
        answer = self.tokenizer.decode(out, skip_special_tokens=True)
        if on_token and len(answer) > len(shown):
            on_token(answer[len(shown) :])
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return answer

    def reset(self) -> None:
        self.history = []

    def save(self, path: str | Path) -> Path:
        from localtune.files import write_json

        return write_json(path, {"system": self.system, "messages": self.history}, indent=1)
