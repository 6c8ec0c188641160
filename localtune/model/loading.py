"""Loading a base model for training: source resolution, GGUF import, 4-bit quantization, LoRA.

- A hub id is fetched into the local Hugging Face cache and used as a folder.
- A `.gguf` file is imported through transformers' GGUF loader (dequantized), its tokenizer checked
  against llama.cpp's, and saved once as a normal Hugging Face folder under the localtune cache
  (model/gguf_import.py).
- On CUDA the base loads in 4-bit NF4 with double quantization (bitsandbytes) and computes in bf16
  where the GPU supports it, fp16 otherwise. Without CUDA the same path runs on the CPU in fp32.
  `train.load_in_4bit: false` (`--no-quant`) trains plain LoRA on a 16/32-bit base.
- Base weights are frozen and stay in their dtype (no fp32 up-cast of embeddings); LoRA weights are
  fp32. Gradient checkpointing is non-reentrant.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from localtune.config import Config
from localtune.converters.architectures import SUPPORTED_ARCHITECTURES
from localtune.converters.gemma4 import NO_LORA
from localtune.errors import ModelSourceError
from localtune.faults import signal_point
from localtune.methods import method
from localtune.model.checks import check_model_folder, load_tokenizer
from localtune.model.source import ModelSource, resolve_model
from localtune.model.text_only import text_only_folder, wrapper_type
from localtune.train.speed.kernels import use_fused_kernels


@dataclass
class Base:
    """A resolved base model: its local Hugging Face folder, architecture and identity."""

    spec: str
    folder: Path
    architecture: str
    identity: dict  # what a checkpoint must match to resume
    vocab_size: int = 0
    trust_remote_code: bool = False

    def tokenizer(self):
        """The base's tokenizer, refused if damaged or with ids the embedding lacks."""
        return load_tokenizer(self.folder, self.vocab_size, trust_remote_code=self.trust_remote_code)


@dataclass
class LoadedModel:
    model: object  # peft.PeftModel
    device: str
    dtype: str
    quantized: bool
    seconds: float
    kernels: str = ""  # fused kernels patched in (localtune/train/speed/kernels.py), "" for none
    notes: tuple[str, ...] = ()  # one line each, for the run's log (e.g. what a 4-bit MoE keeps in 16 bits)


def expert_parameters(model) -> list[str]:
    """peft `target_parameters` for a mixture of experts' stacked (3-D) expert weights, [] for a dense model.
    bitsandbytes quantizes nn.Linear modules only: these, like the routers (not nn.Linear either), stay in
    the compute dtype under 4-bit loading."""
    return sorted(
        {".".join(n.split(".")[-3:]) for n, p in model.named_parameters() if p.ndim == 3 and ".experts." in n}
    )


def _moe_notes(model, experts: list[str], quantized: bool, dtype, trained: bool) -> list[str]:
    if not experts:
        return []
    n = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "lora_" not in name and (".experts." in name or ".router." in name or name.endswith("mlp.gate.weight"))
    )
    kept = f"experts and routers ({n / 1e6:,.1f} M parameters) stay {str(dtype).removeprefix('torch.')}"
    lines = [f"4-bit NF4 quantizes the attention linears only; {kept}" if quantized else ""]
    if not trained:
        lines.append("the experts get no LoRA (they do with lora.target_modules all-linear and DoRA off)")
    return [line for line in lines if line]


def cache_dir() -> Path:
    return Path(os.environ.get("LOCALTUNE_CACHE", Path.home() / ".cache" / "localtune"))


def fingerprint(paths: list[Path], chunk: int = 1 << 20) -> str:
    """A fast identity of model files: names, sizes, and the first and last MiB of each."""
    h = hashlib.sha256()
    for p in sorted(paths):
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as fh:
            h.update(fh.read(chunk))
            if size > 2 * chunk:
                fh.seek(size - chunk)
                h.update(fh.read(chunk))
    return h.hexdigest()[:16]


def model_folder(source: ModelSource, *, trust_remote_code: bool = False) -> Path:
    """A local Hugging Face folder for `source` (downloading or importing as needed). Only safetensors
    weights are fetched, and Python files only when the user trusts the model's code."""
    if source.kind == "folder":
        return Path(source.location)
    if source.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]
            return Path(
                snapshot_download(source.location, allow_patterns=patterns + (["*.py"] if trust_remote_code else []))
            )
        except Exception as exc:
            raise ModelSourceError(
                f"cannot fetch {source.spec!r} from the hub: {str(exc).splitlines()[0]}",
                hint="check the id and your network, or download the model and pass its folder",
            ) from None
    from localtune.model.gguf_import import import_gguf

    return import_gguf(Path(source.location) / source.gguf_file)


def quiet_progress():
    """Around a transformers/peft call that loads or saves local files: their bars become localtune
    progress lines and their warnings go to the run's log (localtune/console.py)."""
    from localtune.console import library_output

    return library_output()


def check_architecture(cfg: dict, spec: str) -> str:
    """The model_type, if transformers can load it and our converters can export it."""
    model_type = cfg["model_type"]
    if model_type not in SUPPORTED_ARCHITECTURES:
        from transformers import CONFIG_MAPPING

        can_load = model_type in CONFIG_MAPPING
        raise ModelSourceError(
            f"{spec!r} is a {model_type!r} model: "
            + (
                "transformers can load it, but localtune's GGUF converters do not export it"
                if can_load
                else "this version of transformers cannot load it, and localtune does not export it"
            ),
            hint=f"use a model of a supported architecture: {', '.join(sorted(set(SUPPORTED_ARCHITECTURES)))}",
            title="unsupported architecture",
        )
    if model_type.startswith("gemma4") and cfg.get("enable_moe_block"):
        raise ModelSourceError(
            f"{spec!r} is Gemma 4's mixture-of-experts layout (26B-A4B): localtune converts and verifies it as "
            "GGUF, but does not train it yet (its router would be quantized and given LoRA, and its expert LoRA "
            "cannot be exported)",
            hint="train a dense Gemma 4 (E2B, E4B, 31B), or a Qwen3-MoE or gpt-oss model; "
            "`localtune export FOLDER` still converts this one",
            title="unsupported architecture",
        )
    return model_type


def pick_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError(
            "train.device is 'cuda' but no CUDA GPU is available",
            hint="use --device cpu (slow) or auto",
            title="no GPU",
        )
    if requested == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str, precision: str):
    import torch

    if precision == "fp32" or (precision == "auto" and device == "cpu"):
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise ModelSourceError(
                "this GPU does not support bf16", hint="use --precision fp16 or auto", title="bf16 not supported"
            )
        return torch.float16
    return torch.bfloat16


def resolve_base(spec: str, *, trust_remote_code: bool = False) -> Base:
    """Find (download or import) the base model and check its files and architecture; loads no weights."""
    source = resolve_model(spec)
    folder = model_folder(source, trust_remote_code=trust_remote_code)
    if wrapper_type(folder):  # Mistral 3: train and export its text model (the vision tower is left out)
        weights = [p for p in folder.iterdir() if p.suffix == ".safetensors"]
        target = cache_dir() / "text-models" / f"{folder.name}-{fingerprint(weights)}"
        folder = text_only_folder(folder, target)
    cfg = check_model_folder(folder, trust_remote_code=trust_remote_code)
    arch = check_architecture(cfg, source.spec)
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    return Base(
        source.spec,
        folder,
        arch,
        {"model": source.spec, "model_type": arch, "fingerprint": fingerprint(weights)},
        vocab_size=cfg["vocab_size"],
        trust_remote_code=trust_remote_code,
    )


def load_for_training(cfg: Config, base: Base) -> LoadedModel:
    """Base model (4-bit or not) with fresh LoRA adapters, ready for the training loop."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    start = time.monotonic()
    device = pick_device(cfg.train.device)
    dtype = compute_dtype(device, cfg.train.precision)
    kwargs = {
        "dtype": dtype,
        "device_map": {"": torch.cuda.current_device() if device == "cuda" else "cpu"},  # a rank's own GPU
        "trust_remote_code": cfg.model.trust_remote_code,
    }
    chosen = method(cfg.adapter.method)
    if cfg.train.load_in_4bit:
        skip = None
        if chosen.kind == "freeze":  # the chosen linear layers stay out of the 4-bit load (model/freeze.py)
            from localtune.model import freeze

            layout = freeze.meta_model(base.folder, cfg.model.trust_remote_code)
            skip = freeze.skip_modules(layout, freeze.chosen_parameters(layout, cfg.adapter.freeze_modules))
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.uint8,
            llm_int8_skip_modules=skip,
        )
    signal_point("train.load")
    with quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(base.folder, **kwargs)
    if cfg.train.load_in_4bit and device == "cpu":
        # bitsandbytes repacks 4-bit weights for its CPU inference kernel the first time a layer runs in
        # eval mode (our evaluation) and keeps them packed; training then backpropagates through a
        # kernel without autograd support and the results drift. Keep the training layout throughout.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    kernels = use_fused_kernels(model, device, cfg.train.kernels)
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = False  # no KV cache in training (and packing needs none)
    notes: list[str] = []
    if cfg.train.gradient_checkpointing and not chosen.checkpointing:
        notes.append(f"{chosen.title} trains without gradient checkpointing (peft refuses it); the plan counts that")
    if cfg.train.gradient_checkpointing and chosen.checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(cfg.train.seed)  # adapter weights start from the run's seed

    def loaded(model) -> LoadedModel:
        return LoadedModel(
            model,
            device,
            str(dtype).removeprefix("torch."),
            cfg.train.load_in_4bit,
            time.monotonic() - start,
            kernels,
            tuple(notes),
        )

    if chosen.kind == "freeze":  # no peft model: the base itself, its chosen parameters trainable
        from localtune.model.freeze import make_trainable

        make_trainable(model, cfg.adapter.freeze_modules)
        return loaded(model)
    if not chosen.lora_family:
        from localtune.model.adapters import peft_config

        try:
            with quiet_progress():
                model = get_peft_model(model, peft_config(cfg, model, base.folder))
        except ValueError as exc:  # e.g. target modules that do not exist in this model
            raise ModelSourceError(
                f"cannot add {chosen.title} adapters: {exc}",
                hint="check adapter.target_modules against the model's module names",
            ) from None
        return loaded(model)
    targets, dora = cfg.adapter.target_modules, chosen.name == "dora"
    target_modules = "all-linear" if targets == ["all-linear"] else list(targets)
    # Gemma 4: llama.cpp applies no LoRA to the per-layer-input projection, so its adapter could not export
    gemma4 = targets == ["all-linear"] and str(getattr(model.config, "model_type", "")).startswith("gemma4")
    experts = expert_parameters(model)
    target_parameters = experts if experts and targets == ["all-linear"] and not dora else None
    if experts and targets == ["all-linear"]:  # name the linears: peft's "all-linear" would add the routers
        target_modules = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
        )
    lora = LoraConfig(
        r=cfg.adapter.r,
        lora_alpha=cfg.adapter.alpha,
        # peft's LoRA on parameters (ParamWrapper) takes no dropout; the linears get theirs back below
        lora_dropout=0.0 if target_parameters else cfg.adapter.dropout,
        target_modules=target_modules,
        target_parameters=target_parameters,
        exclude_modules=list(NO_LORA) if gemma4 else None,
        use_rslora=cfg.adapter.use_rslora,
        use_dora=dora,
        task_type="CAUSAL_LM",
    )
    try:
        with quiet_progress():
            model = get_peft_model(model, lora)
    except ValueError as exc:  # e.g. target modules that do not exist in this model
        raise ModelSourceError(
            f"cannot add LoRA adapters: {exc}", hint="check adapter.target_modules against the model's module names"
        ) from None
    if target_parameters and cfg.adapter.dropout:
        from peft.tuners.lora import LoraLayer, ParamWrapper

        for module in model.modules():
            if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
                module.lora_dropout["default"] = torch.nn.Dropout(cfg.adapter.dropout)
    if device == "cpu":
        from localtune.train.speed import lora_linear
        from localtune.train.speed.lora_dropout import replace_lora_dropout

        replace_lora_dropout(model)  # same distribution, a fraction of the random draws (lora_dropout.py)
        lora_linear.install(model)  # base + LoRA in one autograd function, fewer passes over memory
    notes += _moe_notes(model, experts, cfg.train.load_in_4bit, dtype, bool(target_parameters))
    return loaded(model)


def memory_in_use(model, device: str) -> int:
    import torch

    if device == "cuda":
        return torch.cuda.memory_allocated()
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
