"""The systems `localtune eval` compares and the row-by-row loop that scores them through llama.cpp.

Systems, on the same rows: the tuned GGUF (each quant of the bundle with all_quants), the base GGUF
zero-shot, and the base GGUF with K training rows as earlier turns of the same chat (rendered with
the same template). For each row and system:
- teacher-forced loss: llama.cpp's logits over the reference answer's tokens, the prompt and answer
  tokenized exactly as training tokenized them (the run's tokenizer and chat template; for a GGUF
  outside a run, llama.cpp's own tokenizer and the GGUF's template);
- a greedy answer (temperature 0) of at most max(32, 2 x reference tokens + 16) tokens (and at most
  `max_tokens`), and whether it ended by EOS/end-of-turn within that limit.
Rows are scored one at a time by every system, so an interrupted run leaves complete rows behind.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from localtune.data.formats import Example
from localtune.errors import UsageError
from localtune.evaluation import metrics
from localtune.evaluation.rows import EvalRows, NothingToEvaluate, pick_shots, reference, with_shots
from localtune.runs.layout import RunDir


@dataclass(frozen=True)
class System:
    name: str  # "tuned Q8_0", "base", "base 4-shot"
    role: str  # "tuned", "base", "few-shot"
    gguf: Path
    shots: int = 0


@dataclass
class Answer:
    text: str
    nll: float  # summed over the reference tokens
    ref_tokens: int
    gen_tokens: int
    stopped: bool  # ended by EOS / end-of-turn within the limit
    exact: float
    f1: float
    rouge_l: float
    prompt_tokens: int


@dataclass
class RowResult:
    where: str
    prompt: str  # the last user message, or the completion prompt
    reference: str
    answers: dict[str, Answer] = field(default_factory=dict)


@dataclass
class Settings:
    shots: int = 4
    max_rows: int = 0  # 0: every row
    max_tokens: int = 256
    n_ctx: int = 2048
    seed: int = 0


class Encoder:
    """Prompt and answer token ids of a row: the data pipeline's split_answer with a tokenizer and renderer."""

    def __init__(self, tokenizer, render, origin: str):
        self.tokenizer, self.render, self.origin = tokenizer, render, origin

    def __call__(self, example: Example) -> tuple[list[int], list[int]]:
        from localtune.data.tokenize import split_answer

        return split_answer(example, self.tokenizer, self.render)


def run_encoder(run_dir: Path) -> Encoder:
    """The run's tokenizer (its merged folder) and the chat template it trained with."""
    from transformers import AutoTokenizer

    from localtune.data.template import make_renderer, resolve_chat_template

    run = RunDir(run_dir)
    merged = run.merged
    if not run.has_merged and (run.soft_prompt.is_file() or run.prefix_sidecar.is_file()):
        merged = _base_folder(run)  # prompt / prefix tuning: nothing is merged, the base's tokenizer is the run's
    elif not run.has_merged:
        raise UsageError(
            f"{run_dir} has not been exported yet",
            hint=f"run `localtune export {run_dir}` first",
            title="cannot evaluate",
        )
    tok = AutoTokenizer.from_pretrained(merged)
    template_file = run.chat_template
    template = resolve_chat_template(tok, str(template_file) if template_file.is_file() else None)
    origin = "merged/" if merged == run.merged else "the base model's folder"
    return Encoder(tok, make_renderer(tok, template), f"the run's tokenizer ({origin}) and chat template")


def _base_folder(run: RunDir) -> Path:
    from localtune.config import load_config
    from localtune.model.loading import resolve_base

    cfg = load_config(run.config)
    return resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code).folder


class GGUFTokenizer:
    """llama.cpp's own tokenizer and the GGUF's chat template, for a GGUF that is not part of a run. It
    offers what the data pipeline asks of a tokenizer; no offsets, so rows are encoded span by span."""

    def __init__(self, llm):
        self.llm = llm
        meta = llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template")
        self.bos_token_id, self.eos_token_id = llm.token_bos(), llm.token_eos()
        self.add_bos_token = meta.get("tokenizer.ggml.add_bos_token", "true") in ("true", "1", True)
        self.bos_token, self.eos_token = self._text(self.bos_token_id), self._text(self.eos_token_id)
        self.pad_token_id = None

    def _text(self, tid: int) -> str:
        if tid is None or tid < 0:
            return ""
        return self.llm.detokenize([tid], special=True).decode("utf-8", errors="replace")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError  # no offsets: split_answer encodes span by span

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens and self.add_bos_token, special=True)

    def apply_chat_template(
        self, messages, *, chat_template: str, tools=None, tokenize: bool = False, add_generation_prompt: bool = False
    ) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        return Jinja2ChatFormatter(
            chat_template,
            eos_token=self.eos_token,
            bos_token=self.bos_token,
            add_generation_prompt=add_generation_prompt,
        )(messages=messages, tools=tools).prompt


def gguf_encoder(llm) -> Encoder:
    from localtune.data.template import CHATML_TEMPLATE, ChatTemplate, make_renderer

    tok = GGUFTokenizer(llm)
    template = ChatTemplate(tok.chat_template or CHATML_TEMPLATE, "the GGUF's" if tok.chat_template else "ChatML")
    return Encoder(tok, make_renderer(tok, template), f"llama.cpp's tokenizer, {template.origin} chat template")


def _prompt_text(example: Example) -> str:
    if example.kind == "completion":
        return example.prompt
    return next(c for r, c in reversed(example.messages[:-1]) if r == "user")


def _limit(ref_tokens: int, settings: Settings) -> int:
    return min(settings.max_tokens, max(32, 2 * ref_tokens + 16))


def score(llm, prompt_ids: list[int], answer_ids: list[int], ref_text: str, limit: int) -> Answer:
    """Teacher-forced loss of the reference, then a greedy answer, on one open GGUF (a Llama or a chat.routes
    Route: the learned vectors or prefix in front, a portable GGUF's logit bias in the sampler)."""
    import numpy as np

    from localtune.chat.routes import as_route

    route = as_route(llm)
    ids = prompt_ids + answer_ids
    logits = route.logits(ids)[len(prompt_ids) - 1 : len(ids) - 1].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = float(-logp[np.arange(len(answer_ids)), answer_ids].sum())
    out = route.complete(
        prompt_ids, max_tokens=limit, temperature=0.0, top_p=1.0, top_k=1, repeat_penalty=1.0, stream=False
    )
    choice = out["choices"][0]
    text = choice["text"].strip()
    return Answer(
        text,
        nll,
        len(answer_ids),
        out["usage"]["completion_tokens"],
        choice["finish_reason"] == "stop",
        metrics.exact_match(text, ref_text),
        metrics.token_f1(text, ref_text),
        metrics.rouge_l(text, ref_text),
        len(prompt_ids),
    )


@dataclass
class Plan:
    """What one eval run will do: the rows with their encodings per system, and the systems."""

    systems: list[System]
    rows: list[Example]
    encoded: dict[str, list[tuple[list[int], list[int]]]]  # system name -> per row (prompt ids, answer ids)
    skipped: list[str]  # rows that do not fit the context window, by where
    shots: list[Example]
    notes: list[str]


def plan(rows: EvalRows, encoder: Encoder, tuned: list[Path], base: Path | None, settings: Settings) -> Plan:
    """Encode every row for every system; choose K, the most shots (at most settings.shots) that fit."""
    from localtune.chat.routes import spec_for
    from localtune.data.template import TemplateError

    chosen = rows.rows[: settings.max_rows] if settings.max_rows else list(rows.rows)
    notes: list[str] = []
    zero, kept, skipped = [], [], []
    # a tuned prompt-tuning / prefix route puts its virtual positions in front of every prompt: they take
    # context too (the base, and so few-shot, has none)
    virtual = max((spec_for(t).n_virtual for t in tuned), default=0)
    for ex in chosen:
        try:
            p, a = encoder(ex)
        except TemplateError as exc:
            skipped.append(f"{ex.where} ({exc})")
            continue
        need = virtual + len(p) + len(a) + _limit(len(a), settings)
        if not a or need > settings.n_ctx:
            skipped.append(
                f"{ex.where} (needs {need} tokens"
                + (f" with the {virtual} virtual ones" if virtual else "")
                + f", more than the {settings.n_ctx}-token context)"
            )
            continue
        zero.append((p, a))
        kept.append(ex)
    if not kept:
        raise NothingToEvaluate(
            "no row can be evaluated: " + "; ".join(skipped[:3]), hint="raise --ctx, or pass --data with shorter rows"
        )
    systems = [System(f"tuned {_quant(t)}", "tuned", t) for t in tuned]
    encoded = {s.name: zero for s in systems}
    shots: list[Example] = []
    if base is not None:
        systems.append(System("base", "base", base))
        encoded["base"] = zero
        kinds = {ex.kind for ex in kept}
        pool = [e for e in rows.train if e.kind in kinds]
        for k in range(min(settings.shots, len(pool)), 0, -1):
            candidate = pick_shots(pool, k, settings.seed)
            try:
                few = [encoder(with_shots(ex, candidate)) for ex in kept]  # with_shots keeps the row's kind
            except TemplateError:
                continue
            if all(len(p) + len(a) + _limit(len(a), settings) <= settings.n_ctx for p, a in few):
                shots = candidate
                name = f"base {k}-shot"
                systems.append(System(name, "few-shot", base, k))
                encoded[name] = few
                if k < min(settings.shots, len(pool)):
                    notes.append(
                        f"{k} shot(s), not {settings.shots}: more do not fit the {settings.n_ctx}-token "
                        "context with the longest row"
                    )
                elif k < settings.shots:
                    notes.append(
                        f"{k} shot(s), not {settings.shots}: only {len(pool)} training row(s) to take them from"
                    )
                break
        else:
            if settings.shots > 0:
                notes.append(
                    "no few-shot system: "
                    + ("no training rows to take shots from" if not pool else "not even one shot fits the context")
                )
    else:
        notes.append("no base GGUF: pass --base BASE.gguf to compare with the base model")
    return Plan(systems, kept, encoded, skipped, shots, notes)


def _quant(path: Path) -> str:
    stem = path.stem
    return stem.rsplit("-", 1)[-1] if "-" in stem else stem


def run(plan_: Plan, settings: Settings, *, progress=None) -> tuple[list[RowResult], bool]:
    """Score every row with every system; (results, interrupted). Ctrl-C keeps the finished rows."""
    from localtune.chat.routes import open_route, spec_for

    llms = {}  # by route: a prefix run's tuned system and its base share one GGUF file
    for s in plan_.systems:
        spec = spec_for(s.gguf, tuned=s.role == "tuned")
        if spec not in llms:
            llms[spec] = open_route(spec, n_ctx=settings.n_ctx, logits_all=True)
    results: list[RowResult] = []
    start = time.monotonic()
    total = len(plan_.rows)
    try:
        for i, ex in enumerate(plan_.rows):
            row = RowResult(ex.where, _prompt_text(ex), reference(ex))
            for s in plan_.systems:
                p, a = plan_.encoded[s.name][i]
                route = llms[spec_for(s.gguf, tuned=s.role == "tuned")]
                row.answers[s.name] = score(route, p, a, row.reference, _limit(len(a), settings))
            results.append(row)
            if progress:
                elapsed = time.monotonic() - start
                progress(i + 1, total, elapsed / (i + 1) * (total - i - 1))
    except KeyboardInterrupt:
        return results, True
    return results, False


def row_loss(results: list[RowResult], name: str) -> float:
    nll = sum(r.answers[name].nll for r in results)
    tokens = sum(r.answers[name].ref_tokens for r in results)
    return nll / tokens if tokens else math.nan
