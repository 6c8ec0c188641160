"""The causal-LM loss of a micro-batch, without full-vocabulary logits for the whole micro-batch.

The decoder body runs on the padding-free micro-batch (`localtune.train.speed.batching`) and gives the last hidden
states; only the positions that predict a target are kept. They go through the LM head in chunks of
tokens, each chunk: lm_head -> float32 -> final-logit soft-capping (Gemma 2/3) -> cross-entropy summed.
Peak logits memory is one chunk's [chunk, vocab] fp32 (and its gradient), never [tokens, vocab].

When the head is a plain frozen `nn.Linear` (the usual case: LoRA does not target it), the gradient with
respect to the hidden states is computed in the same pass as the loss, chunk by chunk (softmax minus the
one-hot target, times the head's weight), and kept as one [n, d] tensor for the backward, so each
chunk's logits are computed once and freed at once. Otherwise (LoRA on the head, a quantized head)
each chunk runs under activation checkpointing: its logits are freed after the forward and the head is
run again in the backward, which costs one more head forward per target token.

The result is the sum of the target tokens' losses divided by `num_items`, the target count of the whole
optimizer step (as transformers' `num_items_in_batch`), so accumulated micro-batches give exactly the
full-batch gradient. Soft-capping runs in fp32 here; transformers caps in the compute dtype and then
upcasts, so in bf16/fp16 the two differ by rounding only (in fp32 they are the same computation).

Model types whose padding-free path is verified against the padded one (tests/train/speed/test_fast_path.py), and
the decoder / LM-head layout this module assumes: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3
(text), Phi-3, Granite (logits divided by logits_scaling: the hidden states are, before the bias-free head),
Ministral, Ministral 3, SmolLM3, OLMo 2, OLMo 3,
Qwen3-MoE, gpt-oss, Gemma 4 (text) and Qwen3.5 (text; its linear-attention layers restart their
state at every row and packed segment, row_recurrence.py). Anything else (Gemma 3 multimodal checkpoints, remote
code, attention implementations other than sdpa, eager and flash-attention) runs the model's own padded
forward and loss, as before.

    loss_fn = CausalLMLoss(peft_model, pad_id)
    loss = loss_fn(rows, num_items=targets_in_the_step)  # a scalar tensor, ready for backward()
"""

from __future__ import annotations

import functools

from localtune.data.tokenize import IGNORE
from localtune.train.speed.batching import collate, padding_free
from localtune.train.speed.row_attention import PREFIX, use_row_attention
from localtune.train.speed.row_recurrence import is_recurrent_layer, segment_bounds, use_row_recurrence

PADDING_FREE_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "granite",
    "ministral",
    "ministral3",
    "smollm3",
    "olmo2",
    "olmo3",
    "qwen3_moe",
    "gpt_oss",
    "gemma4_text",  # per-layer inputs and KV sharing: verified like the others
    "qwen3_5_text",  # its linear-attention layers run segment by segment (row_recurrence.py)
    "qwen3_5",
)
# flash-attention derives per-row (varlen) attention from the restarting position ids by itself
PADDING_FREE_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")

LOGITS_CHUNK_ELEMENTS = 1 << 26  # 256 MiB of fp32 logits per chunk
MAX_CHUNK_TOKENS = 1024


def chunk_tokens(vocab_size: int) -> int:
    """Tokens per LM-head chunk: 1024, fewer for vocabularies over 64k so a chunk stays ~256 MiB in fp32."""
    return max(1, min(MAX_CHUNK_TOKENS, LOGITS_CHUNK_ELEMENTS // vocab_size))


def _chunk_loss(hidden, target_ids, lm_head, softcap):
    import torch

    logits = lm_head(hidden).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.nn.functional.cross_entropy(logits, target_ids, ignore_index=IGNORE, reduction="sum")


@functools.cache
def _fused_head_loss():
    """The autograd Function behind the fused head pass (built on first use: torch is imported lazily here)."""
    import torch

    class FusedHeadLoss(torch.autograd.Function):
        """Summed cross-entropy of linear(hidden, weight, bias) against targets; d/d(hidden) made in the forward."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, target_ids, softcap, chunk):
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden)
            for start in range(0, hidden.shape[0], chunk):
                h, t = hidden[start : start + chunk], target_ids[start : start + chunk]
                logits = torch.nn.functional.linear(h, weight, bias).float()
                cap_slope = None
                if softcap is not None:
                    logits = torch.tanh(logits / softcap) * softcap
                    cap_slope = (logits / softcap).square_().neg_().add_(1)  # d(capped)/d(raw) = 1 - tanh^2
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
                grad[torch.arange(t.shape[0], device=t.device), t] -= 1  # minus the one-hot target
                if cap_slope is not None:
                    grad *= cap_slope
                grad_hidden[start : start + chunk] = grad.to(weight.dtype) @ weight
            ctx.save_for_backward(grad_hidden)
            return total

        @staticmethod
        def backward(ctx, grad_total):
            (grad_hidden,) = ctx.saved_tensors
            return grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None, None, None

    return FusedHeadLoss


def chunked_cross_entropy(hidden, target_ids, lm_head, *, softcap: float | None = None, chunk: int = 1024):
    """Summed cross-entropy of `lm_head(hidden)` ([n, d] -> [n, vocab]) against target_ids [n], `chunk` rows
    of logits at a time. With gradients on: a plain frozen nn.Linear head gets the fused pass (the gradient
    computed with the loss, no logits kept, no recompute); any other head is checkpointed chunk by chunk."""
    import torch
    from torch.utils.checkpoint import checkpoint

    if (
        torch.is_grad_enabled()
        and hidden.requires_grad
        and type(lm_head) is torch.nn.Linear
        and not lm_head.weight.requires_grad
        and (lm_head.bias is None or not lm_head.bias.requires_grad)
        and hidden.shape[0] > 0
    ):
        return _fused_head_loss().apply(hidden, lm_head.weight, lm_head.bias, target_ids, softcap, chunk)
    total = hidden[:0].float().sum()  # 0, still attached to the graph when there are no targets
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], target_ids[start : start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_chunk_loss, h, t, lm_head, softcap, use_reentrant=False)
        else:
            total = total + _chunk_loss(h, t, lm_head, softcap)
    return total


def fast_path_supported(base) -> bool:
    """Whether this transformers model (not the peft wrapper) gets the padding-free, chunked path."""
    impl = (base.config._attn_implementation or "").removeprefix(PREFIX)
    return (
        base.config.model_type in PADDING_FREE_MODEL_TYPES
        and impl in PADDING_FREE_ATTENTION
        and type(base).__module__.startswith("transformers.models.")
    )  # not remote code


class CausalLMLoss:
    """loss(rows, num_items): the rows' summed target-token loss divided by num_items, as a scalar tensor."""

    def __init__(self, model, pad_id: int, chunk: int | None = None, *, padded: bool = False):
        """padded: always the model's own padded forward (adapter methods that need whole rows, methods.py)."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model, self.pad_id = model, pad_id
        self.padding_free = not padded and fast_path_supported(base)
        if self.padding_free:
            self.decoder = base.get_decoder()
            self.lm_head = base.get_output_embeddings()  # the LoRA-wrapped module when lm_head is a target
            self.softcap = getattr(base.config, "final_logit_softcapping", None)
            self.row_attention = use_row_attention(base)
            self.row_recurrence = use_row_recurrence(base)
            self.chunk = chunk or chunk_tokens(base.config.vocab_size)
            # Granite divides its logits by logits_scaling; its head has no bias, so W(h/s) = (Wh)/s
            self.logits_divisor = float(getattr(base.config, "logits_scaling", None) or 1.0)

    def __call__(self, rows, num_items: int):
        import torch

        device = self.model.device
        if not self.padding_free:
            if rows and hasattr(rows[0], "position_ids") and any(map(is_recurrent_layer, self.model.modules())):
                from localtune.errors import UsageError

                raise UsageError(
                    "packed rows need the padding-free path for a model with linear-attention layers: its own "
                    "forward would carry their state from one packed segment into the next",
                    hint="turn packing off, or use the sdpa, eager or flash-attention implementation",
                    title="packing not supported here",
                )
            batch = collate(rows, self.pad_id, device)
            return self.model(**batch, num_items_in_batch=torch.tensor(max(1, num_items), device=device)).loss
        batch = padding_free(rows, device)
        extra = {"row_bounds": batch.row_bounds} if self.row_attention else {}
        if self.row_recurrence:  # linear-attention state must restart at every row and packed segment
            extra["segment_bounds"] = segment_bounds(rows)
        # use_cache=False: with a KV cache transformers would not build the block-diagonal mask
        hidden = self.decoder(**batch.inputs, use_cache=False, **extra).last_hidden_state
        picked = hidden.flatten(0, 1)[batch.target_index]
        if self.logits_divisor != 1.0:
            picked = picked / self.logits_divisor
        total = chunked_cross_entropy(picked, batch.target_ids, self.lm_head, softcap=self.softcap, chunk=self.chunk)
        return total / max(1, num_items)
