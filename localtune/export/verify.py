"""Does a GGUF behave like the Hugging Face model it came from? Checked, not assumed.

Checks, each pass/fail with its numbers, against references that our conversion did not derive:
- tokenizer: llama.cpp's tokens equal the reference tokenizer's on a fixed set of hard texts plus
  sample rows. The reference is the original tokenizer files (sentencepiece itself for SentencePiece
  models, `tokenizers` for BPE), or, for a model imported from a GGUF, llama.cpp's tokenizer of that
  source file, which the tokenizer training used must then match too;
- special tokens: the GGUF's BOS/EOS ids equal the tokenizer's, and EOS ends generation;
- chat template: llama-cpp-python renders the embedded template to the same prompt string as
  transformers renders the training template;
- tool template: the same for a fixed tool conversation (export/tool_probe.py: tools, a call, its
  result, reasoning), so a template whose tool or reasoning handling drifted is caught;
- logits (f32/f16/bf16 files): max |Δlogit| and top-1 agreement on a 64-token prompt;
- perplexity (quantized files): GGUF vs HF on held-out text, with the relative delta;
- source predictions (a GGUF of an imported model's untouched weights): its next-token predictions
  agree with the source GGUF's own in llama.cpp.
The report names the references it used.

Run as:  localtune verify GGUF --against HF_DIR
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localtune.converters.vocab import HARD_TEXTS, comparable_texts, first_mismatch

HELD_OUT = (
    "The river flows slowly through the valley, carrying water from the mountains to the sea. "
    "People have lived along its banks for thousands of years, farming the rich soil and fishing "
    "in its clear water. In spring the snow melts and the river rises; in late summer it is low and "
    "warm, and children swim in the shallow pools near the old stone bridge."
)
# Largest acceptable relative perplexity increase per quantization family (random tiny weights are
# a worst case; real models stay far below these).
PPL_TOLERANCE = {"q8_0": 0.05, "q6_k": 0.10, "q5": 0.20, "q4": 0.35, "q3": 0.75, "q2": 1.5}
# Least top-1 agreement with the source GGUF's own predictions, for a GGUF of the same weights: the
# source computes in its quantized type, so a few near-ties flip; a broken conversion agrees on few.
SOURCE_AGREEMENT = {"f32": 0.9, "f16": 0.9, "bf16": 0.9, "q8_0": 0.85}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    value: float | None = None


@dataclass
class VerifyReport:
    gguf: str
    against: str
    file_type: str
    checks: list[Check] = field(default_factory=list)
    reference: str = ""  # what the checks compared with

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "gguf": self.gguf,
            "against": self.against,
            "file_type": self.file_type,
            "reference": self.reference,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """The report as JSON under `path`, written whole (files.atomic_file) or not at all."""
        from localtune.faults import disk_full, fault_point
        from localtune.files import atomic_file

        path = Path(path)
        try:
            with atomic_file(path) as fh:
                fh.write(json.dumps(self.to_dict(), indent=1))
                fault_point("verify.save")
        except OSError as exc:
            raise disk_full(exc, path.name, path.parent) or exc from None
        return path

    def render(self) -> str:
        width = max(len(c.name) for c in self.checks) + 2
        lines = [f"verify {self.gguf} ({self.file_type}) against {self.against}"]
        if self.reference:
            lines.append(f"  reference: {self.reference}")
        for c in self.checks:
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name:<{width}} {c.detail}")
        lines.append("result: " + ("PASS" if self.passed else "FAIL: this GGUF does not behave like the model"))
        return "\n".join(lines)


def file_type_name(info) -> str:
    from localtune.converters.quants import QUANT_TYPES

    ftype = info.metadata.get("general.file_type")
    return next((k for k, v in QUANT_TYPES.items() if v == ftype), f"type {ftype}")


def _ppl_tolerance(file_type: str) -> float:
    for prefix, tol in PPL_TOLERANCE.items():
        if file_type.startswith(prefix):
            return tol
    return 0.5


def verify(
    gguf_path: str | os.PathLike,
    hf_dir: str | os.PathLike,
    *,
    chat_template: str | None = None,
    samples: list[str] = (),
    held_out: list[str] | None = None,
) -> VerifyReport:
    """Compare the GGUF with the Hugging Face model in hf_dir. Raises GGUFError for unloadable files."""
    from transformers import AutoTokenizer

    from localtune.chat.runtime import open_gguf
    from localtune.converters.gguf_file import check_gguf
    from localtune.converters.vocab import GGUFTokenizer, source_of
    from localtune.data.template import resolve_chat_template

    gguf_path, hf_dir = Path(gguf_path), Path(hf_dir)
    info = check_gguf(gguf_path)
    report = VerifyReport(str(gguf_path), str(hf_dir), file_type_name(info))
    tok = AutoTokenizer.from_pretrained(hf_dir)
    llm = open_gguf(gguf_path, n_ctx=512, logits_all=True, f32_kv=True)
    source = source_of(hf_dir)
    texts = list(HARD_TEXTS) + list(samples)
    if source:
        reference = GGUFTokenizer(source["file"] or source["vocab"])
        try:
            report.checks.append(_source_tokenizer_check(llm, tok, reference, texts, source["model"]))
        finally:
            reference.close()
        shown = source["file"] or f"{source['vocab']} (the source's keys; the source file has moved)"
        report.reference = f"tokens: llama.cpp's tokenizer of the source GGUF {shown}"
    else:
        report.checks.append(_tokenizer_check(llm, tok, hf_dir, texts))
        spm = (hf_dir / "tokenizer.model").is_file()
        report.reference = "tokens: " + ("sentencepiece (tokenizer.model)" if spm else "tokenizers (tokenizer.json)")
    report.checks.append(_special_tokens_check(llm, tok))
    template = chat_template or resolve_chat_template(tok).text
    report.checks.append(_template_check(info, tok, template))
    report.checks.append(_tool_template_check(info, tok, template))
    if report.file_type in ("f32", "f16", "bf16"):
        report.checks.append(_logits_check(llm, hf_dir, tok, report.file_type))
    else:
        report.checks.append(_perplexity_check(llm, hf_dir, tok, held_out or [HELD_OUT], report.file_type))
    report.reference += "; predictions: transformers' model in the folder"
    if source and source["file"] and source["imported"]:
        report.checks.append(_source_predictions_check(llm, source["file"], tok, report.file_type))
        report.reference += f" and the source GGUF {source['file'].name}"
    return report


def _source_tokenizer_check(llm, tok, reference, texts: list[str], kind: str | None) -> Check:
    """Imported models: our GGUF and the tokenizer training used must both split like the source GGUF."""
    text = special_text(tok)
    ours = first_mismatch(
        lambda t: reference(t, special=True), lambda t: llm.tokenize(t.encode("utf-8"), False, True), texts + [text]
    )
    training = first_mismatch(  # transformers vs llama.cpp: see converters.vocab.comparable_texts
        lambda t: reference(t, special=True),
        lambda t: tok(t, add_special_tokens=False)["input_ids"],
        comparable_texts(kind, texts, text),
    )
    bad = [f"this GGUF on {ours[0][:40]!r}"] if ours else []
    bad += [f"the training tokenizer on {training[0][:40]!r}"] if training else []
    detail = f"{len(texts) + 1} texts tokenize as the source GGUF does, in this GGUF and in training"
    if bad:
        detail = "differs from the source GGUF: " + "; ".join(bad)
    return Check("tokenizer parity", not bad, detail, float(len(bad)))


def _source_predictions_check(llm, source: Path, tok, file_type: str) -> Check:
    import numpy as np

    from localtune.chat.runtime import open_gguf

    ids = tok(" ".join(HARD_TEXTS))["input_ids"][:128]
    llm.reset()
    llm.eval(ids)
    ours = np.array(llm._scores[: len(ids)])
    src = open_gguf(source, n_ctx=512, logits_all=True, f32_kv=True)
    try:
        src.eval(ids)
        theirs = np.array(src._scores[: len(ids)])
    finally:
        src.close()
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    needed = SOURCE_AGREEMENT.get(file_type, 0.75)
    return Check(
        "source predictions",
        top1 >= needed,
        f"top-1 agrees with the source GGUF on {top1:.1%} of {len(ids)} tokens (needs {needed:.0%}); "
        f"max |Δlogit| {float(np.abs(ours - theirs).max()):.2f}",
        top1,
    )


def _reference_tokens(tok, hf_dir: Path, text: str) -> list[int]:
    if (hf_dir / "tokenizer.model").is_file():  # SentencePiece: the library itself is the reference
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
        return sp.encode(text)
    return tok(text, add_special_tokens=False)["input_ids"]


def special_text(tok) -> str:
    """Text with the tokenizer's special tokens inside words, as a chat transcript has them."""
    specials = [t for t in tok.all_special_tokens if t not in (tok.unk_token, tok.pad_token)][:4]
    return "Hi" + " there".join(specials) + " done"


def _reference_special(tok, hf_dir: Path, text: str) -> list[int]:
    """Reference ids for text containing special tokens. SentencePiece encodes each piece between
    special tokens on its own (with its dummy prefix), which is what llama.cpp does too."""
    if not (hf_dir / "tokenizer.model").is_file():
        return tok(text, add_special_tokens=False)["input_ids"]
    import re

    specials = sorted(set(tok.all_special_tokens) | set(tok.get_added_vocab()), key=len, reverse=True)
    ids: list[int] = []
    for part in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
        if part in specials:
            ids.append(tok.convert_tokens_to_ids(part))
        elif part:
            ids += _reference_tokens(tok, hf_dir, part)
    return ids


def _tokenizer_check(llm, tok, hf_dir: Path, texts: list[str]) -> Check:
    bad = []
    for text in texts:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if ours != _reference_tokens(tok, hf_dir, text):
            bad.append(text)
    text = special_text(tok)  # special tokens must come out as single ids
    if llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) != _reference_special(tok, hf_dir, text):
        bad.append(text)
    texts = texts + [text]
    detail = f"{len(texts) - len(bad)}/{len(texts)} texts tokenize identically"
    if bad:
        detail += f"; first mismatch: {bad[0][:40]!r}"
    return Check("tokenizer parity", not bad, detail, float(len(bad)))


def _special_tokens_check(llm, tok) -> Check:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eos, bos = llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_bos(vocab)
    problems = []
    if tok.eos_token_id is not None and eos != tok.eos_token_id:
        problems.append(f"EOS id {eos} != tokenizer's {tok.eos_token_id}")
    if tok.bos_token_id is not None and bos != tok.bos_token_id:
        problems.append(f"BOS id {bos} != tokenizer's {tok.bos_token_id}")
    if tok.eos_token_id is not None and not llama_cpp.llama_vocab_is_eog(vocab, tok.eos_token_id):
        problems.append("EOS does not end generation")
    return Check("special tokens", not problems, "; ".join(problems) or f"EOS {eos}, BOS {bos}; EOS ends generation")


def _template_check(info, tok, template: str) -> Check:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    embedded = info.metadata.get("tokenizer.chat_template")
    if not embedded:
        return Check("chat template", False, "no chat template embedded: chat would fall back to a guess")
    msgs = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    want = tok.apply_chat_template(msgs, chat_template=template, add_generation_prompt=True, tokenize=False)
    got = Jinja2ChatFormatter(
        embedded, eos_token=tok.eos_token or "", bos_token=tok.bos_token or "", add_generation_prompt=True
    )(messages=msgs).prompt
    same = got == want
    return Check(
        "chat template",
        same,
        "llama-cpp-python renders the same prompt"
        if same
        else f"renders differ: llama-cpp-python {got[:60]!r} vs transformers {want[:60]!r}",
    )


def _tool_template_check(info, tok, template: str) -> Check:
    """The fixed tool conversations through the embedded template (llama-cpp-python) and the training one
    (transformers): identical text, or both refusing them (a template without tool support may raise)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from localtune.export.tool_probe import PROBE_TOOLS, PROBES

    embedded = info.metadata.get("tokenizer.chat_template")
    if not embedded:
        return Check("tool template", False, "no chat template embedded: tool calls would not be rendered")

    def rendered(fn) -> tuple[str | None, str | None]:
        try:
            return fn(), None
        except Exception as exc:  # a template's raise_exception, or jinja's own errors
            return None, str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__

    formatter = Jinja2ChatFormatter(
        embedded, eos_token=tok.eos_token or "", bos_token=tok.bos_token or "", add_generation_prompt=True
    )
    texts = []
    for label, msgs in PROBES:
        want, want_err = rendered(
            lambda msgs=msgs: tok.apply_chat_template(
                msgs, tools=PROBE_TOOLS, chat_template=template, add_generation_prompt=True, tokenize=False
            )
        )
        got, got_err = rendered(lambda msgs=msgs: formatter(messages=msgs, tools=PROBE_TOOLS).prompt)
        if want_err or got_err:
            same = bool(want_err and got_err)
            detail = (
                f"both templates refuse a tool conversation ({want_err}): not a tool-calling model"
                if same
                else f"the {'training' if want_err else 'embedded'} template refuses {label} "
                f"({want_err or got_err}) and the other renders it"
            )
            return Check("tool template", same, detail)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            lo = max(0, at - 30)
            return Check(
                "tool template",
                False,
                f"{label} renders differently from character {at}: llama-cpp-python {got[lo : at + 40]!r} vs "
                f"transformers {want[lo : at + 40]!r}",
                float(at),
            )
        texts.append(want)
    writes = all(w in texts[0] for w in ("get_weather", "Oslo", "temperature"))
    return Check(
        "tool template",
        True,
        "llama-cpp-python renders the tool conversation (tools, call, result, reasoning) the same"
        + ("" if writes else "; the template does not write tools or calls"),
    )


def _hf_model(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from localtune.model.loading import quiet_progress

    with quiet_progress():  # the report is the output: loading shows as our progress line, if any
        return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def _logits_check(llm, hf_dir: Path, tok, file_type: str) -> Check:
    import numpy as np
    import torch

    ids = tok(" ".join(HARD_TEXTS))["input_ids"][:64]
    with torch.no_grad():
        ref = _hf_model(hf_dir)(torch.tensor([ids])).logits[0].float().numpy()
    llm.reset()
    llm.eval(ids)
    got = np.array(llm._scores[: len(ids)])
    delta = float(np.abs(got - ref).max())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    needed = 0.99 if file_type == "f32" else 0.95
    return Check(
        "logits",
        top1 >= needed,
        f"max |Δlogit| {delta:.2e}, top-1 agreement {top1:.1%} over {len(ids)} tokens (logit std {ref.std():.2f})",
        delta,
    )


def _perplexity(logits, ids) -> float:
    import numpy as np

    logits = logits[:-1].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
    return float(math.exp(nll))


def _perplexity_check(llm, hf_dir: Path, tok, texts: list[str], file_type: str) -> Check:
    import numpy as np
    import torch

    model = _hf_model(hf_dir)
    hf_ppl, gg_ppl = [], []
    for text in texts:
        ids = tok(text)["input_ids"][:256]
        if len(ids) < 2:
            continue
        with torch.no_grad():
            hf_ppl.append(_perplexity(model(torch.tensor([ids])).logits[0].float().numpy(), ids))
        llm.reset()
        llm.eval(ids)
        gg_ppl.append(_perplexity(np.array(llm._scores[: len(ids)]), ids))
    hf, gg = float(np.mean(hf_ppl)), float(np.mean(gg_ppl))
    delta = gg / hf - 1
    tol = _ppl_tolerance(file_type)
    return Check("perplexity", delta <= tol, f"GGUF {gg:.3f} vs HF {hf:.3f} ({delta:+.1%}; allowed +{tol:.0%})", delta)
