"""The adapter methods localtune trains, one row each: what they learn and where their result runs.

Everything that depends on the method asks this table (config validation, the loader, the training
loop's batching, merge, export, chat, the TUI's list, `localtune methods`), so a method is described in
one place. Torch-free: the config imports it.

Kinds:
- "merge": peft weights that fold into the base (`merge_and_unload`): merged GGUF, as LoRA.
- "virtual": learned input vectors before the prompt (prompt tuning, P-tuning): the base GGUF plus the
  vectors as input embeddings in localtune's chat, or a portable GGUF with them as new control tokens.
- "prefix": learned keys and values at every layer: the base GGUF plus a sidecar that localtune's chat
  writes into llama.cpp's KV cache; nothing else runs it.
- "adaption": LLaMA-Adapter's gated adaption prompts: no GGUF form; chat on transformers, or `distill`.
- "freeze": chosen modules of the base itself train: a GGUF of the base with the trained tensors in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    summary: str  # one line: what it learns (the TUI's explanation, `localtune methods`)
    kind: str  # merge | virtual | prefix | adaption | freeze
    four_bit: bool = True  # trains on a 4-bit base
    peft: bool = True  # a peft adapter (freeze is not)
    checkpointing: bool = True  # works with gradient checkpointing
    lr: float = 0.0  # the recipe's learning rate when unset (0: LoRA's rule in train/recipe.py), from the papers

    @property
    def mergeable(self) -> bool:
        return self.kind in ("merge", "freeze")

    @property
    def padded(self) -> bool:
        """Needs padded per-row batches: peft drops position_ids for its prompt-learning methods, which the
        padding-free path relies on, and LLaMA-Adapter's gated attention sees one row at a time."""
        return self.kind in ("virtual", "prefix", "adaption")

    @property
    def lora_family(self) -> bool:
        return self.name in ("lora", "dora")

    @property
    def runs_in(self) -> str:
        return RUNS_IN[self.kind]


RUNS_IN = {
    "merge": "merged GGUF (any llama.cpp, Ollama)",
    "freeze": "merged GGUF (any llama.cpp, Ollama)",
    "virtual": "portable GGUF (any llama.cpp; Ollama for ChatML models), or the base GGUF in localtune chat",
    "prefix": "localtune chat only (base GGUF + KV-cache sidecar)",
    "adaption": "transformers only (localtune chat RUN_DIR); `localtune distill` makes it a portable LoRA",
}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lora", "LoRA", "low-rank update matrices A, B beside each linear layer", "merge"),
        Method("dora", "DoRA", "LoRA on the direction plus a learned magnitude per output channel", "merge"),
        Method(
            "ia3", "IA3", "learned per-channel scales on attention keys/values and the MLP output", "merge", lr=3e-3
        ),
        Method(
            "loha",
            "LoHa",
            "a low-rank Hadamard product update (on a 16-bit base)",
            "merge",
            four_bit=False,
        ),
        Method(
            "lokr",
            "LoKr",
            "a low-rank Kronecker product update (on a 16-bit base)",
            "merge",
            four_bit=False,
        ),
        Method(
            "oft", "OFT", "a learned block-diagonal orthogonal rotation of each linear layer's input", "merge", lr=1e-3
        ),
        Method(
            "vera", "VeRA", "scaling vectors on frozen random low-rank matrices shared by all layers", "merge", lr=1e-2
        ),
        Method(
            "ln_tuning", "LayerNorm tuning", "trained copies of the model's normalisation layers only", "merge", lr=1e-3
        ),
        Method(
            "prompt_tuning",
            "Prompt tuning",
            "learned embeddings of virtual tokens before the prompt",
            "virtual",
            lr=3e-2,
        ),
        Method(
            "p_tuning", "P-tuning", "virtual-token embeddings produced by a small trained encoder", "virtual", lr=1e-3
        ),
        Method(
            "prefix_tuning",
            "Prefix tuning",
            "learned keys and values for virtual positions at every layer (no gradient checkpointing)",
            "prefix",
            checkpointing=False,
            lr=1e-2,
        ),
        Method(
            "llama_adapter",
            "LLaMA-Adapter",
            "gated adaption prompts in the top layers (llama, mistral); distil it to run as GGUF",
            "adaption",
            lr=9e-3,
        ),
        Method(
            "freeze",
            "Freeze tuning",
            "chosen layers, norms or biases of the base train in full precision; the rest stays frozen",
            "freeze",
            peft=False,
            lr=2e-5,
        ),
    )
}
METHOD_NAMES = tuple(METHODS)

# peft's AdaptionPrompt knows these model types only
ADAPTION_MODEL_TYPES = ("llama", "mistral")


def method(name: str) -> Method:
    return METHODS[name]


def data_note(name: str, virtual_tokens: int) -> str:
    """What the method changes about the rows training sees (`localtune data inspect --method`)."""
    m = METHODS[name]
    if m.kind == "virtual":
        where = f"{virtual_tokens} virtual tokens go before every row (not in the token counts above)"
    elif m.kind == "prefix":
        where = f"{virtual_tokens} learned key/value positions come before every row at every layer"
    elif m.kind == "adaption":
        where = f"adaption prompts of {virtual_tokens} positions attend beside every row in the top layers"
    else:
        return f"method {m.name} ({m.title}): the same tokens train as with LoRA"
    return f"method {m.name} ({m.title}): {where}; rows train padded, one per row (no packing)"
