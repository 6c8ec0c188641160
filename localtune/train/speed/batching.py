"""Micro-batches for the forward pass: rows concatenated without padding, or right-padded.

Padding-free (what training and eval use): a micro-batch's rows become one sequence of shape
[1, total_tokens] whose position ids restart at 0 at every row. Given position ids, no attention mask
and no KV cache (`use_cache=False`), transformers builds a block-diagonal causal mask, so no token
attends across rows, and no compute goes to padding. Rows already packed by `localtune.data.packing`
carry their own position ids (restarting at each packed segment) and concatenate the same way.

Labels are shifted per row before concatenating (position t predicts token t+1 of the same row), so a
row's last position never predicts the next row's first token. Only the positions that predict a target
are kept (`target_index`, `target_ids`): the loss never computes logits for prompt or padding positions.

    batch = padding_free(rows, device)
    hidden = decoder(**batch.inputs).last_hidden_state  # [1, total_tokens, d]
    picked = hidden.flatten(0, 1)[batch.target_index]   # [n_targets, d], to score against batch.target_ids
"""

from __future__ import annotations

from dataclasses import dataclass

from localtune.data.tokenize import IGNORE


@dataclass
class MicroBatch:
    """Decoder inputs plus which flattened positions predict which token."""

    inputs: dict  # keyword arguments for the decoder body (input_ids, position_ids, ...)
    target_index: object  # LongTensor [n]: positions in the flattened [batch * seq] hidden states
    target_ids: object  # LongTensor [n]: the token each of those positions must predict
    row_bounds: tuple[int, ...]  # start of every row and the end of the last (padding-free only)


def shifted_labels(labels: list[int]) -> list[int]:
    """What each position predicts: the next label of the same row; the row's last position nothing."""
    return labels[1:] + [IGNORE]


def padding_free(rows, device) -> MicroBatch:
    """The rows as one [1, total_tokens] sequence, position ids restarting at every row (or packed segment)."""
    import torch

    ids, positions, targets, bounds = [], [], [], [0]
    for r in rows:
        ids += r.input_ids
        positions += r.position_ids if hasattr(r, "position_ids") else list(range(len(r.input_ids)))
        targets += shifted_labels(r.labels)
        bounds.append(len(ids))
    index = [i for i, t in enumerate(targets) if t != IGNORE]  # built on the CPU: no device sync
    inputs = {"input_ids": torch.tensor([ids], device=device), "position_ids": torch.tensor([positions], device=device)}
    return MicroBatch(
        inputs,
        torch.tensor(index, device=device),
        torch.tensor([targets[i] for i in index], device=device),
        tuple(bounds),
    )


def collate(rows, pad_id: int, device) -> dict:
    """Right-padded tensors with `labels` for the model's own forward. Packed rows carry position ids (and
    no attention mask). Used where the padding-free path is not verified, and as the tests' reference."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    packed = hasattr(rows[0], "position_ids")
    extra = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        if packed:
            extra[i, :n] = torch.tensor(r.position_ids)
            extra[i, n:] = torch.arange(width - n)  # padding forms its own segment
        else:
            extra[i, :n] = 1
    batch = {"input_ids": ids.to(device), "labels": labels.to(device)}
    batch["position_ids" if packed else "attention_mask"] = extra.to(device)
    return batch
