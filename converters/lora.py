"""A peft LoRA adapter as a llama.cpp LoRA GGUF (general.type = adapter).

Tensors are `<base GGUF tensor name>.lora_a` ([r, in] in numpy, ggml [in, r]) and `.lora_b`
([out, r], ggml [r, out]). llama.cpp scales by alpha / r; rsLoRA's alpha / sqrt(r) is folded into the
alpha written. The base architecture's transforms apply: llama's q/k row permutation acts on the
rows of B (the output side); Qwen3.5's value-head reordering acts on B's rows and on out_proj's A columns.

Run as:  localtune export RUN_DIR --adapter
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from localtune.converters import gemma4, qwen35
from localtune.converters.gguf_file import ConversionError, safe_output
from localtune.converters.hf_to_gguf import _permute_rows, arch_spec, read_config
from localtune.converters.moe import expert_lora
from localtune.model.checks import check_adapter, weight_shapes


def convert_adapter(
    adapter_dir: str | Path, base_dir: str | Path, out_path: str | Path, *, out_type: str = "f32"
) -> dict:
    import gguf
    import numpy as np
    from safetensors import safe_open

    adapter_dir, base_dir, out_path = Path(adapter_dir), Path(base_dir), Path(out_path)
    acfg = check_adapter(adapter_dir, weight_shapes(base_dir))
    if acfg.get("use_dora"):
        raise ConversionError(
            "DoRA adapters cannot be written as llama.cpp LoRA GGUF",
            hint="export the merged model instead (without --adapter)",
        )
    if acfg.get("rank_pattern") or acfg.get("alpha_pattern"):
        raise ConversionError(
            "per-module ranks or alphas are not representable in a LoRA GGUF",
            hint="export the merged model instead (without --adapter)",
        )
    cfg = read_config(base_dir)
    spec = arch_spec(cfg)
    r, alpha = int(acfg["r"]), float(acfg["lora_alpha"])
    if acfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # llama.cpp applies alpha / r; rsLoRA means alpha / sqrt(r)
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    weights = adapter_dir / "adapter_model.safetensors"
    pairs: dict[str, dict[str, np.ndarray]] = {}
    experts: dict[str, dict[str, np.ndarray]] = {}
    with safe_open(weights, framework="pt") as st:
        for key in st.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                raise ConversionError(
                    f"adapter tensor {key!r} is not a LoRA A/B matrix",
                    hint="adapters with trained embeddings or extra modules need the merged export",
                )
            module = key.split(".lora_")[0].removeprefix("base_model.model.").replace("model.language_model.", "model.")
            if spec.gguf_arch == "gemma4" and module.endswith(gemma4.NO_LORA):
                raise ConversionError(
                    f"llama.cpp does not apply LoRA to Gemma 4's {module.rsplit('.', 1)[-1]}",
                    hint="export the merged model instead (without --adapter)",
                )
            if module.endswith((".mlp.experts", ".mlp.experts.base_layer")):  # peft ParamWrapper on stacked experts
                experts.setdefault(module, {})["a" if ".lora_A." in key else "b"] = st.get_tensor(key).float().numpy()
                continue
            gname = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if gname is None:
                raise ConversionError(f"adapter module {module!r} has no GGUF tensor in {spec.gguf_arch}")
            tensor = st.get_tensor(key).float()
            side = "a" if ".lora_A." in key else "b"
            if spec.gguf_arch == "qwen35":  # value heads reordered: B's rows / out_proj's A columns
                reorder = (qwen35.lora_b_transform if side == "b" else qwen35.lora_a_transform)(module, cfg)
                tensor = tensor if reorder is None else reorder(tensor)
            data = tensor.numpy()
            if side == "b" and spec.permute_qk and module.endswith("q_proj"):
                data = _permute_rows(data, heads)
            if side == "b" and spec.permute_qk and module.endswith("k_proj"):
                data = _permute_rows(data, kv_heads)
            pairs.setdefault(gname, {})[side] = data
    for module, ab in experts.items():
        for name, a, b in expert_lora(module, ab["a"], ab["b"], cfg, r):
            pairs[names.get_name(name, try_suffixes=(".weight",))] = {"a": a, "b": b}
    start = time.monotonic()
    dtype = {"f32": np.float32, "f16": np.float16}[out_type]
    n_weights = sum(m.size for ab in pairs.values() for m in ab.values())
    with safe_output(out_path, n_weights * np.dtype(dtype).itemsize) as tmp:
        w = gguf.GGUFWriter(tmp, arch=spec.gguf_arch)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name("localtune-adapter")
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for gname, ab in sorted(pairs.items()):
            if set(ab) != {"a", "b"}:
                raise ConversionError(f"adapter for {gname} lacks its {'B' if 'a' in ab else 'A'} matrix")
            w.add_tensor(gname + ".lora_a", ab["a"].astype(dtype))
            w.add_tensor(gname + ".lora_b", ab["b"].astype(dtype))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {
        "path": str(out_path),
        "tensors": 2 * len(pairs),
        "alpha": alpha,
        "rank": r,
        "seconds": time.monotonic() - start,
    }
