"""Learned virtual-token vectors (prompt tuning, P-tuning) at the start of a llama.cpp context.

peft runs these adapters by putting N learned vectors in front of the prompt's token embeddings (before
BOS too). llama.cpp takes raw input embeddings through `llama_batch.embd` (token NULL), but one batch
holds either tokens or embeddings, so the N vectors are decoded first at positions 0..N-1 and the prompt's
tokens then from position N. llama-cpp-python's `Llama` only evaluates tokens; `SoftPrompt` fills those N
cells itself and records them in the `Llama`'s own token buffer as N marker ids, so that `Llama.generate`
and `create_completion`, given `soft.tokens(ids)`, find the N cells as a cached prefix and continue from
position N with all of their sampling (logit bias, stop strings, streaming).

Nothing re-pins by itself: `Llama.reset()` or a prompt that does not start with the markers makes llama.cpp
drop those cells. `tokens()` (and everything built on it) checks the prefix and decodes the vectors again
when it is gone. To know, the `Llama`'s `eval` is wrapped (on that instance only): any decode that starts
below position N marks the vectors lost, and one that would decode the markers themselves as tokens (the
silent failure: N EOS tokens instead of the learned prompt) raises instead.

Refused: Gemma 4 (per-layer inputs come from token ids; peft cannot run it either) and llama.cpp's recurrent
and hybrid models, Qwen3.5 (its raw-embedding path is 0.07-0.47 logits off peft, and a recurrent state cannot be
cut back to the pinned prefix); the portable GGUF (converters.soft_prompt) runs Qwen3.5 from tokens (2e-5).

Gemma: transformers scales token embeddings by sqrt(d) inside its embedding module, and peft's vectors
bypass that module, so they enter unscaled. llama.cpp's gemma3 graph skips its scale for raw embeddings
(they go in as they are), but its gemma and gemma2 graphs scale every input, raw embeddings included
(measured: 1.0-1.8 logits off unless divided by sqrt(d)), so for those the vectors are divided first.
"""

from __future__ import annotations

from pathlib import Path

from localtune.errors import LocaltuneError

PROMPT_LEARNING = ("PROMPT_TUNING", "P_TUNING")
# llama.cpp graphs that multiply raw input embeddings by sqrt(n_embd), as they do token embeddings.
SCALES_RAW_EMBEDDINGS = ("gemma", "gemma2")
# Gemma 4 looks up per-layer embeddings by token id; transformers refuses inputs_embeds that are not rows of
# its table, so peft cannot run these adapters on it at all.
NO_INPUT_EMBEDDINGS = {"gemma4": "Gemma 4 computes per-layer inputs from token ids, which learned vectors do not have"}


class SoftPromptError(LocaltuneError):
    exit_code = 2
    title = "cannot use the learned prompt"


def load_vectors(adapter_dir: str | Path):
    """The N x d vectors of a saved peft prompt-tuning or P-tuning adapter, as float32 numpy.

    peft saves `prompt_embeddings`: the embedding table for prompt tuning, and the prompt encoder's
    *output* for P-tuning (the encoder itself is not needed to run it)."""
    import json

    import numpy as np
    from safetensors.numpy import load_file

    folder = Path(adapter_dir)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise SoftPromptError(
            f"{folder} holds no peft adapter (adapter_config.json + adapter_model.safetensors)",
            hint="give the folder a prompt-tuning or P-tuning run saved its adapter into",
        )
    peft_type = json.loads(config_path.read_text(encoding="utf-8")).get("peft_type")
    if peft_type not in PROMPT_LEARNING:
        raise SoftPromptError(
            f"{folder} is a {peft_type} adapter, not prompt tuning or P-tuning",
            hint="LoRA-like adapters are merged or exported as adapter GGUFs instead",
        )
    tensors = load_file(str(weights_path))
    if "prompt_embeddings" not in tensors:
        raise SoftPromptError(f"{weights_path} has no prompt_embeddings tensor", hint="re-save the adapter")
    return np.ascontiguousarray(tensors["prompt_embeddings"], dtype=np.float32)


class SoftPrompt:
    """N learned vectors pinned at positions 0..N-1 of a `Llama` (from `chat.runtime.open_gguf`); one per `Llama`."""

    def __init__(self, llm, vectors):
        import numpy as np

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n_embd = llm.n_embd()
        if vectors.ndim != 2 or vectors.shape[1] != n_embd or len(vectors) == 0:
            raise SoftPromptError(
                f"the learned prompt has shape {tuple(vectors.shape)}; this model needs N x {n_embd}",
                hint="use the adapter trained on this base model",
            )
        if not np.isfinite(vectors).all():
            raise SoftPromptError("the learned prompt holds NaN or infinite values", hint="retrain the adapter")
        if len(vectors) >= llm.n_ctx():
            raise SoftPromptError(
                f"{len(vectors)} virtual tokens do not fit a {llm.n_ctx()}-token context", hint="raise --ctx"
            )
        arch = llm.metadata.get("general.architecture")
        if arch in NO_INPUT_EMBEDDINGS:
            raise SoftPromptError(
                f"learned prompts cannot run on {arch}: {NO_INPUT_EMBEDDINGS[arch]}",
                hint="train a LoRA adapter for this model instead",
            )
        if getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False):
            # Measured on Qwen3.5: 0.07-0.47 logits off peft with the vectors as embeddings (tokens alone: 9e-6),
            # and a recurrent state cannot be cut back to a cached prefix, so the pin would not survive sampling.
            raise SoftPromptError(
                f"llama.cpp's {arch} (a recurrent or hybrid model) does not run learned vectors as input embeddings "
                "the way peft does",
                hint="export the portable GGUF with the vectors as tokens (localtune.converters.soft_prompt)",
            )
        if arch in SCALES_RAW_EMBEDDINGS:
            vectors = vectors / np.float32(np.sqrt(n_embd))
        self.llm, self.vectors = llm, vectors
        # Any valid id works as the marker: it is compared, never decoded. EOS: no prompt starts with N of them.
        self.marker = max(llm.token_eos(), 0)
        self._pinned = False
        self._guard()

    def _guard(self) -> None:
        """Wrap this Llama's eval so that a decode from below position N is seen (see the module doc)."""
        llm, original = self.llm, type(self.llm).eval.__get__(self.llm)

        def eval(tokens):
            start = llm.n_tokens
            if start < self.n_virtual:
                self._pinned = False
                head = [int(t) for t in list(tokens)[: self.n_virtual - start]]
                if head and head == [self.marker] * len(head):
                    raise SoftPromptError(
                        "the learned prompt is no longer in the context (reset or replaced), and its markers "
                        "would be decoded as tokens",
                        hint="sample through SoftPrompt.tokens() / create_completion / generate, which pin it again",
                    )
            return original(tokens)

        llm.eval = eval

    @property
    def n_virtual(self) -> int:
        return len(self.vectors)

    def pinned(self) -> bool:
        llm, n = self.llm, self.n_virtual
        return (
            self._pinned
            and llm.n_tokens >= n
            and bool((llm.input_ids[:n] == self.marker).all())
            and self._cells_present()
        )

    def _cells_present(self) -> bool:
        import llama_cpp.llama_cpp as lib

        memory = lib.llama_get_memory(self.llm._ctx.ctx)
        return lib.llama_memory_seq_pos_min(memory, 0) == 0 and lib.llama_memory_seq_pos_max(memory, 0) >= (
            self.n_virtual - 1
        )

    def pin(self) -> None:
        """Clear the context and decode the vectors at positions 0..N-1."""
        import ctypes

        import llama_cpp.llama_cpp as lib

        llm, n, d = self.llm, self.n_virtual, self.vectors.shape[1]
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = 0
        batch = lib.llama_batch_init(n, d, 1)
        try:
            ctypes.memmove(batch.embd, self.vectors.ctypes.data, self.vectors.nbytes)
            for i in range(n):
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == n - 1
            batch.n_tokens = n
            if rc := lib.llama_decode(llm._ctx.ctx, batch):
                raise SoftPromptError(f"llama.cpp could not decode the learned prompt (code {rc})", hint="re-export")
        finally:
            lib.llama_batch_free(batch)
        llm.input_ids[:n] = self.marker
        llm.n_tokens = n
        llm._requires_eval = True  # the Llama's own logits are not from this decode: never sample from them
        self._pinned = True

    def tokens(self, ids) -> list[int]:
        """What to hand `Llama.generate` / `create_completion` for the prompt `ids`: N markers, then `ids`.
        Pins the vectors again first if the context lost them."""
        ids = [int(t) for t in ids]
        if not ids:
            raise SoftPromptError("the prompt after the learned vectors is empty", hint="give at least one token")
        if not self.pinned():
            self.pin()
        return [self.marker] * self.n_virtual + ids

    def create_completion(self, ids, **kwargs):
        """`Llama.create_completion` of the token prompt `ids` after the vectors (all its options)."""
        return self.llm.create_completion(self.tokens(ids), **kwargs)

    def generate(self, ids, **kwargs):
        """`Llama.generate` of the token prompt `ids` after the vectors: a generator of sampled ids."""
        return self.llm.generate(self.tokens(ids), **kwargs)

    def logits(self, ids):
        """Teacher-forced logits (float32, len(ids) x n_vocab): row i predicts the token after ids[i],
        with the vectors in front. Leaves the context holding vectors + ids, as a prompt would."""
        import ctypes

        import llama_cpp.llama_cpp as lib
        import numpy as np

        llm = self.llm
        ids = [int(t) for t in ids]
        if self.n_virtual + len(ids) > llm.n_ctx():
            raise SoftPromptError(
                f"{self.n_virtual} + {len(ids)} tokens do not fit a {llm.n_ctx()}-token context", hint="raise --ctx"
            )
        self.pin()
        n_vocab, out = llm.n_vocab(), []
        step = max(1, llm.n_batch)
        batch = lib.llama_batch_init(step, 0, 1)
        try:
            for start in range(0, len(ids), step):
                chunk = ids[start : start + step]
                for i, tid in enumerate(chunk):
                    batch.token[i] = tid
                    batch.pos[i] = self.n_virtual + start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True
                batch.n_tokens = len(chunk)
                if rc := lib.llama_decode(llm._ctx.ctx, batch):
                    raise SoftPromptError(f"llama.cpp could not decode the prompt (code {rc})", hint="raise --ctx")
                for i in range(len(chunk)):
                    row = lib.llama_get_logits_ith(llm._ctx.ctx, i)
                    out.append(np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), (n_vocab,)))
                    out[-1] = out[-1].copy()
        finally:
            lib.llama_batch_free(batch)
        n = self.n_virtual
        llm.input_ids[n : n + len(ids)] = ids
        llm.n_tokens = n + len(ids)
        llm._requires_eval = True
        return np.stack(out).astype(np.float32) if out else np.zeros((0, n_vocab), np.float32)


def attach(llm, vectors) -> SoftPrompt:
    """Pin `vectors` (N x n_embd) at the start of `llm`'s context; returns the handle a chat loop samples through."""
    soft = SoftPrompt(llm, vectors)
    soft.pin()
    return soft


def prompt_logits(llm, vectors, ids):
    """Teacher-forced logits (float32, one row per token of `ids`) with `vectors` prepended, as peft's forward."""
    return SoftPrompt(llm, vectors).logits(ids)
