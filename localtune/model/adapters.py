"""Putting the configured adapter method on a loaded base: peft's config for each method (localtune/methods.py).

LoRA and DoRA keep their own path in loading.py (experts, Gemma 4's exclusions, the CPU speed-ups);
every other peft method gets its config here. Where "all-linear" means nothing for a method (IA3,
LayerNorm tuning), it stands for the method's usual modules: peft's table for the model type, else the
attention keys/values and the MLP's output projection (IA3) or every normalisation layer (LN tuning).
"""

from __future__ import annotations

from localtune.config import Config
from localtune.errors import ModelSourceError
from localtune.methods import ADAPTION_MODEL_TYPES, method

IA3_NAMES = ("k_proj", "v_proj", "qkv_proj", "down_proj")  # the IA3 paper's keys, values and FFN output
IA3_FEEDFORWARD = ("down_proj",)


def _linear_names(model) -> set[str]:
    import torch

    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}


def _norm_names(model) -> list[str]:
    return sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if n and "norm" in type(m).__name__.lower() and not any(True for _ in m.children())
        }
    )


def _targets(cfg: Config, model, fallback):
    targets = cfg.adapter.target_modules
    if targets != ["all-linear"]:
        return list(targets)
    return fallback(model)


def peft_config(cfg: Config, model, folder):
    """The peft config of cfg.adapter.method (not lora/dora) for `model`, loaded from `folder`."""
    import peft
    from peft.utils import constants

    a, name = cfg.adapter, cfg.adapter.method
    model_type = str(getattr(model.config, "model_type", ""))
    linear = lambda m: "all-linear"  # noqa: E731
    if name == "ia3":
        known = constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
        targets = _targets(cfg, model, lambda m: known or sorted(_linear_names(m) & set(IA3_NAMES)))
        feedforward = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type)
        if a.target_modules != ["all-linear"] or not known:
            feedforward = [t for t in targets if t in IA3_FEEDFORWARD]
        return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")
    if name in ("loha", "lokr"):
        return {"loha": peft.LoHaConfig, "lokr": peft.LoKrConfig}[name](
            r=a.r,
            alpha=a.alpha,
            module_dropout=a.dropout,
            target_modules=_targets(cfg, model, linear),
            task_type="CAUSAL_LM",
        )
    if name == "oft":
        return peft.OFTConfig(
            r=0,
            oft_block_size=a.oft_block_size,
            module_dropout=a.dropout,
            target_modules=_targets(cfg, model, linear),
            task_type="CAUSAL_LM",
        )
    if name == "vera":
        return peft.VeraConfig(
            r=a.r,
            vera_dropout=a.dropout,
            target_modules=_targets(cfg, model, linear),
            projection_prng_key=cfg.train.seed,
            save_projection=True,
            task_type="CAUSAL_LM",
        )
    if name == "ln_tuning":
        known = constants.TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING.get(model_type)
        return peft.LNTuningConfig(
            target_modules=_targets(cfg, model, lambda m: known or _norm_names(m)), task_type="CAUSAL_LM"
        )
    if name == "prompt_tuning":
        init = dict(prompt_tuning_init="SAMPLE_VOCAB")
        if a.init_text:
            init = dict(
                prompt_tuning_init="TEXT", prompt_tuning_init_text=a.init_text, tokenizer_name_or_path=str(folder)
            )
        return peft.PromptTuningConfig(num_virtual_tokens=a.virtual_tokens, task_type="CAUSAL_LM", **init)
    if name == "p_tuning":
        hidden = a.encoder_hidden or model.config.get_text_config().hidden_size
        return peft.PromptEncoderConfig(
            num_virtual_tokens=a.virtual_tokens, encoder_hidden_size=hidden, task_type="CAUSAL_LM"
        )
    if name == "prefix_tuning":
        return peft.PrefixTuningConfig(num_virtual_tokens=a.virtual_tokens, task_type="CAUSAL_LM")
    if name == "llama_adapter":
        if model_type not in ADAPTION_MODEL_TYPES:
            raise ModelSourceError(
                f"LLaMA-Adapter (adapter.method llama_adapter) runs on {' and '.join(ADAPTION_MODEL_TYPES)} "
                f"models only; this base is a {model_type!r} model",
                hint="use another method (prompt_tuning is the nearest that exports), or a llama/mistral base",
                title="method not available for this model",
            )
        layers = min(a.adapter_layers, model.config.num_hidden_layers)
        return peft.AdaptionPromptConfig(adapter_len=a.virtual_tokens, adapter_layers=layers, task_type="CAUSAL_LM")
    raise ValueError(f"no peft config for method {name!r}")  # a bug: lora/dora/freeze are handled elsewhere


def describe(cfg: Config) -> str:
    """One line for the log: the method and the settings it uses."""
    a, m = cfg.adapter, method(cfg.adapter.method)
    if m.lora_family or m.name in ("loha", "lokr"):
        return f"{m.title} rank {a.r}, alpha {a.alpha:g}"
    if m.name == "vera":
        return f"{m.title} rank {a.r}"
    if m.name == "oft":
        return f"{m.title} block size {a.oft_block_size}"
    if m.kind in ("virtual", "prefix", "adaption"):
        return f"{m.title}, {a.virtual_tokens} virtual tokens"
    if m.kind == "freeze":
        return f"{m.title}: {', '.join(a.freeze_modules)}"
    return m.title
