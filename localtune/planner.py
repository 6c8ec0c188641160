"""The memory planner: peak training memory from the architecture alone, before any weight loads.

Counts, per the QLoRA memory floor in performance.md:
- 4-bit NF4 + double-quant base linears: 4.127 bits (0.516 bytes) per parameter; 16-bit otherwise;
- embeddings and LM head in the compute dtype (16-bit on a GPU; the trainer does not up-cast them);
- LoRA: fp32 parameters and gradients plus the optimizer state (8-bit AdamW: 2 bytes, AdamW: 8);
- activations: with checkpointing, each layer's input is kept (L * d values per token) plus one
  layer's recomputed working set; without it, every layer's working set; with the checkpoints
  offloaded to CPU memory (activation_offload.py), only the inputs of the layer being computed;
- logits: the 16-bit logits, their fp32 copy for the loss, and its gradient, for every token;
- a transient dequantized copy of the largest 4-bit matrix.
Estimates are of the allocator's peak (torch.cuda.max_memory_allocated); the CUDA context
(about 0.5 GiB) comes on top and is reserved separately when recommending settings.

Run as:  localtune plan --model M [--data D] [--vram GB]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from localtune.train.speed.chunked_loss import chunk_tokens
from localtune.units import GIB, format_bytes  # noqa: F401 - format_bytes is part of the planner's API

NF4_BYTES = 4.127 / 8
CUDA_CONTEXT = int(0.5 * GIB)
# Values kept per token by one decoder layer's forward for its backward, in units of hidden width
# (norms, residuals, attention in/out, LoRA inputs) and of FFN width (gate, up, activation, product).
ACT_PER_HIDDEN = 12
ACT_PER_FFN = 4
DELTA_NET_CHUNK = 64  # tokens per chunk of transformers' (and flash-linear-attention's) chunked delta rule


@dataclass(frozen=True)
class Shape:
    """The parts of a decoder's configuration that memory depends on."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    # mixture of experts: every expert is resident and 16-bit (bitsandbytes quantizes nn.Linear only), each
    # token runs `experts_used` of them; with all-linear, each expert gets its own LoRA (peft target_parameters)
    experts: int = 0
    expert_ffn: int = 0
    experts_used: int = 0
    # layers that differ (Gemma 4): each layer's (name, in, out) linears, and linears outside the layers
    per_layer: tuple[tuple[tuple[str, int, int], ...], ...] = ()
    model_linears: tuple[tuple[str, int, int], ...] = ()
    extra_embedding: int = 0  # embedding parameters besides the token table (Gemma 4's per-layer inputs)
    expert_weights: int = 0  # Gemma 4 MoE's expert parameters (3-D tensors: kept 16-bit by 4-bit loading)
    # hybrid models: how many of `layers` are gated-delta-net linear attention, and its head layout
    linear_layers: int = 0
    linear_k_heads: int = 0
    linear_v_heads: int = 0
    linear_k_dim: int = 0
    linear_v_dim: int = 0
    attn_gate: bool = False  # q_proj also yields a per-head output gate (Qwen3.5): twice the rows

    @classmethod
    def from_config(cls, config) -> Shape:
        text = getattr(config, "text_config", None) or config
        if str(getattr(text, "model_type", "")).startswith("gemma4"):
            return _gemma4_shape(text)
        heads = text.num_attention_heads
        types = list(getattr(text, "layer_types", None) or [])
        return cls(
            layers=text.num_hidden_layers,
            hidden=text.hidden_size,
            ffn=text.intermediate_size,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            tied=bool(getattr(text, "tie_word_embeddings", False)),
            **_experts(text),
            linear_layers=types.count("linear_attention"),
            linear_k_heads=getattr(text, "linear_num_key_heads", 0) or 0,
            linear_v_heads=getattr(text, "linear_num_value_heads", 0) or 0,
            linear_k_dim=getattr(text, "linear_key_head_dim", 0) or 0,
            linear_v_dim=getattr(text, "linear_value_head_dim", 0) or 0,
            attn_gate=str(getattr(text, "model_type", "")).startswith("qwen3_5"),
        )

    def expert_linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of one expert's projections, and the router; {} for a dense model."""
        if not self.experts:
            return {}
        d, f = self.hidden, self.expert_ffn
        return {"gate_up_proj": (d, 2 * f), "down_proj": (f, d)}

    def expert_params(self) -> int:
        """All layers' expert weights (all experts) plus the routers: never 4-bit."""
        return self.layers * (self.experts * sum(i * o for i, o in self.expert_linears().values()))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one decoder block."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = {
            "q_proj": (d, 2 * q if self.attn_gate else q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
        }
        if self.experts:  # the MLP is the experts (expert_linears), outside the quantized linears
            return attention
        return {**attention, "gate_proj": (d, self.ffn), "up_proj": (d, self.ffn), "down_proj": (self.ffn, d)}

    def linear_attention_linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one gated-delta-net (linear attention) block."""
        d, key, value = self.hidden, self.linear_k_heads * self.linear_k_dim, self.linear_v_heads * self.linear_v_dim
        mlp = {k: v for k, v in self.linears().items() if k in ("gate_proj", "up_proj", "down_proj")}
        return {
            "in_proj_qkv": (d, 2 * key + value),
            "in_proj_z": (d, value),
            "in_proj_b": (d, self.linear_v_heads),
            "in_proj_a": (d, self.linear_v_heads),
            "out_proj": (value, d),
            **mlp,
        }

    def blocks(self) -> list[dict[str, tuple[int, int]]]:
        """(in, out) of each linear layer, decoder block by decoder block."""
        if self.per_layer:
            return [{n: (i, o) for n, i, o in layer} for layer in self.per_layer]
        attention = [self.linears()] * (self.layers - self.linear_layers)
        return attention + [self.linear_attention_linears()] * self.linear_layers

    def linear_params(self) -> int:
        """Every projection weight, experts and routers included (the model's size)."""
        if self.per_layer:  # Gemma 4: its router is among the block's linears
            blocks = sum(i * o for b in self.blocks() for i, o in b.values())
            return blocks + sum(i * o for _n, i, o in self.model_linears) + self.expert_weights
        blocks = sum(i * o for b in self.blocks() for i, o in b.values())
        return blocks + self.expert_params() + self.router_params()

    def router_params(self) -> int:
        return self.layers * self.hidden * self.experts

    def active_ffn(self) -> int:
        """FFN width one token runs through: the dense FFN, or its routed experts'."""
        return self.experts_used * self.expert_ffn if self.experts else self.ffn

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.extra_embedding

    def freeze_params(self, freeze_modules: list[str]) -> int:
        """Parameters freeze tuning trains (model/freeze.py): norms (two per layer and the final one), biases
        (at most one per linear output), the top N layers whole, or the linears a name pattern picks."""
        import fnmatch

        blocks, total = self.blocks(), 0
        whole = max([int(s.split(":", 1)[1]) for s in freeze_modules if s.startswith("last:")] or [0])
        for spec in freeze_modules:
            if spec == "norm":  # those of the layers trained whole are counted with them
                total += (2 * max(0, self.layers - whole) + 1) * self.hidden
            elif spec == "bias":
                total += sum(o for b in blocks for _i, o in b.values())
            elif spec.startswith("last:"):
                top = blocks[max(0, len(blocks) - int(spec.split(":", 1)[1])) :]
                total += sum(i * o for b in top for i, o in b.values()) + 2 * self.hidden * len(top)
                total += self.experts * sum(i * o for i, o in self.expert_linears().values()) * len(top)
            else:
                leaf = spec.rsplit(".", 1)[-1]
                groups = {"mlp": ("gate", "up", "down", "fc"), "self_attn": ("q_", "k_", "v_", "o_", "qkv")}
                for b in blocks:
                    total += sum(
                        i * o
                        for k, (i, o) in b.items()
                        if fnmatch.fnmatchcase(k, leaf) or k.startswith(groups.get(leaf, ("\0",)))
                    )
        return total

    def lora_params(self, rank: int, targets: list[str] | None = None) -> int:
        if self.per_layer:  # model-level linears only when named (training leaves them out of all-linear)
            every = not targets or targets == ["all-linear"]
            chosen = [i + o for b in self.blocks() for k, (i, o) in b.items() if every or k in targets]
            chosen += [i + o for k, i, o in self.model_linears if targets and k in targets]
            return rank * sum(chosen)
        every = not targets or targets == ["all-linear"]
        lora = rank * sum(i + o for b in self.blocks() for k, (i, o) in b.items() if every or k in targets)
        if not targets or targets == ["all-linear"]:  # one A and B per expert (localtune.model.loading)
            lora += self.layers * self.experts * sum(rank * (i + o) for i, o in self.expert_linears().values())
        return lora

    def adapter_params(
        self,
        method: str,
        rank: int,
        targets: list[str] | None = None,
        virtual_tokens: int = 20,
        adapter_layers: int = 8,
        block: int = 32,
        freeze_modules: list[str] | None = None,
    ) -> int:
        """Trainable parameters of an adapter method (localtune/methods.py), from the shape alone."""
        kv = self.kv_heads * self.head_dim
        linears = [
            io for b in self.blocks() for k, io in b.items() if not targets or targets == ["all-linear"] or k in targets
        ]
        if method == "dora":
            return self.lora_params(rank, targets) + sum(o for _i, o in linears)
        if method == "loha":
            return 2 * self.lora_params(rank, targets)
        if method == "lokr":  # a small full Kronecker factor and a low-rank one: about a quarter of LoRA's
            return self.lora_params(rank, targets) // 4
        if method == "ia3":
            return self.layers * (2 * kv + self.ffn)
        if method == "oft":  # in/block skew-symmetric blocks per linear, block*(block-1)/2 parameters each
            return sum(i for i, _o in linears) * (block - 1) // 2
        if method == "vera":
            return sum(rank + o for _i, o in linears)
        if method == "ln_tuning":
            return (2 * self.layers + 1) * self.hidden
        if method == "prompt_tuning":
            return virtual_tokens * self.hidden
        if method == "p_tuning":  # the encoder: an MLP of the hidden width, plus its input embedding
            return virtual_tokens * self.hidden + 3 * self.hidden * self.hidden
        if method == "prefix_tuning":
            return virtual_tokens * self.layers * 2 * kv
        if method == "llama_adapter":  # the prompts and one zero-initialised gate per adapted layer
            return min(adapter_layers, self.layers) * (virtual_tokens * self.hidden + 1)
        if method == "freeze":
            return self.freeze_params(freeze_modules or ["norm"])
        return self.lora_params(rank, targets)

    def recurrent_acts(self, tokens: int, rows: int, weight_bytes: int) -> int:
        """Bytes one gated-delta-net layer adds to its working set: the conv/gate activations in the compute
        dtype, the delta rule's fp32 inputs and per-chunk [heads, 64, 64] matrices, and the recurrent state
        [heads, k_dim, v_dim] after every chunk (fixed size per chunk, unlike attention's growing scores)."""
        h, dk, dv = self.linear_v_heads, self.linear_k_dim, self.linear_v_dim
        conv = 2 * self.linear_k_heads * dk + h * dv
        per_token = (3 * conv + 3 * h * dv) * weight_bytes + 4 * (
            h * (2 * dk + 3 * dv) + h * (3 * DELTA_NET_CHUNK + dk)
        )
        chunks = -(-tokens // DELTA_NET_CHUNK) + rows  # every row (or packed segment) starts a chunk
        return tokens * per_token + chunks * 4 * h * dk * dv


def _experts(text) -> dict:
    """Shape's expert fields from a config: Qwen3-MoE (num_experts, moe_intermediate_size) or gpt-oss
    (num_local_experts, intermediate_size)."""
    n = getattr(text, "num_experts", None) or getattr(text, "num_local_experts", None) or 0
    if not n:
        return {}
    ffn = getattr(text, "moe_intermediate_size", None) or text.intermediate_size
    return {"experts": n, "expert_ffn": ffn, "experts_used": text.num_experts_per_tok}


def _gemma4_shape(text) -> Shape:
    """Gemma 4 text: full-attention layers with wider heads (and maybe K reused as V), KV-sharing layers
    without k/v projections (and maybe double-wide MLPs), and per-layer input embeddings (E2B/E4B: a
    [vocab, layers * 256] table, gates and projections in every layer, one model-level projection)."""
    n, d, heads = text.num_hidden_layers, text.hidden_size, text.num_attention_heads
    modes, ple = text.kv_sharing_modes, text.hidden_size_per_layer_input or 0
    layers, ffn_max = [], 0
    for i, kind in enumerate(text.layer_types):
        layer = text.per_layer_config[i]
        hd, kv = layer.head_dim, layer.num_key_value_heads
        ffn = text.intermediate_size * (2 if text.use_double_wide_mlp and modes[i] == "reuse" else 1)
        ffn_max = max(ffn_max, ffn)
        lin = [("q_proj", d, heads * hd), ("o_proj", heads * hd, d)]
        if modes[i] != "reuse":
            lin.append(("k_proj", d, kv * hd))
            if not (text.attention_k_eq_v and kind == "full_attention"):
                lin.append(("v_proj", d, kv * hd))
        lin += [("gate_proj", d, ffn), ("up_proj", d, ffn), ("down_proj", ffn, d)]
        if ple:
            lin += [("per_layer_input_gate", d, ple), ("per_layer_projection", ple, d)]
        if text.enable_moe_block:
            lin.append(("proj", d, text.num_experts))  # the router
        layers.append(tuple(lin))
    sliding = next((i for i, k in enumerate(text.layer_types) if k == "sliding_attention"), 0)
    return Shape(
        layers=n,
        hidden=d,
        ffn=ffn_max,
        heads=heads,
        kv_heads=text.per_layer_config[sliding].num_key_value_heads,
        head_dim=text.per_layer_config[sliding].head_dim,
        vocab=text.vocab_size,
        tied=bool(text.tie_word_embeddings),
        per_layer=tuple(layers),
        model_linears=(("per_layer_model_projection", d, n * ple),) if ple else (),
        extra_embedding=text.vocab_size_per_layer_input * n * ple,
        expert_weights=n * text.num_experts * 3 * d * text.moe_intermediate_size if text.enable_moe_block else 0,
    )


@dataclass
class Plan:
    micro_batch: int
    seq_len: int
    rank: int
    checkpointing: bool
    quantized: bool
    offload: bool = False
    parts: dict[str, int] = field(default_factory=dict)  # bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def estimate(
    shape: Shape,
    *,
    micro_batch: int,
    seq_len: int,
    rank: int,
    targets: list[str] | None = None,
    quantized: bool = True,
    checkpointing: bool = True,
    optimizer: str = "paged_adamw_8bit",
    weight_bytes: int = 2,
    offload: bool = False,
    method: str = "lora",
    virtual_tokens: int = 20,
    freeze_modules: list[str] | None = None,
) -> Plan:
    """Peak allocator memory in bytes, by part. weight_bytes: 2 on a GPU (bf16/fp16), 4 on the CPU.
    offload: the checkpointed layer inputs live in CPU memory (needs checkpointing). method: the adapter
    method (its trainable parameters; virtual tokens lengthen every row; prefix tuning never checkpoints)."""
    from localtune.methods import method as method_of

    chosen = method_of(method)
    checkpointing = checkpointing and chosen.checkpointing
    tokens = micro_batch * (seq_len + (virtual_tokens if chosen.kind in ("virtual", "prefix") else 0))
    lora = shape.adapter_params(method, rank, targets, virtual_tokens, freeze_modules=freeze_modules)
    opt_bytes = 2 if "8bit" in optimizer else 8
    # freeze tuning's trained weights are the base's own, in the compute dtype (bf16 weight + grad + 8-bit
    # Adam: ~6 bytes a parameter on a GPU; fp32 + AdamW: 16 on the CPU), and its chosen linears are not 4-bit
    trained_bytes = weight_bytes if chosen.kind == "freeze" else 4
    kind = "fp32" if trained_bytes == 4 else "16-bit"
    layer_acts = tokens * (ACT_PER_HIDDEN * shape.hidden + ACT_PER_FFN * shape.active_ffn()) * weight_bytes
    recurrent = shape.recurrent_acts(tokens, micro_batch, weight_bytes) if shape.linear_layers else 0
    dense = sum(i * o for b in shape.blocks() for i, o in b.values()) + sum(i * o for _n, i, o in shape.model_linears)
    parts = {
        "base weights (4-bit)" if quantized else f"base weights ({8 * weight_bytes}-bit)": int(
            dense * (NF4_BYTES if quantized else weight_bytes)
        ),
        "embeddings + head": shape.embedding_params() * weight_bytes,
        **({"experts (16-bit)": shape.expert_weights * weight_bytes} if shape.expert_weights else {}),
        f"{chosen.title} parameters ({kind})": lora * trained_bytes,
        f"{chosen.title} gradients ({kind})": lora * trained_bytes,
        "optimizer state": lora * opt_bytes,
        "activations": layer_acts + recurrent + tokens * shape.hidden * weight_bytes * (2 if offload else shape.layers)
        if checkpointing
        else shape.layers * layer_acts + shape.linear_layers * recurrent,
        # the loss runs the LM head over one chunk of target tokens at a time (chunked_loss.py)
        "logits + loss (one chunk)": min(tokens, chunk_tokens(shape.vocab)) * shape.vocab * (weight_bytes + 4 + 4),
        # the rows of a micro-batch run as one sequence; transformers builds one boolean mask over it
        "attention mask": tokens * tokens if micro_batch > 1 else 0,
    }
    if shape.experts:
        parts[f"experts + routers ({8 * weight_bytes}-bit)"] = (
            shape.expert_params() + shape.router_params()
        ) * weight_bytes
        if chosen.lora_family and lora and (not targets or targets == ["all-linear"]):
            # peft's expert LoRA adds B·A to a whole stacked parameter: that copy and its gradient, one at a time
            i, o = max(shape.expert_linears().values(), key=lambda io: io[0] * io[1])
            parts["expert LoRA merge (transient)"] = 2 * shape.experts * i * o * weight_bytes
    if quantized:
        i, o = max((io for b in shape.blocks() for io in b.values()), key=lambda io: io[0] * io[1])
        parts["dequantized weight (transient)"] = i * o * weight_bytes
    return Plan(micro_batch, seq_len, rank, checkpointing, quantized, offload and checkpointing, parts)


@dataclass
class Recommendation:
    plan: Plan
    budget: int
    fits: bool
    notes: list[str]


def recommend(
    shape: Shape,
    budget_bytes: int,
    *,
    seq_len: int,
    rank: int,
    max_micro_batch: int = 16,
    targets: list[str] | None = None,
    quantized: bool = True,
    checkpointing: bool = True,
    optimizer: str = "paged_adamw_8bit",
    weight_bytes: int = 2,
    offload: str = "off",
    method: str = "lora",
    virtual_tokens: int = 20,
    freeze_modules: list[str] | None = None,
) -> Recommendation:
    """The largest power-of-two micro-batch that fits; else, where `offload` is "auto", the same with the
    checkpoints offloaded to CPU memory; else shorter sequences, then a lower rank. offload "on": always."""
    kw = dict(
        targets=targets,
        quantized=quantized,
        checkpointing=checkpointing,
        optimizer=optimizer,
        weight_bytes=weight_bytes,
        method=method,
        virtual_tokens=virtual_tokens,
        freeze_modules=freeze_modules,
    )
    checkpointing = checkpointing and method not in ("prefix_tuning",)
    choices = {"off": [False], "on": [True], "auto": [False, True]}[offload] if checkpointing else [False]
    notes: list[str] = []
    s, r = seq_len, rank
    while True:
        for off in choices:
            mb = 1 << int(math.log2(max(1, max_micro_batch)))
            while mb >= 1:
                plan = estimate(shape, micro_batch=mb, seq_len=s, rank=r, offload=off, **kw)
                if plan.total <= budget_bytes:
                    return Recommendation(plan, budget_bytes, True, notes)
                mb //= 2
        if s > 256:
            s //= 2
            notes.append(f"max_seq_len {s * 2} does not fit even at micro-batch 1; trying {s}")
        elif r > 4:
            r //= 2
            notes.append(f"rank {r * 2} does not fit; trying {r}")
        else:
            plan = estimate(shape, micro_batch=1, seq_len=s, rank=r, offload=choices[-1], **kw)
            notes.append(
                "does not fit at micro-batch 1, sequence 256 and rank 4: use a smaller model"
                + ("" if quantized else " or 4-bit loading")
            )
            return Recommendation(plan, budget_bytes, False, notes)


def render_plan(rec: Recommendation, shape: Shape, *, where: str, alternatives: list[Plan]) -> str:
    p = rec.plan
    width = max(len(k) for k in p.parts) + 2
    lines = [
        f"model: {shape.layers} layers, hidden {shape.hidden}, ffn {shape.ffn}, vocab {shape.vocab}, "
        f"{(shape.linear_params() + shape.embedding_params()) / 1e6:,.1f} M parameters",
        f"budget: {format_bytes(rec.budget)} ({where}, after {format_bytes(CUDA_CONTEXT)} for the CUDA context)",
        f"recommended: micro-batch {p.micro_batch}, max_seq_len {p.seq_len}, rank {p.rank}, "
        f"{'4-bit' if p.quantized else '16-bit'} base, checkpointing {'on' if p.checkpointing else 'off'}"
        + (", checkpoints offloaded to CPU memory" if p.offload else "")
        + ("" if rec.fits else "  (DOES NOT FIT)"),
        "estimated peak memory:",
    ]
    for k, v in p.parts.items():
        bar = "#" * max(1, round(30 * v / p.total)) if v else ""
        lines.append(f"  {k:<{width}} {format_bytes(v):>11}  {bar}")
    lines.append(f"  {'total':<{width}} {format_bytes(p.total):>11}")
    lines += [f"note: {n}" for n in rec.notes]
    if alternatives:
        lines.append("other settings:")
        for a in alternatives:
            check = "on, offloaded" if a.offload else "on" if a.checkpointing else "off"
            lines.append(
                f"  micro-batch {a.micro_batch:>2}, seq {a.seq_len:>5}, rank {a.rank:>3}, checkpointing "
                f"{check:<13}: {format_bytes(a.total):>11}" + ("" if a.total <= rec.budget else "  (too big)")
            )
    return "\n".join(lines)
