"""Hugging Face folder -> GGUF, on the PyPI `gguf` package: metadata, tokenizer, streamed tensors.

Writes f32, f16, bf16 or q8_0 directly. Tensors are read one at a time from the safetensors files and
cast by torch from their own dtype; each is written by a writer thread while the next is cast, so
casting overlaps writing and peak memory stays about two tensors. The file is written under a temporary
name, synced, and only renamed once it validates (see `converters.gguf_file`).

Run as:  localtune export HF_DIR --quant f16
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from localtune.converters import gemma4, qwen35
from localtune.converters.architectures import ARCHITECTURES, NOT_TEXT_PREFIXES, ArchSpec
from localtune.converters.dense_variants import context_length, write_variant_hparams
from localtune.converters.gguf_file import ConversionError, safe_output
from localtune.converters.layer_patterns import write_layer_patterns
from localtune.converters.moe import MOE_ARCHS, expand_experts, write_moe_hparams
from localtune.converters.quants import expected_bytes
from localtune.converters.vocab import write_vocab
from localtune.faults import fault_point
from localtune.model.checks import check_model_folder

DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass
class ConvertReport:
    path: Path
    out_type: str
    tensors: int = 0
    bytes_written: int = 0
    seconds: float = 0.0  # everything: config, vocabulary, tensors, sync to disk, validation, rename
    data_seconds: float = 0.0  # reading, casting and writing the tensors: the part that grows with the model
    fallbacks: list[str] = field(default_factory=list)  # tensors stored in another type, and why
    vocab: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


def read_config(folder: Path) -> dict:
    """config.json (text_config merged), checked against the weights; conversion runs no model code."""
    return check_model_folder(folder, trust_remote_code=True)


def arch_spec(cfg: dict) -> ArchSpec:
    model_type = cfg.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ConversionError(
            f"cannot export a {model_type!r} model to GGUF",
            hint="supported architectures: " + ", ".join(sorted(ARCHITECTURES)),
            title="unsupported architecture",
        )
    spec = ARCHITECTURES[model_type]
    if spec.gguf_arch == "qwen35" and (why := qwen35.check(cfg)):
        raise ConversionError(f"cannot export this {model_type!r} model to GGUF: {why}", title="unsupported layout")
    return spec


def _rope(cfg: dict) -> dict:
    """Rope settings from transformers 5's rope_parameters (maybe per layer type) or legacy keys."""
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params:
        return {"full": params["full_attention"], "sliding": params.get("sliding_attention", {})}
    legacy = dict(cfg.get("rope_scaling") or {})
    legacy.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    return {"full": {**legacy, **params}, "sliding": {}}


def write_hparams(w, cfg: dict, spec: ArchSpec, notes: list[str] | None = None) -> list[tuple[str, object]]:
    """Write the architecture's keys; returns generated tensors (name, array), e.g. rope_freqs. Appends to
    `notes` what the GGUF represents only approximately."""
    notes = [] if notes is None else notes
    import numpy as np

    if spec.gguf_arch == "gemma4":  # per-layer-type head sizes, rope and KV sharing: its own keys
        return gemma4.write_hparams(w, cfg)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_context_length(context_length(cfg, spec.gguf_arch, spec.sliding_window))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    rope = _rope(cfg)
    full = rope["full"]
    w.add_rope_freq_base(float(full.get("rope_theta", 10000.0)))
    rotary = int(head_dim * full.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
    w.add_rope_dimension_count(rotary)
    generated = []
    kind = full.get("rope_type", full.get("type", "default"))
    if kind == "linear":
        w.add_rope_scaling_type(gguf_rope("LINEAR"))
        w.add_rope_scaling_factor(float(full["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf_rope("YARN"))
        w.add_rope_scaling_factor(float(full["factor"]))
        w.add_rope_scaling_orig_ctx_len(
            int(full.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 4096)))
        )
    elif kind == "llama3":  # per-dimension divisors as a tensor (what llama.cpp's llama expects)
        base, factor = float(full.get("rope_theta", 10000.0)), float(full["factor"])
        low, high = float(full.get("low_freq_factor", 1.0)), float(full.get("high_freq_factor", 4.0))
        old_ctx = float(full.get("original_max_position_embeddings", 8192))
        freqs = 1.0 / (base ** (np.arange(0, rotary, 2, dtype=np.float64) / rotary))
        low_wl, high_wl = old_ctx / low, old_ctx / high
        out = []
        for f in freqs:
            wavelen = 2 * math.pi / f
            if wavelen < high_wl:
                out.append(1.0)
            elif wavelen > low_wl:
                out.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                out.append(1 / ((1 - smooth) / factor + smooth))
        generated.append(("rope_freqs.weight", np.array(out, dtype=np.float32)))
    if spec.gguf_arch == "llama":
        w.add_vocab_size(cfg["vocab_size"])
    write_variant_hparams(w, cfg, spec.gguf_arch, full)
    if spec.softcapping:
        if cfg.get("attn_logit_softcapping") is not None:
            w.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
        if cfg.get("final_logit_softcapping") is not None:
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    if spec.sliding_window and cfg.get("sliding_window"):
        w.add_sliding_window(int(cfg["sliding_window"]))
        if rope["sliding"].get("rope_theta"):
            w.add_rope_freq_base_swa(float(rope["sliding"]["rope_theta"]))
    if spec.gguf_arch in MOE_ARCHS:
        notes.extend(write_moe_hparams(w, cfg, spec.gguf_arch))
    if spec.gguf_arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(
            int(cfg.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 4096)))
        )
        if cfg.get("sliding_window"):
            w.add_sliding_window(int(cfg["sliding_window"]))
    write_layer_patterns(w, cfg, spec.gguf_arch, rope)  # smollm3 NoPE / olmo2-3 sliding layers
    if spec.gguf_arch == "qwen35":
        qwen35.write_hparams(w, cfg)
    return generated


def gguf_rope(name: str):
    import gguf

    return getattr(gguf.RopeScalingType, name)


def _safetensors(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConversionError(
            f"{folder} holds no .safetensors weights",
            hint="save the model with save_pretrained (safetensors is the default)",
        )
    return files


def iter_hf_tensors(folder: Path) -> Iterator[tuple[str, Callable, list[int]]]:
    """(name, loader, shape) for every tensor; the loader reads that one tensor when called."""
    from safetensors import safe_open

    for f in _safetensors(folder):
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                yield name, (lambda f=f, name=name: _load(f, name)), st.get_slice(name).get_shape()


def _load(path: Path, name: str):
    """One tensor as torch stores it in the file (its own dtype: no float32 copy of a 16-bit weight)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as st:
        return st.get_tensor(name)


def _permute_rows(w, n_head: int):
    """HF rotate-half rows -> llama.cpp adjacent-pair rows, per head (numpy array or torch tensor)."""
    shape = tuple(w.shape)
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def stored_bytes(data, transforms: list[Callable], qtype):
    """The array the GGUF holds for one tensor: `data` (torch tensor) cast to its storage type, transformed.

    Float types are cast by torch straight from the file's dtype (vectorised, and a bf16 weight never
    takes a float32 detour), and the transforms run after the cast: the q/k permutes only move values,
    and the one arithmetic transform (Gemma's norm + 1) touches norms, which are always stored F32.
    Torch rounds to nearest even like ggml; BF16 goes to the writer as raw bytes. Q8_0 tensors are
    permuted in the file's dtype and quantized by `q8_0_blocks`."""
    import gguf
    import torch

    T = gguf.GGMLQuantizationType
    torch_type = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}.get(qtype)
    if torch_type is None and qtype != T.Q8_0:
        raise ValueError(f"the converter does not write {qtype.name}; llama.cpp's quantizer does")
    if torch_type is not None:
        data = data.to(torch_type)
    for t in transforms:
        data = t(data)
    data = data.contiguous()
    if qtype == T.Q8_0:
        return q8_0_blocks(data)
    return data.view(torch.uint8).numpy() if qtype == T.BF16 else data.numpy()


def q8_0_blocks(w):
    """GGML's Q8_0 of a tensor whose last dimension is a multiple of 32, as uint8 rows: per block of 32
    values, the scale d = max|x| / 127 as f16, then round(x / d) as int8, halves rounded away from zero
    (ggml's roundf). The float32 arithmetic follows gguf.quants.Q8_0 step by step, so the bytes are
    equal. It runs on ~2 MB of float32 at a time: in one pass over a large tensor its temporaries made it
    slower than gguf's numpy code; in cache-sized pieces it is 5-8x faster."""
    import numpy as np
    import torch

    rows = w.reshape(-1, w.shape[-1])
    out = np.empty((rows.shape[0], rows.shape[1] // 32 * 34), dtype=np.uint8)
    step = max(1, (1 << 19) // rows.shape[1])
    for i in range(0, rows.shape[0], step):
        blocks = rows[i : i + step].float().reshape(-1, 32)
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        scaled = blocks * inverse
        magnitude = scaled.abs()
        whole = magnitude.floor()
        q = torch.copysign(whole + (2 * (magnitude - whole)).floor(), scaled).to(torch.int8)
        out[i : i + step] = (
            torch.cat([d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)], dim=1)
            .reshape(-1, out.shape[1])
            .numpy()
        )
    return out.reshape(*w.shape[:-1], out.shape[1])


def tensor_plan(folder: Path, cfg: dict, spec: ArchSpec, notes: list[str] | None = None):
    """[(gguf name, shape, loader, transforms)] in file order, skipping what llama.cpp does not use (a
    multimodal checkpoint's vision part, said in `notes`). Raises ConversionError for a tensor that has no
    GGUF name."""
    import gguf

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == spec.gguf_arch)
    names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    plan, dropped_vision = [], 0
    tensors = iter_hf_tensors(folder)
    for hf_name, loader, shape in expand_experts(tensors, cfg) if spec.gguf_arch in MOE_ARCHS else tensors:
        name = hf_name.removeprefix("language_model.").replace("model.language_model.", "model.")
        if name.endswith(("rotary_emb.inv_freq", "attention.masked_bias")):
            continue
        if name.startswith(NOT_TEXT_PREFIXES):  # a multimodal checkpoint: the GGUF is its text model
            dropped_vision += 1
            continue
        if spec.drop_lm_head and name.startswith("lm_head."):
            continue
        transforms = []
        if spec.gguf_arch == "gemma4":
            name = gemma4.hf_name(name)
        if spec.gguf_arch == "qwen35":
            if qwen35.skip(name):
                continue
            name, shape, transforms = qwen35.tensor(name, list(shape), cfg)
        gname = (gemma4.direct_name(name) if spec.gguf_arch == "gemma4" else None) or names.get_name(
            name, try_suffixes=(".weight", ".bias")
        )
        if gname is None:
            raise ConversionError(
                f"tensor {hf_name!r} has no GGUF name for {spec.gguf_arch}",
                hint="this checkpoint has parts the exporter does not know",
            )
        if spec.permute_qk and (name.endswith("q_proj.weight") or name.endswith("q_proj.bias")):
            transforms.append(lambda w: _permute_rows(w, heads))
        if spec.permute_qk and (name.endswith("k_proj.weight") or name.endswith("k_proj.bias")):
            transforms.append(lambda w: _permute_rows(w, kv_heads))
        if spec.norm_plus_one and name.endswith("norm.weight"):
            transforms.append(lambda w: w + 1.0)
        plan.append((gname, list(shape), loader, transforms))
    if dropped_vision and notes is not None:
        notes.append(
            f"vision tower, audio tower and projector tensors ({dropped_vision}) left out: this GGUF is the text "
            "model only "
            "(llama.cpp reads images through a separate mmproj file, which localtune does not write)"
        )
    if spec.output_required and not any(g == "output.weight" for g, *_ in plan):  # tied: write the copy
        plan += [("output.weight", shape, loader, []) for g, shape, loader, _tf in plan if g == "token_embd.weight"]
    return plan


def storage_type(gname: str, shape: list[int], out_type: str):
    """The GGML type a tensor is stored in, and a fallback note when it cannot take out_type."""
    import gguf

    T = gguf.GGMLQuantizationType
    if (
        len(shape) <= 1
        or gname.endswith(("_norm.weight", ".bias", "ssm_conv1d.weight"))
        or gname == "rope_freqs.weight"
    ):
        return T.F32, None
    if ".ffn_gate_inp." in gname:  # MoE router: F32, as llama.cpp's converter and quantizer keep it
        return T.F32, None
    wanted = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[out_type]
    if wanted == T.Q8_0:
        block = gguf.GGML_QUANT_SIZES[T.Q8_0][0]
        if shape[-1] % block:
            return T.F16, f"{gname}: {shape[-1]} columns are not a multiple of {block}; stored as F16"
    return wanted, None


def _written(report: ConvertReport, index: int, nbytes: int, write, total: int, progress) -> None:
    """Wait for tensor `index`'s write (raising its error), then count it and report progress."""
    write.result()
    if index == total // 2:
        fault_point("gguf.tensors")  # half the tensor data written
    report.bytes_written += nbytes
    report.tensors += 1
    if progress:
        progress(index + 1, total)


def convert(
    folder: str | Path,
    out_path: str | Path,
    *,
    out_type: str = "f16",
    chat_template: str | None = None,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    extend=None,
) -> ConvertReport:
    """Convert a Hugging Face folder to one GGUF file of a direct type (f32, f16, bf16, q8_0).

    `extend` adds to the model what the folder does not hold (converters.soft_prompt.VirtualTokens): its
    `tensors(plan, cfg, spec)` returns the tensor plan to write, its `metadata(writer)` runs after the
    vocabulary keys are written."""
    import gguf
    import numpy as np
    import torch

    folder, out_path = Path(folder), Path(out_path)
    if out_type not in DIRECT_TYPES:
        raise ValueError(f"convert() writes {DIRECT_TYPES}; use converters.quantize for {out_type}")
    cfg = read_config(folder)
    spec = arch_spec(cfg)
    start = time.monotonic()
    report = ConvertReport(out_path, out_type)
    plan = tensor_plan(folder, cfg, spec, report.fallbacks)
    if extend is not None:
        plan = extend.tensors(plan, cfg, spec)
    n_weights = sum(math.prod(shape) for _name, shape, _loader, _transforms in plan)
    with safe_output(out_path, expected_bytes(n_weights, out_type)) as tmp:
        w = gguf.GGUFWriter(tmp, arch=spec.gguf_arch)
        w.add_type(gguf.GGUFType.MODEL)
        # A neutral name: llama.cpp special-cases names containing e.g. "phi3" (token attributes).
        w.add_name(name or "localtune-model")
        ftype = {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[out_type]
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        generated = write_hparams(w, cfg, spec, report.fallbacks)
        if spec.gguf_arch == "gemma4":
            report.vocab = gemma4.write_vocab(w, folder, cfg["vocab_size"], chat_template)
        else:
            report.vocab = write_vocab(w, folder, cfg["vocab_size"], chat_template, spec.add_space_prefix)
        if extend is not None:
            extend.metadata(w)
        entries = plan + [(g, list(arr.shape), (lambda arr=arr: torch.from_numpy(arr)), []) for g, arr in generated]
        types = []
        for gname, shape, _loader, _tf in entries:
            qtype, note = storage_type(gname, shape, out_type)
            if note:
                report.fallbacks.append(note)
            types.append(qtype)
            byte_shape = (
                gguf.quant_shape_to_byte_shape(shape, qtype)
                if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
                else shape
            )
            itemsize = {gguf.GGMLQuantizationType.F32: 4, gguf.GGMLQuantizationType.F16: 2}.get(qtype, 1)
            nbytes = int(np.prod(byte_shape)) * itemsize
            dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(
                qtype, np.uint8
            )
            quantized = dtype is np.uint8  # the writer takes quantized shapes in bytes per row
            w.add_tensor_info(
                gname,
                byte_shape if quantized else shape,
                np.dtype(dtype),
                nbytes,
                raw_dtype=qtype if quantized else None,
            )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        data_start = time.monotonic()
        # One tensor is written (a thread blocked in the kernel, often waiting on the disk) while the next is
        # read and cast: the two overlap and at most one finished tensor waits in memory.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gguf-write") as writer:
            in_flight = None
            for i, ((_gname, _shape, loader, tf), qtype) in enumerate(zip(entries, types)):
                out = stored_bytes(loader(), tf, qtype)
                if in_flight is not None:
                    _written(report, *in_flight, len(entries), progress)
                in_flight = (i, out.nbytes, writer.submit(w.write_tensor_data, out))
            if in_flight is not None:
                _written(report, *in_flight, len(entries), progress)
        w.close()
        report.data_seconds = time.monotonic() - data_start
    report.seconds = time.monotonic() - start
    return report
