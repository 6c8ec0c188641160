"""The prefix sidecar: a prefix-tuning adapter's learned keys and values, ready for llama.cpp's KV cache.

Prefix tuning has no GGUF form, so the export writes `prefix.safetensors` next to the base GGUF(s):

    keys    float32 [n_layer, n_tokens, n_head_kv * head_dim]   llama.cpp's row order (see below)
    values  float32 [n_layer, n_tokens, n_head_kv * head_dim]
    metadata (strings): format, method, architecture, n_layer, n_tokens, n_head_kv, head_dim,
                        ggufs (JSON list of {"name", "size", "head_sha256"} of the GGUFs it was written for)

What peft saves (`prompt_embeddings`, also with prefix_projection=True: the MLP's output is what is saved)
is [n_tokens, n_layer * 2 * n_head_kv * head_dim]; peft views it as [n_tokens, 2 * n_layer, n_head_kv,
head_dim], so along the last axis come layer 0's K, layer 0's V, layer 1's K, ... Both transformers and
llama.cpp cache K after RoPE, so the prefix goes in as it is, except that for the architectures whose q/k
rows the converter permutes (llama's adjacent-pair rope), each head of K gets the same permutation.

Run as: `python -m localtune.converters.prefix_sidecar ADAPTER_DIR BASE_FOLDER GGUF [GGUF ...] OUT`
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from localtune.converters.gguf_file import GGUFInfo, check_gguf
from localtune.errors import LocaltuneError
from localtune.files import atomic_path

SIDECAR_NAME = "prefix.safetensors"
FORMAT = "localtune-prefix/1"
METHOD = "prefix_tuning"
HEAD_BYTES = 1 << 20  # the GGUF's identity: its size and the SHA-256 of its first MiB (header + tensor table)


class PrefixError(LocaltuneError):
    exit_code = 2
    title = "cannot use this prefix"


@dataclass(frozen=True)
class Prefix:
    """Per-layer keys and values for positions 0..n_tokens-1, in llama.cpp's order (K permuted where needed)."""

    keys: object  # numpy float32 [n_layer, n_tokens, n_head_kv * head_dim]
    values: object
    architecture: str  # the GGUF's general.architecture
    n_head_kv: int
    head_dim: int
    ggufs: list[dict] = field(default_factory=list)  # identities of the GGUFs it was written for

    @property
    def n_layer(self) -> int:
        return int(self.keys.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.keys.shape[1])


def permute_heads(x, n_head: int):
    """HF rotate-half order -> llama.cpp adjacent pairs within each head, along the last axis (numpy).
    The same row permutation as converters.hf_to_gguf._permute_rows applies to q_proj/k_proj."""
    shape = x.shape
    d = shape[-1] // n_head
    return x.reshape(*shape[:-1], n_head, 2, d // 2).swapaxes(-1, -2).reshape(shape)


def split_prompt_embeddings(emb, n_layer: int, n_head_kv: int, head_dim: int, *, permute_k: bool):
    """peft's [n_tokens, n_layer * 2 * n_head_kv * head_dim] -> (keys, values), each [n_layer, n_tokens, kv]."""
    import numpy as np

    emb = np.asarray(emb, dtype=np.float32)
    kv = n_head_kv * head_dim
    if emb.ndim != 2 or emb.shape[1] != n_layer * 2 * kv:
        raise PrefixError(
            f"prompt_embeddings has shape {tuple(emb.shape)}, expected [n_tokens, {n_layer} * 2 * {kv}]",
            hint="the adapter was trained on a different base model",
        )
    pairs = emb.reshape(emb.shape[0], n_layer, 2, kv).transpose(1, 2, 0, 3)  # [layer, k|v, token, kv]
    keys, values = np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1])
    if permute_k:
        keys = np.ascontiguousarray(permute_heads(keys, n_head_kv))
    return keys, values


def prefix_from_peft(adapter_dir: str | os.PathLike, base_config: dict) -> Prefix:
    """Read a peft PREFIX_TUNING adapter folder; `base_config` is the base model's config.json (text part)."""
    from safetensors.numpy import load_file

    from localtune.converters.hf_to_gguf import arch_spec

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "PREFIX_TUNING":
        raise PrefixError(f"{adapter_dir} holds a {cfg.get('peft_type')!r} adapter, not prefix tuning")
    if cfg.get("num_transformer_submodules", 1) != 1:
        raise PrefixError(f"{adapter_dir}: an encoder-decoder prefix; only decoder-only models are supported")
    n_layer, n_head_kv = int(cfg["num_layers"]), int(cfg["num_attention_heads"])
    head_dim = int(cfg["token_dim"]) // n_head_kv
    heads_kv = base_config.get("num_key_value_heads") or base_config["num_attention_heads"]
    want = (base_config["num_hidden_layers"], heads_kv, _head_dim(base_config))
    if (n_layer, n_head_kv, head_dim) != want:
        raise PrefixError(
            f"{adapter_dir}: the prefix is for {n_layer} layers x {n_head_kv} KV heads x {head_dim}, the base model "
            f"has {want[0]} x {want[1]} x {want[2]}",
            hint="export the prefix with the base model it was trained on",
        )
    emb = load_file(str(adapter_dir / "adapter_model.safetensors"))["prompt_embeddings"]
    spec = arch_spec(base_config)
    keys, values = split_prompt_embeddings(emb, n_layer, n_head_kv, head_dim, permute_k=spec.permute_qk)
    return Prefix(keys, values, spec.gguf_arch, n_head_kv, head_dim)


def _head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def gguf_identity(path: str | os.PathLike) -> dict:
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    return {"name": path.name, "size": path.stat().st_size, "head_sha256": hashlib.sha256(head).hexdigest()}


def write_sidecar(path: str | os.PathLike, prefix: Prefix, ggufs: list[str | os.PathLike]) -> Path:
    """Write `prefix` for the GGUF files `ggufs` (each is checked to fit first); atomic."""
    from safetensors.numpy import save_file

    if not ggufs:
        raise ValueError("write_sidecar needs the GGUF file(s) the prefix is for")
    identities = []
    for g in ggufs:
        check_shape(prefix, check_gguf(g))
        identities.append(gguf_identity(g))
    meta = {
        "format": FORMAT,
        "method": METHOD,
        "architecture": prefix.architecture,
        "n_layer": str(prefix.n_layer),
        "n_tokens": str(prefix.n_tokens),
        "n_head_kv": str(prefix.n_head_kv),
        "head_dim": str(prefix.head_dim),
        "ggufs": json.dumps(identities),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"keys": prefix.keys, "values": prefix.values}, str(tmp), metadata=meta)
    return path


def read_sidecar(path: str | os.PathLike) -> Prefix:
    """Read and check a sidecar written by `write_sidecar`. Raises PrefixError."""
    import numpy as np
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PrefixError(f"{path}: no such file", hint="export the run again to write the prefix")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise PrefixError(f"{path} is not a readable safetensors file: {exc}", hint="export the run again") from None
    if meta.get("format") != FORMAT or meta.get("method") != METHOD:
        raise PrefixError(f"{path} is not a {FORMAT} sidecar (format {meta.get('format')!r})")
    try:
        n_layer, n_tokens, n_head_kv, head_dim = (
            int(meta[k]) for k in ("n_layer", "n_tokens", "n_head_kv", "head_dim")
        )
        ggufs = json.loads(meta["ggufs"])
    except (KeyError, ValueError) as exc:
        raise PrefixError(f"{path}: damaged metadata ({exc})", hint="export the run again") from None
    shape = (n_layer, n_tokens, n_head_kv * head_dim)
    for name in ("keys", "values"):
        t = tensors.get(name)
        if t is None or t.dtype != np.float32 or t.shape != shape:
            got = None if t is None else (t.dtype.name, t.shape)
            raise PrefixError(
                f"{path}: tensor {name!r} is {got}, expected float32 {shape}", hint="export the run again"
            )
    return Prefix(tensors["keys"], tensors["values"], meta["architecture"], n_head_kv, head_dim, ggufs)


def gguf_kv_shape(info: GGUFInfo) -> tuple[str, int, int, int]:
    """(architecture, n_layer, n_head_kv, head_dim) of a GGUF, from its metadata."""
    md, arch = info.metadata, info.architecture
    n_head = md.get(f"{arch}.attention.head_count")
    n_head_kv = md.get(f"{arch}.attention.head_count_kv", n_head)
    key_length = md.get(f"{arch}.attention.key_length")
    if key_length is None and isinstance(n_head, int):
        key_length = md[f"{arch}.embedding_length"] // n_head
    if not all(isinstance(v, int) for v in (n_head_kv, key_length)):  # per-layer arrays (e.g. OpenELM)
        raise PrefixError(f"{info.path}: per-layer head counts; a prefix cannot be injected into this model")
    return arch, md[f"{arch}.block_count"], n_head_kv, key_length


def check_shape(prefix: Prefix, info: GGUFInfo) -> None:
    arch, n_layer, n_head_kv, head_dim = gguf_kv_shape(info)
    have = (prefix.architecture, prefix.n_layer, prefix.n_head_kv, prefix.head_dim)
    if have != (arch, n_layer, n_head_kv, head_dim):
        raise PrefixError(
            f"the prefix is for a {have[0]} model with {have[1]} layers x {have[2]} KV heads x {have[3]}; "
            f"{info.path.name} is {arch} with {n_layer} x {n_head_kv} x {head_dim}",
            hint="use the GGUF the prefix was exported with",
            title="prefix does not fit the model",
        )


def check_fits(prefix: Prefix, gguf_path: str | os.PathLike) -> None:
    """The prefix's shape matches the GGUF and the GGUF is one it was written for. Raises PrefixError."""
    check_shape(prefix, check_gguf(gguf_path))
    ident = gguf_identity(gguf_path)
    if not any(g.get("size") == ident["size"] and g.get("head_sha256") == ident["head_sha256"] for g in prefix.ggufs):
        names = ", ".join(g.get("name", "?") for g in prefix.ggufs) or "none"
        raise PrefixError(
            f"{Path(gguf_path).name} is not a GGUF this prefix was exported for (it was written for: {names})",
            hint="use the base GGUF from the same export folder; a prefix only fits the weights it was trained with",
            title="prefix does not fit the model",
        )


if __name__ == "__main__":
    import sys

    from localtune.converters.hf_to_gguf import read_config

    if len(sys.argv) < 5:
        sys.exit("usage: python -m localtune.converters.prefix_sidecar ADAPTER_DIR BASE_FOLDER GGUF [GGUF ...] OUT")
    adapter, base, *files, out = sys.argv[1:]
    print(write_sidecar(out, prefix_from_peft(adapter, read_config(Path(base))), files))
