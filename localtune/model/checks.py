"""What a Hugging Face model folder and a LoRA adapter must look like before anything loads them.

Every command that reads model files (train, merge, export, verify) checks them here first, in
bounded time and memory, so that a broken or hostile file gives a clear error instead of a crash,
a hang or a runaway allocation deep inside transformers:

- safetensors headers: the 8-byte length fits the file, the header is a JSON object, every tensor
  has a known dtype, a shape of non-negative integers and a byte range inside the file that matches
  its shape;
- config.json: JSON naming a model_type, sizes that are positive integers in sane ranges, heads
  that divide the width, and the weights agreeing with it (embedding rows, layer count);
- custom model code (an `auto_map` in config.json) is refused unless trust_remote_code is set;
- the tokenizer loads and has no token id the embedding lacks;
- an adapter's A/B matrices fit the base's weight shapes and the adapter's rank.

Weights are read only from safetensors (a folder with only pickled `.bin` weights is loaded by
transformers, whose loader uses torch's `weights_only` mode; nothing here unpickles).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from localtune.converters.architectures import SUPPORTED_ARCHITECTURES
from localtune.errors import LocaltuneError

MAX_HEADER_BYTES = 100 * 2**20  # real headers are a few hundred KB even for 400B-parameter models
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
# config.json sizes: (lowest, highest) a real decoder has; beyond them the file is broken or hostile
SIZE_LIMITS = {
    "hidden_size": (1, 65536),
    "intermediate_size": (1, 1 << 20),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "vocab_size": (1, 4 << 20),
    "head_dim": (1, 4096),
    "max_position_embeddings": (1, 1 << 24),
}
REQUIRED_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


class ModelFileError(LocaltuneError):
    title = "broken model files"


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, checked against the file's size; nothing else is read."""

    def bad(what: str) -> ModelFileError:
        return ModelFileError(
            f"{path} is not a valid safetensors file: {what}",
            hint="re-download or re-save the model (save_pretrained writes safetensors)",
        )

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"it has {size} bytes, fewer than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise bad(
                    f"the header claims {n} bytes but the file has {size}"
                    + (" (this looks like a GGUF file renamed)" if head[:4] == b"GGUF" else "")
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object")
    tensors: dict[str, TensorInfo] = {}
    data_bytes = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict):
            raise bad(f"tensor {name!r} has no description")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}")
        begin, end = offsets
        count = 1
        for d in shape:
            count *= d
        if not 0 <= begin <= end <= data_bytes:
            raise bad(f"tensor {name!r} lies at bytes {begin}..{end}, beyond the {data_bytes} bytes of data")
        if end - begin != count * DTYPE_BYTES[dtype]:
            raise bad(
                f"tensor {name!r} of shape {shape} {dtype} needs {count * DTYPE_BYTES[dtype]} bytes "
                f"but is given {end - begin}"
            )
        tensors[name] = TensorInfo(dtype, tuple(shape))
    return tensors


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def weight_shapes(folder: Path) -> dict[str, TensorInfo]:
    """Every tensor of the folder's safetensors files (headers only)."""
    shapes: dict[str, TensorInfo] = {}
    for f in weight_files(folder):
        shapes.update(read_safetensors_header(f))
    return shapes


def read_config(folder: Path, *, trust_remote_code: bool = False) -> dict:
    """config.json, checked for the values every decoder needs (text_config merged for multimodal ones)."""
    path = folder / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(
            f"{folder} has no config.json", hint="point at a complete Hugging Face model folder"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read {path} ({exc})") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", "?")
        raise ModelFileError(
            f"{path}:{line}: not valid JSON ({exc})", hint="re-download the model or fix the file"
        ) from None
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path}: the file holds a JSON {type(raw).__name__}, not an object")
    if raw.get("auto_map") and not trust_remote_code:
        classes = ", ".join(sorted(str(v) for v in raw["auto_map"].values()))[:200]
        raise ModelFileError(
            f"{folder} ships its own Python code (config.json auto_map: {classes}); localtune "
            "does not run code that comes with a model unless you ask it to",
            hint="if you trust the model's authors, pass --trust-remote-code (or set model.trust_remote_code: true)",
            title="model needs custom code",
        )
    cfg = {**raw, **(raw.get("text_config") or {})}
    if not isinstance(cfg.get("model_type"), str):
        raise ModelFileError(
            f"{path}: field model_type is missing or not a string ({cfg.get('model_type')!r})",
            hint="point at a complete Hugging Face model folder",
        )
    if cfg["model_type"] not in SUPPORTED_ARCHITECTURES:
        return cfg  # the caller names the unsupported architecture; its size fields are named differently
    problems = []
    for key, (low, high) in SIZE_LIMITS.items():
        value = cfg.get(key)
        if value is None and key not in REQUIRED_SIZES:
            continue
        if type(value) is not int or not low <= value <= high:
            problems.append(f"{key} = {value!r} (expected an integer from {low} to {high})")
    if not problems:
        heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        if heads % kv:
            problems.append(f"num_attention_heads = {heads} is not a multiple of num_key_value_heads = {kv}")
        if not cfg.get("head_dim") and cfg["hidden_size"] % heads:
            problems.append(f"hidden_size = {cfg['hidden_size']} is not a multiple of num_attention_heads = {heads}")
    if problems:
        raise ModelFileError(
            f"{path}: " + "; ".join(problems), hint="the file is damaged or not for this model: re-download it"
        )
    return cfg


def check_weights_match(folder: Path, cfg: dict, shapes: dict[str, TensorInfo]) -> None:
    """The embedding rows and the layer count in the weights agree with config.json."""
    if not shapes or cfg["model_type"] not in SUPPORTED_ARCHITECTURES:
        return
    embed = next((n for n in shapes if n.endswith("embed_tokens.weight")), None)
    if embed is not None:
        rows, width = (shapes[embed].shape + (0, 0))[:2]
        if (rows, width) != (cfg["vocab_size"], cfg["hidden_size"]):
            raise ModelFileError(
                f"{folder / 'config.json'} says vocab_size {cfg['vocab_size']} x hidden_size {cfg['hidden_size']}, "
                f"but the weights' {embed} is {rows} x {width}",
                hint="config.json and the weights come from different models: re-download the folder",
            )
    layers = {int(m.group(1)) for n in shapes if (m := re.search(r"(?:^|\.)model\.layers\.(\d+)\.", n))}
    if layers and max(layers) + 1 != cfg["num_hidden_layers"]:
        raise ModelFileError(
            f"{folder / 'config.json'} says num_hidden_layers {cfg['num_hidden_layers']}, but the weights hold "
            f"{max(layers) + 1} layers",
            hint="config.json and the weights come from different models",
        )


def check_model_folder(folder: Path, *, trust_remote_code: bool = False) -> dict:
    """config.json and the weight headers of a model folder, checked together; returns the config."""
    cfg = read_config(folder, trust_remote_code=trust_remote_code)
    check_weights_match(folder, cfg, weight_shapes(folder))
    return cfg


def load_tokenizer(folder: Path, vocab_size: int | None = None, *, trust_remote_code: bool = False):
    """The folder's tokenizer, refused if it is unreadable or has ids the model's embedding lacks."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for damaged tokenizer files
        files = ", ".join(sorted(p.name for p in folder.glob("tokenizer*"))) or "no tokenizer files"
        raise ModelFileError(
            f"cannot load the tokenizer of {folder} ({files}): {str(exc).splitlines()[0][:300]}",
            hint="re-download the tokenizer files of this model",
        ) from None
    if vocab_size:
        specials = {n: getattr(tok, f"{n}_token_id", None) for n in ("bos", "eos", "pad")}
        too_big = [f"{n} id {i}" for n, i in specials.items() if isinstance(i, int) and i >= vocab_size]
        if len(tok) > vocab_size or too_big:
            raise ModelFileError(
                f"the tokenizer in {folder} has {len(tok)} tokens"
                + (f" ({', '.join(too_big)})" if too_big else "")
                + f" but the model's embedding has {vocab_size} rows (config.json vocab_size); ids past the "
                "embedding would crash training",
                hint="the tokenizer files belong to another model: use this model's own tokenizer files",
            )
    return tok


def check_adapter(adapter_dir: Path, base_shapes: dict[str, TensorInfo]) -> dict:
    """The adapter's config, after checking every LoRA matrix against the base weight it adapts."""
    try:
        acfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        r = int(acfg.get("r") or 0)  # methods other than LoRA have no rank (or no LoRA matrices to check)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"{adapter_dir / 'adapter_config.json'} is not a readable peft adapter config ({exc})",
            hint="point at RUN_DIR/adapter, which training writes",
        ) from None
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelFileError(
            f"{adapter_dir} has no adapter_model.safetensors",
            hint="the adapter is incomplete: finish or re-run training",
        )
    ranks = acfg.get("rank_pattern") or {}
    for key, info in read_safetensors_header(weights).items():
        m = re.match(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.\w+)?\.weight$", key)
        if not m:
            continue
        module, side = m.groups()
        if module.endswith((".mlp.experts", ".mlp.experts.base_layer")):
            continue  # LoRA on stacked expert parameters (peft ParamWrapper): checked by converters/moe.py
        base = base_shapes.get(module + ".weight")
        if base is None:
            raise ModelFileError(
                f"{weights}: the adapter adapts {module}, which the base model does not have",
                hint="this adapter was trained on a different base model",
                title="adapter mismatch",
            )
        out_f, in_f = (base.shape + (0, 0))[:2]
        rank = next((int(v) for k, v in ranks.items() if module.endswith(k)), r)
        want = (rank, in_f) if side == "A" else (out_f, rank)
        if info.shape != want:
            raise ModelFileError(
                f"{weights}: {key} has shape {list(info.shape)}, but the base's {module} "
                f"({out_f} x {in_f}) with rank {rank} needs {list(want)}",
                hint="this adapter was trained on a different base model",
                title="adapter mismatch",
            )
    return acfg
