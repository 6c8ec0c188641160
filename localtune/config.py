"""The one typed configuration tree: model, data, adapter, train, export.

A YAML file and command-line flags are two views of the same tree. Every value remembers where it
came from (default, `file:line`, or a flag), the whole tree is validated at once (all problems in one
`ConfigError`, exit code 2), and it is saved as `config.yaml` in every run folder.

Run as:  localtune config [--config FILE]     # prints the effective tree with its documentation
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from localtune.errors import ConfigError, Problem
from localtune.methods import METHOD_NAMES, METHODS

DATA_FORMATS = ("auto", "text", "alpaca", "chat", "sharegpt", "prompt_completion")
OPTIMIZERS = ("paged_adamw_8bit", "adamw_8bit", "adamw")
SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cuda", "cpu")
OFFLOAD_MODES = ("auto", "on", "off")
KERNEL_MODES = ("auto", "liger", "off")


def opt(
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] | None = None,
    label: str | None = None,
    flag: str | None = None,
    short: str | None = None,
    auto: Any = None,
):
    """A config field with its documentation. The doc is the help of its CLI option, the hint under its
    TUI field and the comment of `localtune config`; its first sentence is the one-line hint.

    label: the TUI's field label (default: the name, spelled out); flag: the CLI option (default
    `--name-with-dashes`; a true/false knob gets `--flag/--no-flag`); short: a one-letter alias;
    auto: the value the word 'auto' stands for in a flag or form field (e.g. 0 for the micro-batch).
    """
    meta = {"doc": doc, "choices": choices, "label": label, "flag": flag, "short": short, "auto": auto}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name_or_path: str = opt(
        "",
        "Base model: a hub id, a local Hugging Face folder, a local .gguf file, or 'smollm2' "
        "for the built-in demo model.",
        label="Model",
        flag="--model",
        short="-m",
    )
    chat_template: str | None = opt(
        None,
        "Chat template to train with (a .jinja file or the template text). Empty: the model's own, "
        "or ChatML when it has none. The export embeds the same template.",
        label="Chat template",
    )
    trust_remote_code: bool = opt(
        False,
        "Allow Python code shipped with the model to run (only for authors you trust).",
        label="Trust remote code",
    )


@dataclass
class DataConfig:
    path: str = opt(
        "",
        "Training data: a .jsonl/.json/.csv/.tsv/.parquet/.txt file or a folder of them.",
        label="Training data",
        flag="--data",
        short="-d",
    )
    format: str = opt(
        "auto",
        "Row format; 'auto' detects it from the fields of the first row.",
        choices=DATA_FORMATS,
        label="Data format",
    )
    max_seq_len: int = opt(
        1024, "Longest training sequence in tokens; longer rows are truncated.", label="Max sequence length"
    )
    train_on_prompt: bool = opt(
        False, "Also compute the loss on prompt/user tokens (default: assistant tokens only).", label="Train on prompt"
    )
    packing: bool = opt(
        False, "Pack several short rows into one sequence, with no attention across rows.", label="Packing"
    )
    val_file: str | None = opt(
        None, "Separate validation data file; when set, no rows are split off for validation.", label="Validation file"
    )
    val_fraction: float = opt(
        0.05,
        "Fraction of rows held out for validation when there is no val_file (0 disables; needs 10+ rows).",
        label="Validation fraction",
    )
    skip_invalid: bool = opt(
        False, "Drop invalid rows (and report them) instead of stopping at them.", label="Skip invalid rows"
    )
    reasoning: str = opt(
        "last_turn",
        "Which assistant turns keep their reasoning, in training, in the exported template and in chat: "
        "keep_all, last_turn (those after the last user message, as Qwen3 does), or drop.",
        choices=("keep_all", "last_turn", "drop"),
        label="Reasoning",
    )


@dataclass
class AdapterConfig:
    method: str = opt(
        "lora",
        "What to train on the frozen base: lora (default), dora, ia3, loha, lokr, oft, vera, ln_tuning, "
        "prompt_tuning, p_tuning, prefix_tuning, llama_adapter or freeze. `localtune methods` explains each "
        "and where its result runs.",
        choices=METHOD_NAMES,
        label="Method",
        flag="--method",
    )
    r: int = opt(
        16,
        "Rank: the width of the low-rank matrices (lora, dora, loha, lokr; 8-64 is typical) or of VeRA's shared "
        "random matrices (vera; 256 is usual).",
        label="Rank",
        flag="--rank",
    )
    alpha: float = opt(
        32.0,
        "Scale numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA); lora, dora, loha, lokr.",
        label="Alpha",
    )
    dropout: float = opt(
        0.05,
        "Dropout on the adapter's input (lora, dora; module dropout for loha, lokr, oft, vera).",
        label="Dropout",
        flag="--lora-dropout",
    )
    target_modules: list[str] = opt(
        ["all-linear"],
        "Modules to adapt: 'all-linear' or a list of module names (ia3 and ln_tuning: 'all-linear' means the "
        "method's usual modules: attention keys/values and the MLP output for ia3, every norm for ln_tuning).",
        label="Target modules",
    )
    use_rslora: bool = opt(False, "Rank-stabilised LoRA scaling (lora, dora).", label="rsLoRA", flag="--rslora")
    lora_plus_ratio: float = opt(
        0.0,
        "LoRA+: the B matrices learn this many times faster than A (16 is the paper's choice; 0: off); lora, dora.",
        label="LoRA+ ratio",
    )
    oft_block_size: int = opt(
        32, "OFT's rotation block size (it must divide each adapted layer's input width).", label="OFT block size"
    )
    virtual_tokens: int = opt(
        20,
        "Learned positions: virtual tokens (prompt_tuning, p_tuning), prefix length (prefix_tuning) or adaption "
        "prompt length (llama_adapter).",
        label="Virtual tokens",
    )
    init_text: str = opt(
        "",
        "Text whose token embeddings start the virtual tokens (prompt_tuning); empty: rows sampled from the "
        "vocabulary's embeddings (never random vectors far from real ones).",
        label="Prompt init text",
    )
    encoder_hidden: int = opt(
        0, "P-tuning's prompt encoder width (0: the model's hidden size).", label="P-tuning encoder width"
    )
    adapter_layers: int = opt(
        8, "LLaMA-Adapter: how many of the top layers get adaption prompts.", label="Adapter layers"
    )
    freeze_modules: list[str] = opt(
        ["norm"],
        "Freeze (sparse) fine-tuning: what trains in full precision, the rest frozen: 'norm' (every norm), "
        "'bias' (every bias), 'last:N' (the top N layers whole) or module-name patterns.",
        label="Trained modules",
    )


@dataclass
class TrainConfig:
    epochs: int = opt(
        1,
        "Passes over the training data (ignored when max_steps > 0). Left unset (no flag or file "
        "value), `train` and `quick` choose it from the data's size: at least 32 optimizer steps, "
        "2-8 epochs under 2,000 rows (README: the training recipe).",
        label="Epochs",
    )
    max_steps: int = opt(0, "Stop after this many optimizer steps (0: train for `epochs`).", label="Max steps")
    micro_batch_size: int = opt(
        0,
        "Rows per forward pass; 0 is auto: the memory planner picks it, and on out-of-memory it halves "
        "(accumulation doubles) and training continues from the last checkpoint.",
        label="Micro-batch",
        flag="--micro-batch",
        auto=0,
    )
    grad_accum: int = opt(
        8,
        "Micro-batches per optimizer step; with an auto micro-batch, the rows per optimizer step.",
        label="Gradient accumulation",
    )
    early_stopping_patience: int = opt(
        0, "Stop after this many evaluations without a better eval loss (0: off).", label="Early-stopping patience"
    )
    lr: float = opt(
        2e-4,
        "Peak learning rate. Left unset, `train` and `quick` choose it from the model's size "
        "and the LoRA scale: 2e-4 x sqrt(7B / parameters) within 1e-4..1e-3, x 2 / scale.",
        label="Learning rate",
    )
    lr_scheduler: str = opt("cosine", "Learning-rate schedule after warm-up.", choices=SCHEDULERS, label="LR schedule")
    warmup_ratio: float = opt(0.03, "Fraction of steps spent warming up the learning rate.", label="Warm-up")
    weight_decay: float = opt(0.0, "AdamW weight decay.", label="Weight decay")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 disables).", label="Max grad norm")
    optimizer: str = opt(
        "paged_adamw_8bit",
        "Optimizer; paged variants fall back to unpaged on CPU.",
        choices=OPTIMIZERS,
        label="Optimizer",
    )
    load_in_4bit: bool = opt(
        True,
        "QLoRA: load the base in 4-bit NF4 with double quantization (--no-quant: plain LoRA on a 16/32-bit base).",
        label="4-bit base (QLoRA)",
        flag="--quant",
    )
    gradient_checkpointing: bool = opt(
        True, "Recompute activations in the backward pass to save memory.", label="Gradient checkpointing"
    )
    activation_offload: str = opt(
        "auto",
        "Keep the checkpointed layer inputs in pinned CPU memory instead of GPU memory (CUDA only); "
        "'auto' does it when the memory planner finds the run fits only that way.",
        choices=OFFLOAD_MODES,
        label="Activation offload",
    )
    kernels: str = opt(
        "auto",
        "Fused GPU kernels (RoPE, RMSNorm, SwiGLU) from liger-kernel: 'auto' uses them on CUDA when it is "
        "installed and supports the model, 'liger' requires them, 'off'.",
        choices=KERNEL_MODES,
        label="Fused kernels",
    )
    precision: str = opt(
        "auto", "Compute dtype; 'auto' is bf16 where supported, else fp32.", choices=PRECISIONS, label="Precision"
    )
    device: str = opt("auto", "Where to train; 'auto' uses CUDA when available.", choices=DEVICES, label="Device")
    gpus: int = opt(
        1,
        "Data-parallel ranks on this machine, one per GPU, started through torchrun (gloo processes on the CPU); "
        "a step then takes micro-batch x grad-accum rows on each rank.",
        label="GPUs (ranks)",
    )
    seed: int = opt(42, "Seed for shuffling, the validation split, LoRA init and dropout.", label="Seed")
    save_every: int = opt(100, "Save a checkpoint every this many optimizer steps.", label="Save every")
    keep_checkpoints: int = opt(2, "How many complete checkpoints to keep.", label="Checkpoints kept")
    eval_every: int = opt(
        0, "Evaluate on the validation rows every this many steps (0: at the end only).", label="Eval every"
    )
    layer_lr_decay: float = opt(
        1.0,
        "Layer-wise learning-rate scaling: layer i of L learns at lr x decay^(L-1-i), so lower layers move less "
        "(e.g. 0.9; 1: off).",
        label="Layer LR decay",
    )
    layer_drop: float = opt(
        0.0,
        "Stochastic depth while training: each decoder layer is skipped with a probability rising linearly "
        "to this value at the top layer (e.g. 0.1; 0: off). Nothing changes at export.",
        label="Layer drop",
    )


@dataclass
class ExportConfig:
    quants: list[str] = opt(
        ["q4_k_m"],
        "GGUF types to export, comma-separated, e.g. q4_k_m,q8_0,f16.",
        label="GGUF types",
        flag="--quant",
        short="-q",
    )
    verify: bool = opt(True, "Check every exported GGUF against the trained model.", label="Verify")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # Where each value came from: "section.key" -> "config.yaml:4" or "--max-steps". Absent: default.
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    # ---- access ---------------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        section, name = _split_key(key)
        return getattr(getattr(self, section), name)

    def set(self, key: str, value: Any, source: str) -> None:
        """Set `section.name` from a flag or file value, converting it to the field's type.

        Raises ConfigError naming `source` when the key is unknown or the value has the wrong type.
        """
        problems: list[Problem] = []
        self._set(key, value, source, problems)
        if problems:
            raise ConfigError(problems, heading="invalid configuration")

    def _set(self, key: str, value: Any, where: str, problems: list[Problem]) -> None:
        if _SECTION_ALIASES.get(key.partition(".")[0], "adapter") == "adapter" and key.endswith(".use_dora"):
            # the earlier `lora.use_dora: true` is the method dora now
            try:
                dora = _convert(value, bool)
            except (TypeError, ValueError) as exc:
                problems.append(Problem(where, key, f"{exc} (got {value!r})", "use adapter.method: dora"))
                return
            key, value = "adapter.method", "dora" if dora else self.adapter.method
        try:
            section, name = _split_key(key)
        except KeyError as exc:
            problems.append(Problem(where, key, str(exc.args[0]), "use one of the keys `localtune config` lists"))
            return
        typ = typing.get_type_hints(_SECTION_TYPES[section])[name]
        auto = next(f.metadata["auto"] for f in fields(_SECTION_TYPES[section]) if f.name == name)
        if auto is not None and isinstance(value, str) and value.strip().lower() == "auto":
            value = auto
        try:
            converted = _convert(value, typ)
        except (TypeError, ValueError) as exc:
            problems.append(Problem(where, key, f"{exc} (got {value!r})", f"give {key} a {_type_name(typ)} value"))
            return
        setattr(getattr(self, section), name, converted)
        self.sources[f"{section}.{name}"] = where

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "default")

    def overridden(self) -> list[str]:
        """One line per value that is not a default, saying where it came from."""
        return [f"{k} = {self.get(k)!r}  ({src})" for k, src in sorted(self.sources.items())]

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {s: {f.name: getattr(getattr(self, s), f.name) for f in fields(getattr(self, s))} for s in SECTIONS}

    def to_yaml(self, *, with_docs: bool = False, only_set: bool = False) -> str:
        """YAML text of the whole tree; with_docs adds each field's documentation as a comment; only_set
        keeps just the values that came from a file, a flag or a form (a config that leaves the rest to
        the defaults and the training recipe)."""
        import yaml

        out: list[str] = []
        for section in SECTIONS:
            keys = [f for f in fields(getattr(self, section)) if not only_set or f"{section}.{f.name}" in self.sources]
            if not keys:
                continue
            out.append(f"{section}:")
            for f in keys:
                key = f"{section}.{f.name}"
                value = yaml.safe_dump({f.name: getattr(getattr(self, section), f.name)}, default_flow_style=True)
                value = value.strip()[1:-1]  # "{a: 1}" -> "a: 1": one key per line, flow values
                line = f"  {value}"
                if with_docs:
                    doc = f.metadata["doc"]
                    if f.metadata.get("choices"):
                        doc += f" One of: {', '.join(f.metadata['choices'])}."
                    src = self.source_of(key)
                    line = f"{line:<44} # {doc}" + ("" if src == "default" else f" [from {src}]")
                out.append(line)
        return "\n".join(out) + "\n"

    def save(self, path: str | os.PathLike, *, only_set: bool = False) -> Path:
        """Write the tree as YAML, atomically (localtune.files). only_set: just the values that were set,
        so that what was left unset stays the defaults' and the recipe's when the file is read back."""
        from localtune.files import write_text

        return write_text(path, self.to_yaml(only_set=only_set))


SECTIONS = ("model", "data", "adapter", "train", "export")
_SECTION_TYPES = {
    "model": ModelConfig,
    "data": DataConfig,
    "adapter": AdapterConfig,
    "train": TrainConfig,
    "export": ExportConfig,
}


# Names other trainers use for our keys, so an unknown key can point at the right one.
_ALIASES = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "num_train_epochs": "epochs",
    "batch_size": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "seq_len": "max_seq_len",
    "max_length": "max_seq_len",
    "cutoff_len": "max_seq_len",
    "sequence_len": "max_seq_len",
    "sample_packing": "packing",
    "quantization": "quants",
    "gradient_checkpointing_enable": "gradient_checkpointing",
}


# Earlier names: the `lora` section is now `adapter` (a file or key that says lora still works).
_SECTION_ALIASES = {"lora": "adapter"}


def _split_key(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    section = _SECTION_ALIASES.get(section, section)
    if section not in _SECTION_TYPES:
        near = difflib.get_close_matches(section, SECTIONS, n=1)
        raise KeyError(f"unknown section {section!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    names = [f.name for f in fields(_SECTION_TYPES[section])]
    if name not in names:
        near = [_ALIASES[name]] if _ALIASES.get(name) in names else difflib.get_close_matches(name, names, n=1)
        raise KeyError(f"unknown key {key!r}" + (f" (did you mean '{section}.{near[0]}'?)" if near else ""))
    return section, name


def _type_name(typ: Any) -> str:
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    typ = args[0] if typing.get_origin(typ) in (typing.Union, types.UnionType) and len(args) == 1 else typ
    return {int: "whole-number", float: "number", bool: "true/false", str: "text"}.get(typ, "list or text")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert(value: Any, typ: Any) -> Any:
    """Convert a YAML or flag value to the field type; raise ValueError/TypeError with a reason."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        (typ,) = [a for a in args if a is not type(None)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise TypeError("expected true or false")
    if typ is int:
        if isinstance(value, bool):
            raise TypeError("expected a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError("expected a whole number") from None
        raise TypeError("expected a whole number")
    if typ is float:
        if isinstance(value, bool):
            raise TypeError("expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" as text, so accept numeric text
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError("expected a number") from None
        raise TypeError("expected a number")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError("expected text")
    if typing.get_origin(typ) is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            return [str(v) for v in value]
        raise TypeError("expected a list of names or a comma-separated text")
    raise TypeError(f"unsupported field type {typ}")  # a bug in this module, not a user mistake


# ---- loading ---------------------------------------------------------------------------------------
def load_config(path: str | os.PathLike | None = None, overrides: dict[str, tuple[Any, str]] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then `overrides` ({key: (value, flag name)}), then validate.

    All problems (unknown keys, wrong types, out-of-range or contradictory values) are collected and
    raised together as one ConfigError.
    """
    cfg = Config()
    problems: list[Problem] = []
    if path is not None:
        _apply_yaml(cfg, Path(path), problems)
    for key, (value, flag) in (overrides or {}).items():
        if value is not None:
            cfg._set(key, value, flag, problems)
    chosen = METHODS.get(cfg.adapter.method)
    if chosen and not chosen.four_bit and cfg.source_of("train.load_in_4bit") == "default":
        # LoHa/LoKr cannot train on a 4-bit base: left unset, the base is 16-bit (set to 4-bit, it is an error)
        cfg.train.load_in_4bit = False
        cfg.sources["train.load_in_4bit"] = f"{cfg.source_of('adapter.method')}: {chosen.name} needs a 16-bit base"
    problems += validate(cfg)  # also after bad keys (they keep their defaults): every problem at once
    if problems:
        raise ConfigError(problems, heading=f"invalid configuration ({len(problems)} problem(s))")
    return cfg


def _apply_yaml(cfg: Config, path: Path, problems: list[Problem]) -> None:
    import yaml

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.append(Problem(str(path), None, "config file not found", "check the path given to --config"))
        return
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), None, f"cannot read config file: {exc}", "save it as UTF-8 text"))
        return
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problems.append(Problem(where, None, f"not valid YAML: {getattr(exc, 'problem', exc)}", "fix the YAML syntax"))
        return
    if root is None:
        return
    loader = yaml.SafeLoader("")
    if not isinstance(root, yaml.MappingNode):
        problems.append(
            Problem(
                f"{path}:{root.start_mark.line + 1}",
                None,
                "the top level must be a mapping of sections",
                "start the file with sections such as `train:` and `adapter:`",
            )
        )
        return
    for knode, vnode in root.value:
        section = loader.construct_object(knode, deep=True)
        section = _SECTION_ALIASES.get(section, section)
        where = f"{path}:{knode.start_mark.line + 1}"
        if section not in _SECTION_TYPES:
            near = difflib.get_close_matches(str(section), SECTIONS, n=1)
            problems.append(
                Problem(
                    where,
                    str(section),
                    "unknown section" + (f" (did you mean {near[0]!r}?)" if near else ""),
                    f"use one of: {', '.join(SECTIONS)}",
                )
            )
            continue
        if not isinstance(vnode, yaml.MappingNode):
            problems.append(
                Problem(
                    where,
                    section,
                    "a section must be a mapping of keys to values",
                    f"write `{section}:` followed by indented `key: value` lines",
                )
            )
            continue
        for k2, v2 in vnode.value:
            name = loader.construct_object(k2, deep=True)
            value = loader.construct_object(v2, deep=True)
            cfg._set(f"{section}.{name}", value, f"{path}:{k2.start_mark.line + 1}", problems)


# ---- validation ------------------------------------------------------------------------------------
def validate(cfg: Config) -> list[Problem]:
    """Every range, choice and cross-field rule; returns all problems (empty when valid)."""
    problems: list[Problem] = []

    def bad(key: str, message: str, fix: str) -> None:
        problems.append(Problem(cfg.source_of(key), key, f"{message} (got {cfg.get(key)!r})", fix))

    for section in SECTIONS:
        for f in fields(getattr(cfg, section)):
            choices = f.metadata.get("choices")
            key = f"{section}.{f.name}"
            if choices and cfg.get(key) not in choices:
                bad(key, "not one of the allowed values", f"use one of: {', '.join(choices)}")

    d, lo, t, e = cfg.data, cfg.adapter, cfg.train, cfg.export
    if not 16 <= d.max_seq_len <= 1_048_576:
        bad("data.max_seq_len", "must be between 16 and 1048576 tokens", "a typical value is 512-4096")
    if not 0.0 <= d.val_fraction < 0.5:
        bad("data.val_fraction", "must be at least 0 and below 0.5", "use e.g. 0.05, or 0 for no validation split")
    if d.val_file and d.val_fraction > 0 and "data.val_fraction" in cfg.sources:
        problems.append(
            Problem(
                f"{cfg.source_of('data.val_file')} and {cfg.source_of('data.val_fraction')}",
                "data.val_file",
                f"both a validation file ({d.val_file!r}) and a validation fraction ({d.val_fraction}) are set",
                "keep one: the file, or the fraction to split off the training data",
            )
        )
    if lo.r < 1:
        bad("adapter.r", "must be at least 1", "typical ranks are 8, 16, 32 or 64")
    if lo.alpha <= 0:
        bad("adapter.alpha", "must be positive", "a common choice is twice the rank")
    if not 0.0 <= lo.dropout < 1.0:
        bad("adapter.dropout", "must be at least 0 and below 1", "use 0.0-0.1")
    if not lo.target_modules:
        bad("adapter.target_modules", "must name at least one module", "use all-linear")
    if lo.lora_plus_ratio < 0:
        bad("adapter.lora_plus_ratio", "must not be negative", "use 16 (the LoRA+ paper), or 0 for off")
    for key in ("adapter.virtual_tokens", "adapter.oft_block_size", "adapter.adapter_layers"):
        if cfg.get(key) < 1:
            bad(key, "must be at least 1", f"set {key} to 1 or more")
    if lo.encoder_hidden < 0:
        bad("adapter.encoder_hidden", "must not be negative", "use 0 for the model's hidden size")
    if not lo.freeze_modules:
        bad("adapter.freeze_modules", "must name at least one module", "use norm, bias or last:2")
    chosen = METHODS.get(lo.method)
    if chosen and not chosen.four_bit and t.load_in_4bit:
        problems.append(
            Problem(
                f"{cfg.source_of('adapter.method')} and {cfg.source_of('train.load_in_4bit')}",
                "adapter.method",
                f"{lo.method} cannot train on a 4-bit base (peft takes its shapes from the packed 4-bit weight)",
                f"add --no-quant (train.load_in_4bit: false) to train {lo.method} on a 16-bit base, or use lora",
            )
        )
    if chosen and chosen.name != "lora" and chosen.name != "dora" and lo.lora_plus_ratio > 0:
        problems.append(
            Problem(
                f"{cfg.source_of('adapter.method')} and {cfg.source_of('adapter.lora_plus_ratio')}",
                "adapter.lora_plus_ratio",
                f"LoRA+ gives LoRA's B matrices their own learning rate; {lo.method} has none",
                "set adapter.lora_plus_ratio to 0, or use method lora or dora",
            )
        )
    if chosen and chosen.padded and d.packing:
        problems.append(
            Problem(
                f"{cfg.source_of('adapter.method')} and {cfg.source_of('data.packing')}",
                "data.packing",
                f"{chosen.title} trains on whole padded rows (peft drops the position ids that packing needs)",
                "turn data.packing off for this method",
            )
        )
    if not 0.0 < t.layer_lr_decay <= 1.0:
        bad("train.layer_lr_decay", "must be above 0 and at most 1", "use e.g. 0.9, or 1 for off")
    if t.gpus < 1:
        bad("train.gpus", "must be at least 1", "use 1 for one process, or the number of GPUs to train on")
    if not 0.0 <= t.layer_drop < 1.0:
        bad("train.layer_drop", "must be at least 0 and below 1", "use e.g. 0.1, or 0 for off")
    if t.epochs < 1 and t.max_steps <= 0:
        bad("train.epochs", "must be at least 1 when max_steps is 0", "set epochs >= 1 or max_steps > 0")
    if t.max_steps < 0:
        bad("train.max_steps", "must not be negative", "use 0 to train for `epochs`")
    if t.micro_batch_size < 0:
        bad("train.micro_batch_size", "must not be negative", "use 0 for auto, or 1 or more")
    if t.early_stopping_patience < 0:
        bad("train.early_stopping_patience", "must not be negative", "use 0 to turn early stopping off")
    for key in ("train.grad_accum", "train.save_every", "train.keep_checkpoints"):
        if cfg.get(key) < 1:
            bad(key, "must be at least 1", f"set {key} to 1 or more")
    if t.eval_every < 0:
        bad("train.eval_every", "must not be negative", "use 0 to evaluate at the end only")
    if not 0.0 < t.lr < 1.0:
        bad("train.lr", "must be above 0 and below 1", "LoRA usually trains well at 1e-4 to 3e-4")
    if not 0.0 <= t.warmup_ratio < 1.0:
        bad("train.warmup_ratio", "must be at least 0 and below 1", "use e.g. 0.03")
    if t.weight_decay < 0:
        bad("train.weight_decay", "must not be negative", "use 0.0-0.1")
    if t.max_grad_norm < 0:
        bad("train.max_grad_norm", "must not be negative", "use 1.0, or 0 to disable clipping")
    if t.activation_offload == "on" and not t.gradient_checkpointing:
        bad(
            "train.activation_offload",
            "'on' needs gradient checkpointing (it offloads the checkpoints)",
            "turn train.gradient_checkpointing on, or set train.activation_offload to auto or off",
        )
    if t.device == "cpu" and t.precision == "fp16":
        problems.append(
            Problem(
                f"{cfg.source_of('train.device')} and {cfg.source_of('train.precision')}",
                "train.precision",
                "fp16 training is not supported on the CPU (device 'cpu', precision 'fp16')",
                "use precision auto, bf16 or fp32 on the CPU",
            )
        )
    from localtune.converters.quants import QUANT_TYPES

    unknown = [q for q in e.quants if q.lower() not in QUANT_TYPES]
    if unknown or not e.quants:
        bad(
            "export.quants",
            f"unknown GGUF type(s) {', '.join(unknown) or '(none given)'}",
            f"use some of: {', '.join(QUANT_TYPES)}",
        )
    return problems


def describe_fields() -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every field: the source for docs, help texts and TUI tooltips."""
    out = []
    for section in SECTIONS:
        for f in fields(_SECTION_TYPES[section]):
            default = f.default if f.default is not MISSING else f.default_factory()
            out.append((f"{section}.{f.name}", default, f.metadata["doc"]))
    return out


# ---- knobs: the fields as the faces see them ---------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One config field as the CLI and the TUI present it; everything here comes from its `opt()`."""

    key: str  # "train.lr"
    label: str  # "Learning rate" (the TUI's field label)
    doc: str  # the whole documentation (CLI help, `localtune config`)
    flag: str  # "--lr"; a true/false knob also has "--no-" + flag[2:]
    short: str | None  # "-m"
    default: Any
    type: Any  # the field's annotation: int, float, str, bool, list[str], str | None
    choices: tuple[str, ...] | None
    auto: Any = None  # what the word "auto" means for this knob (None: no such word)

    @property
    def hint(self) -> str:
        """The doc's first sentence: the one-line hint under a TUI field."""
        first = re.split(r"(?<=[a-z0-9)])\. (?=[A-Z])", self.doc, maxsplit=1)[0]
        return first if first.endswith(".") else first + "."

    @property
    def is_bool(self) -> bool:
        return self.type is bool

    def text(self, value: Any) -> str:
        """A value as a user types it (lists comma-separated, None empty)."""
        if value is None:
            return ""
        if isinstance(value, list):
            return ",".join(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


def knobs() -> list[Knob]:
    """Every field of the tree, in section order."""
    out = []
    for section in SECTIONS:
        cls = _SECTION_TYPES[section]
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            m = f.metadata
            default = f.default if f.default is not MISSING else f.default_factory()
            out.append(
                Knob(
                    f"{section}.{f.name}",
                    m["label"] or f.name.replace("_", " ").capitalize(),
                    m["doc"],
                    m["flag"] or "--" + f.name.replace("_", "-"),
                    m["short"],
                    default,
                    hints[f.name],
                    m["choices"],
                    m["auto"],
                )
            )
    return out


def knob(key: str) -> Knob:
    for k in knobs():
        if k.key == key:
            return k
    _split_key(key)  # raises KeyError naming the nearest key
    raise KeyError(key)


# Starting points for the New run form (and anyone building a config): values for some knobs; a knob a
# preset leaves out keeps its default, and epochs/lr left out are the training recipe's (train/recipe.py).
PRESETS: dict[str, dict[str, Any]] = {
    "auto": {"adapter.r": 16, "adapter.alpha": 32.0},
    "quick": {"adapter.r": 8, "adapter.alpha": 16.0, "train.lr": 2e-3, "train.epochs": 1},
    "balanced": {"adapter.r": 16, "adapter.alpha": 32.0, "train.lr": 2e-4, "train.epochs": 2},
    "quality": {"adapter.r": 32, "adapter.alpha": 64.0, "train.lr": 1e-4, "train.epochs": 3},
}
