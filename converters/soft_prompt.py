"""A portable GGUF for a prompt-tuning or P-tuning adapter: the learned vectors baked in as N new tokens.

Any llama.cpp runtime then runs the adapter from the file alone:
- N CONTROL tokens `<|localtune_virtual_i|>` are appended to the vocabulary, and their `token_embd` rows
  are the vectors (divided by sqrt(d) where llama.cpp scales token embeddings, Gemma 3: peft's vectors
  bypass the scale transformers applies inside its embedding module);
- `output.weight` is written untied: the original head (or the embedding it was tied to) plus ZERO rows,
  so the new ids score 0 and the head is exactly the base's for every other id;
- the embedded chat template starts with the N tokens, before everything, BOS included: peft's sequence
  is [virtual..., BOS, ...]. llama.cpp's tokenizer would put its own BOS in front of them, so
  `add_bos_token` is turned off and the template writes BOS after the tokens itself (it already does for
  templates that contain `bos_token`);
- `localtune.virtual_tokens.ids` and `.method` record it.

llama.cpp samples CONTROL tokens like any other, and a zero-row logit still holds real probability: every
sampler must put a -inf bias on the ids (`virtual_token_bias`). llama-server and Ollama read no bias from
the file. Gemma and Gemma 2 always tie the head to the embedding in llama.cpp (no output tensor is read),
and Gemma 4 indexes per-layer embedding tables by token id: neither can take this form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from localtune.converters.gguf_file import ConversionError

IDS_KEY = "localtune.virtual_tokens.ids"
METHOD_KEY = "localtune.virtual_tokens.method"
METHODS = ("prompt_tuning", "p_tuning")
NO_PORTABLE = {
    "gemma": "llama.cpp's gemma always ties its output head to the token embedding",
    "gemma2": "llama.cpp's gemma2 always ties its output head to the token embedding",
    "gemma4": "Gemma 4 looks up per-layer embeddings by token id, which learned vectors do not have",
}
SCALED_TOKEN_EMBEDDINGS = ("gemma3",)  # llama.cpp multiplies token rows by sqrt(n_embd)


def token_name(i: int) -> str:
    return f"<|localtune_virtual_{i}|>"


class VirtualTokens:
    """The `extend` hook of `hf_to_gguf.convert`: N extra token rows, an untied head, the wrapped template."""

    def __init__(self, vectors, method: str):
        import torch

        self.rows = torch.as_tensor(vectors, dtype=torch.float32).clone()
        self.method = method
        self.n_vocab = None  # the base vocabulary size, set by tensors()

    def tensors(self, plan: list, cfg: dict, spec) -> list:
        """The tensor plan with N rows appended to token_embd and a zero-extended output head."""
        import torch

        n, d = self.rows.shape
        by_name = {entry[0]: entry for entry in plan}
        embd = by_name.get("token_embd.weight")
        if embd is None or embd[1][1] != d:
            raise ConversionError(
                f"the learned vectors are {n} x {d}, but the model's embedding is {embd[1] if embd else 'missing'}",
                hint="use the adapter trained on this base model",
            )
        self.n_vocab = embd[1][0]
        rows = self.rows / math.sqrt(d) if spec.gguf_arch in SCALED_TOKEN_EMBEDDINGS else self.rows

        def appended(loader: Callable, extra) -> Callable:
            return lambda: torch.cat([loader().float(), extra])

        head = by_name.get("output.weight", ("output.weight", embd[1], embd[2], []))
        out = []
        for entry in plan:
            if entry[0] == "token_embd.weight":
                out.append((entry[0], [self.n_vocab + n, d], appended(entry[2], rows), entry[3]))
            elif entry[0] != "output.weight":
                out.append(entry)
        zeros = torch.zeros(n, d)
        return [*out, ("output.weight", [head[1][0] + n, d], appended(head[2], zeros), head[3])]

    def metadata(self, writer) -> None:
        """Append the tokens to the vocabulary keys, wrap the chat template, record the ids."""
        import gguf

        kv = writer.kv_data[0]
        tokens = list(kv["tokenizer.ggml.tokens"].value)
        if len(tokens) != self.n_vocab:
            raise ConversionError(
                f"the tokenizer has {len(tokens)} tokens but the embedding {self.n_vocab} rows",
                hint="the new token ids would not line up with their rows; resize the embedding to the tokenizer",
            )
        n = len(self.rows)
        ids = list(range(self.n_vocab, self.n_vocab + n))
        names = [token_name(i) for i in range(n)]
        template = kv.get("tokenizer.chat_template")
        if template is None:
            raise ConversionError(
                "the model has no chat template to put the virtual tokens in",
                hint="give a chat template (the run's chat_template.jinja) or run the adapter with input embeddings",
            )

        def replace(key, value, vtype, sub_type=None):
            kv.pop(key, None)
            writer.add_key_value(key, value, vtype, sub_type=sub_type)

        V = gguf.GGUFValueType
        replace("tokenizer.ggml.tokens", [*tokens, *names], V.ARRAY, V.STRING)
        if "tokenizer.ggml.token_type" in kv:
            types = [*kv["tokenizer.ggml.token_type"].value, *[int(gguf.TokenType.CONTROL)] * n]
            replace("tokenizer.ggml.token_type", types, V.ARRAY, V.INT32)
        if "tokenizer.ggml.scores" in kv:
            replace("tokenizer.ggml.scores", [*kv["tokenizer.ggml.scores"].value, *[-1000.0] * n], V.ARRAY, V.FLOAT32)
        for key in [k for k in kv if k.endswith(".vocab_size")]:
            replace(key, self.n_vocab + n, V.UINT32)
        add_bos = "tokenizer.ggml.add_bos_token" in kv and bool(kv["tokenizer.ggml.add_bos_token"].value)
        bos = "{{ bos_token }}" if add_bos and "bos_token" not in template.value else ""
        replace("tokenizer.chat_template", "".join(names) + bos + template.value, V.STRING)
        replace("tokenizer.ggml.add_bos_token", False, V.BOOL)
        writer.add_array(IDS_KEY, ids)
        writer.add_string(METHOD_KEY, self.method)


def check_portable(folder: str | Path) -> str:
    """The model's llama.cpp architecture, or a ConversionError where the portable form does not exist."""
    from localtune.converters.hf_to_gguf import arch_spec, read_config

    arch = arch_spec(read_config(Path(folder))).gguf_arch
    if arch in NO_PORTABLE:
        raise ConversionError(
            f"a prompt-tuning GGUF with built-in virtual tokens is not available for {arch}: {NO_PORTABLE[arch]}",
            hint="run the base GGUF with the learned vectors as input embeddings (localtune.chat.soft_prompt)",
            title="portable soft-prompt GGUF not available",
        )
    return arch


def write_soft_prompt_gguf(
    folder: str | Path,
    vectors,
    out_path: str | Path,
    *,
    method: str = "prompt_tuning",
    out_type: str = "f16",
    chat_template: str | None = None,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """Convert the base HF `folder` with the N x d `vectors` baked in as virtual tokens; returns the ConvertReport."""
    from localtune.converters.hf_to_gguf import convert

    if method not in METHODS:
        raise ValueError(f"method is one of {METHODS}, not {method!r}")
    check_portable(folder)
    return convert(
        folder,
        out_path,
        out_type=out_type,
        chat_template=chat_template,
        name=name,
        progress=progress,
        extend=VirtualTokens(vectors, method),
    )


def virtual_token_ids(gguf_path: str | Path) -> list[int]:
    """The ids of a portable GGUF's virtual tokens ([] for any other GGUF)."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields.get(IDS_KEY)
    return [int(i) for i in field.contents()] if field is not None else []


def virtual_token_bias(gguf_path: str | Path) -> dict[int, float]:
    """The `logit_bias` every sampler of this GGUF needs: -inf on its virtual tokens (empty if it has none)."""
    return dict.fromkeys(virtual_token_ids(gguf_path), float("-inf"))
