"""Freeze (sparse) fine-tuning: chosen parameters of the base itself train, everything else stays frozen.

`adapter.freeze_modules` names what trains:
- "norm": every normalisation layer's parameters (a module whose class or name contains "norm");
- "bias": every bias;
- "last:N": the top N decoder layers whole;
- anything else: a module-name pattern (fnmatch), matched against each module path and its ancestors, whole
  or as a dotted suffix ("mlp" is every MLP, "model.layers.3.self_attn.*" one layer's attention).

Under 4-bit loading the chosen linear layers are kept out of bitsandbytes' conversion
(`BitsAndBytesConfig(llm_int8_skip_modules=...)`, which transformers turns into `modules_to_not_convert`; its
patterns are regular expressions, so the exact module paths go in escaped). They load in the compute dtype;
where that is bf16/fp16 (a GPU), the trained parameters become fp32 master weights and their modules run in
fp32 between the rest (`full_precision_island`), so small updates do not round away. Norms, biases and
embeddings are never quantized anyway. There is no peft model: the
model itself, with `requires_grad` on the chosen parameters.

Saved adapter (RUN_DIR/adapter/): `trainable.safetensors` (the trained tensors, by parameter name) and
`freeze.json` (the method, the freeze_modules and each tensor's shape); never the 4-bit model.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

from localtune.errors import ModelSourceError
from localtune.model.checks import ModelFileError
from localtune.runs.layout import FREEZE_CONFIG

TRAINED_FILE = "trainable.safetensors"
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _layer(name: str) -> int | None:
    m = LAYER.search(name)
    return int(m.group(1)) if m else None


def _pattern_hits(path: str, pattern: str) -> bool:
    parts = path.split(".")
    for end in range(len(parts), 0, -1):  # the module and each of its ancestors
        prefix = ".".join(parts[:end])
        if fnmatch.fnmatchcase(prefix, pattern) or prefix.endswith("." + pattern):
            return True
    return False


def chosen_parameters(model, freeze_modules: list[str]) -> list[str]:
    """Names of `model`'s parameters that freeze tuning trains (works on a meta-device model too)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_layers = int(config.num_hidden_layers)
    modules = dict(model.named_modules())
    chosen, unmatched = [], []
    hits = dict.fromkeys(freeze_modules, False)
    for name, _p in model.named_parameters():
        path, _, leaf = name.rpartition(".")
        owner = modules.get(path)
        for spec in freeze_modules:
            if spec == "norm":
                hit = "norm" in type(owner).__name__.lower() or "norm" in path.rsplit(".", 1)[-1].lower()
            elif spec == "bias":
                hit = leaf == "bias"
            elif spec.startswith("last:"):
                layer = _layer(name)
                hit = layer is not None and layer >= n_layers - int(spec.split(":", 1)[1])
            else:
                hit = _pattern_hits(path, spec)
            if hit:
                hits[spec] = True
                chosen.append(name)
                break
    unmatched = [spec for spec, hit in hits.items() if not hit]
    if unmatched or not chosen:
        raise ModelSourceError(
            f"adapter.freeze_modules {unmatched or freeze_modules} match no parameter of this model",
            hint="use norm, bias, last:N or a module name such as mlp or self_attn.o_proj",
            title="nothing to train",
        )
    return chosen


def skip_modules(model, chosen: list[str]) -> list[str]:
    """`llm_int8_skip_modules` for a 4-bit load: the chosen linear layers and the output head (what
    transformers skips by default, which an explicit list replaces), as escaped exact paths."""
    import torch

    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = model.get_output_embeddings()
    heads = {n for n, m in model.named_modules() if m is head}
    owners = {name.rpartition(".")[0] for name in chosen}
    return sorted(re.escape(n) for n in (owners & linears) | heads)


def meta_model(folder: Path, trust_remote_code: bool = False):
    """The model's module layout without its weights (for choosing what stays out of the 4-bit load)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def make_trainable(model, freeze_modules: list[str]) -> list[str]:
    """Turn on requires_grad for the chosen parameters; refuses any that loaded in 4 bits (a name mismatch)."""
    chosen = chosen_parameters(model, freeze_modules)
    params = dict(model.named_parameters())
    packed = [n for n in chosen if type(params[n]).__name__ == "Params4bit"]
    if packed:
        raise ModelSourceError(
            f"{packed[0]} loaded in 4 bits although freeze tuning trains it",
            hint="report this with the model; meanwhile train with --no-quant",
            title="cannot train 4-bit weights",
        )
    modules = dict(model.named_modules())
    owners = {}
    for name in chosen:
        p = params[name]
        if p.dtype != torch_float32():  # bf16/fp16 compute: updates of lr ~1e-5 would round away
            p.data = p.data.float()
            owners[name.rpartition(".")[0]] = modules[name.rpartition(".")[0]]
        p.requires_grad_(True)
    for module in owners.values():
        full_precision_island(module)
    return chosen


def torch_float32():
    import torch

    return torch.float32


def full_precision_island(module) -> None:
    """Run `module` in fp32 (its trained parameters are fp32 master weights) between a compute-dtype model: its
    tensor inputs go in as fp32 and its output comes back in the dtype the first input had."""
    import torch

    def before(_module, args, kwargs):
        dtypes = [a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()]
        _module._localtune_dtype = dtypes[0] if dtypes else None
        cast = lambda a: a.float() if torch.is_tensor(a) and a.is_floating_point() else a  # noqa: E731
        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def after(_module, _args, _kwargs, output):
        dtype = getattr(_module, "_localtune_dtype", None)
        if dtype is None or not torch.is_tensor(output):
            return output
        return output.to(dtype)

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after, with_kwargs=True)


def write_adapter(model, folder: Path, freeze_modules: list[str]) -> None:
    """The trained tensors and a small description of them; not the (4-bit) model."""
    from safetensors.torch import save_file

    tensors = {k: p.detach().contiguous() for k, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(folder / TRAINED_FILE))
    info = {
        "method": "freeze",
        "freeze_modules": list(freeze_modules),
        "tensors": {
            k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in tensors.items()
        },
    }
    (folder / FREEZE_CONFIG).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def read_adapter(folder: Path) -> dict:
    """The trained tensors of a freeze adapter, checked against its description."""
    from safetensors.torch import load_file

    try:
        info = json.loads((folder / FREEZE_CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TRAINED_FILE))
    except (OSError, ValueError) as exc:
        raise ModelFileError(
            f"{folder} is not a readable freeze-tuning adapter ({exc})",
            hint="the adapter is incomplete: finish or re-run training",
        ) from None
    described = {k: v["shape"] for k, v in info.get("tensors", {}).items()}
    if described != {k: list(t.shape) for k, t in tensors.items()}:
        raise ModelFileError(
            f"{folder / TRAINED_FILE} does not hold the tensors {FREEZE_CONFIG} describes",
            hint="the adapter is damaged: re-run training",
        )
    return tensors
