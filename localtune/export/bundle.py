"""The export bundle of a training run: GGUF files, an Ollama Modelfile and a model card.

`localtune export RUN_DIR` merges the adapter (if not merged yet), exports and verifies the merged
model, exports the base model the same way (so base and fine-tuned can be compared), writes the
adapter as a LoRA GGUF, an Ollama `Modelfile`, and `README.md` with the training summary and the
verification table. Default type: q8_0 for models under 1B parameters (4-bit costs small models
the most, and the file stays small), q4_k_m otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from localtune.export.gguf import ExportedFile
from localtune.files import write_text
from localtune.runs.layout import BASE_STEM, RunDir

SMALL_MODEL_PARAMS = 1_000_000_000


def default_quant(folder: Path) -> str:
    from transformers import AutoConfig

    from localtune.planner import Shape

    shape = Shape.from_config(AutoConfig.from_pretrained(folder))
    return "q8_0" if shape.linear_params() + shape.embedding_params() < SMALL_MODEL_PARAMS else "q4_k_m"


@dataclass
class Bundle:
    run_dir: Path
    tuned: list[ExportedFile] = field(default_factory=list)
    base: list[ExportedFile] = field(default_factory=list)
    adapter: Path | None = None
    modelfile: Path | None = None
    card: Path | None = None
    extras: list[str] = field(default_factory=list)  # more files, one card line each (prompt/prefix tuning)
    notes: list[str] = field(default_factory=list)  # what runs where, for the card and the Modelfile

    @property
    def gguf_dir(self) -> Path:
        return RunDir(self.run_dir).gguf


def require_gguf_form(name: str, run_dir) -> None:
    """A clear refusal (exit 2) for LLaMA-Adapter, whose result GGUF cannot hold."""
    from localtune.errors import UsageError
    from localtune.methods import method

    if method(name).kind != "adaption":
        return
    raise UsageError(
        f"{run_dir} trained {method(name).title}: a gated second attention over learned prompts in its top "
        "layers, which neither GGUF nor llama.cpp can express, so there is no GGUF of it to write",
        hint=f"distil it into a LoRA and export that: localtune distill {run_dir}, then "
        f"localtune export {Path(run_dir) / 'distilled'} (or chat with it as it is: localtune chat {run_dir})",
        title="no GGUF form for this method",
    )


def export_run(run_dir: str | Path, quants: list[str] | None = None, *, verify: bool = True, say=print) -> Bundle:
    """Merge if needed, export, verify and write the bundle, holding the run folder's lock."""
    from localtune.runs.lock import run_lock

    run_dir = Path(run_dir)
    with run_lock(run_dir, "export"):
        return _export_run(run_dir, quants, verify, say)


def _export_run(run_dir: Path, quants, verify: bool, say) -> Bundle:
    from localtune.config import load_config
    from localtune.export.gguf import export_adapter, export_model
    from localtune.export.merge import merge_run
    from localtune.model.loading import resolve_base

    bundle = Bundle(run_dir)
    run = RunDir(run_dir)
    for line in run.recover():  # a merged/ replacement cut short by a crash: the old one is complete
        say(f"note: {line}")
    cfg = load_config(run.config)
    require_gguf_form(cfg.adapter.method, run_dir)
    from localtune.methods import method

    if method(cfg.adapter.method).kind in ("virtual", "prefix"):  # nothing merges: base GGUF + vectors / prefix
        from localtune.export.prompt_bundle import export_prompt_run

        export_prompt_run(run_dir, bundle, cfg, quants, verify, say)
        bundle.modelfile = _prompt_modelfile(run, bundle, cfg)
        bundle.card = write_card(run_dir, bundle, cfg)
        return bundle
    merged = run.merged
    if not run.has_merged:
        say("merging the adapter into a 16-bit copy of the base ...")
        result = merge_run(run_dir)
        say(f"merged into {result.folder} ({result.dtype}; max |Δlogit| vs base+adapter {result.max_delta:.2e})")
    template = run.chat_template.read_text(encoding="utf-8") if run.chat_template.is_file() else None
    quants = quants or [default_quant(merged)]
    name = run_dir.name
    bundle.tuned = export_model(
        merged, quants, bundle.gguf_dir, chat_template=template, verify=verify, stem=name, say=say
    )
    base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    bundle.base = export_model(
        base.folder, quants[:1], bundle.gguf_dir, chat_template=template, verify=False, stem=BASE_STEM, say=say
    )
    if cfg.adapter.method == "lora":  # llama.cpp loads LoRA adapters only
        try:
            bundle.adapter = export_adapter(run_dir, bundle.gguf_dir, say=say)
        except Exception as exc:  # per-module patterns: the merged export still stands
            say(f"note: no adapter GGUF ({exc})")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    bundle.modelfile = write_modelfile(run.modelfile, bundle.tuned[0].path, template or "", tok)
    bundle.card = write_card(run_dir, bundle, cfg)
    return bundle


# ---- Ollama -----------------------------------------------------------------------------------------
CHATML_GO = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def write_modelfile(path: Path, gguf: Path, template: str, tok) -> Path:
    """FROM, a TEMPLATE for ChatML-style models (others use the GGUF's embedded template), stop tokens,
    and the default system prompt the chat template injects, if any."""
    lines = [f"# Ollama: ollama create {gguf.stem.lower()} -f Modelfile", f"FROM ./{gguf.name}", ""]
    stops = [
        t
        for t in {
            tok.eos_token,
            *(s for s in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>") if s in template),
        }
        if t
    ]
    if "<|im_start|>" in template:
        lines += ['TEMPLATE """' + CHATML_GO + '"""', ""]
        rendered = tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template=template, tokenize=False)
        m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", rendered, re.S)
        if m:
            lines += ['SYSTEM """' + m.group(1) + '"""', ""]
    else:
        lines += ["# TEMPLATE: Ollama reads the chat template embedded in the GGUF", ""]
    lines += [f'PARAMETER stop "{s}"' for s in sorted(stops)]
    return write_text(path, "\n".join(lines) + "\n")


def _prompt_modelfile(run: RunDir, bundle: Bundle, cfg) -> Path:
    """A portable GGUF gets the usual Modelfile plus what Ollama cannot do; a prefix (or vectors-only) bundle
    gets a Modelfile of comments only, so `ollama create` cannot quietly make a model of the base alone."""
    if bundle.tuned:
        from transformers import AutoTokenizer

        from localtune.model.loading import resolve_base

        base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
        template = run.chat_template.read_text(encoding="utf-8") if run.chat_template.is_file() else ""
        tok = AutoTokenizer.from_pretrained(base.folder)
        if "<|im_start|>" not in template:  # Ollama would use its own template and leave the virtual tokens out
            lines = [
                f"# {run.name}: Ollama runs a GGUF with a Go template of its own, which would leave out the virtual",
                "# tokens this model's chat template puts first (no FROM on purpose). Use `localtune chat "
                + str(run.path)
                + "`, or llama.cpp with the GGUF's embedded template.",
            ]
            return write_text(run.modelfile, "\n".join(lines) + "\n")
        from localtune.converters.soft_prompt import token_name, virtual_token_ids

        path = write_modelfile(run.modelfile, bundle.tuned[0].path, template, tok)
        virtual = "".join(token_name(i) for i in range(len(virtual_token_ids(bundle.tuned[0].path))))
        text = path.read_text(encoding="utf-8").replace('TEMPLATE """', 'TEMPLATE """' + virtual, 1)
        extra = [
            "# The TEMPLATE starts with the learned virtual tokens. Ollama has no PARAMETER for a logit bias, so it",
            "# can sample them, which localtune chat and eval bias to -inf; expect stray output there.",
        ]
        return write_text(path, text + "\n".join(extra) + "\n")
    lines = [
        f"# {run.name}: {'; '.join(bundle.notes)}.",
        "# Ollama cannot run this adapter (no FROM on purpose): use `localtune chat " + str(run.path) + "`.",
    ]
    return write_text(run.modelfile, "\n".join(lines) + "\n")


def write_card(run_dir: Path, bundle: Bundle, cfg) -> Path:
    from localtune.methods import method
    from localtune.model.adapters import describe

    run = RunDir(run_dir)
    info = run.load_info()
    data = info.data
    lines = [
        f"# {run.name}",
        "",
        f"{method(cfg.adapter.method).title} fine-tune of `{cfg.model.name_or_path}` made with localtune.",
        "",
        "## Training",
        "",
        f"- data: `{cfg.data.path}` ({data.train_rows if data else '?'} training rows, "
        f"{data.val_rows if data else '?'} validation rows)",
        f"- steps: {info.steps}, final training loss {info.final_loss}, eval loss {info.eval_loss}",
        f"- {describe(cfg)}, on a {'4-bit' if info.quantized else '16-bit'} base, on {info.device}, {info.seconds} s",
        "",
        "## Files",
        "",
    ]
    for f in bundle.tuned + bundle.base:
        lines.append(f"- `{f.path.name}` ({f.path.stat().st_size / 1e6:.1f} MB)")
    lines += [f"- {e}" for e in bundle.extras]
    if bundle.adapter:
        lines.append(
            f"- `{bundle.adapter.name}` (LoRA adapter for llama.cpp's `--lora` / llama-cpp-python's `lora_path`)"
        )
    lines += [
        "- `Modelfile` (Ollama)",
        "",
        "## Verification",
        "",
        "| file | check | result | detail |",
        "|---|---|---|---|",
    ]
    checked = bundle.tuned + ([f for f in bundle.base if f.verify] if bundle.notes else [])
    for f in checked:
        for c in f.verify.checks if f.verify else []:
            lines.append(f"| {f.path.name} | {c.name} | {'PASS' if c.passed else 'FAIL'} | {c.detail} |")
    if bundle.notes:
        lines += ["", "## Where it runs", "", *[f"- {n}" for n in bundle.notes]]
    lines += [
        "",
        "## Use",
        "",
        f"    localtune chat {run_dir}",
        f"    cd {bundle.gguf_dir} && ollama create {run_dir.name.lower()} -f Modelfile",
        "",
    ]
    return write_text(run.card, "\n".join(lines))
