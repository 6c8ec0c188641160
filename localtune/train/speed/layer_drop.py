"""Layer drop (stochastic depth) while training: `train.layer_drop` = p_max.

Decoder layer i of L is skipped with probability p_max * i / (L-1): layer 0 always runs, the top layer is
skipped most. A skipped layer is the identity on the residual stream (its input hidden states pass on
unchanged); outputs are not rescaled, so the trained model is used as it is: nothing changes at export.

One draw per micro-batch (all its rows skip the same layers: the padding-free path runs a micro-batch's
rows as one sequence), made in a forward pre-hook on the decoder, so both the padding-free path (which
calls the decoder itself, chunked_loss.py) and the model's own padded forward see it. The draw is one
`torch.rand(L)` from torch's CPU generator, whose state every checkpoint holds: a resumed run skips the
same layers. It happens outside any layer, so gradient checkpointing's recomputation sees the same choice.
Never in evaluation: no draw when the decoder is in eval mode or gradients are off.
"""

from __future__ import annotations


class LayerDrop:
    """The installed layer drop of one decoder: `probs` per layer, and counts of draws and skips per layer."""

    def __init__(self, n_layers: int, p_max: float):
        self.probs = [p_max * i / (n_layers - 1) if n_layers > 1 else 0.0 for i in range(n_layers)]
        self.skip: list[bool] | None = None  # the current micro-batch's choice, None: run every layer
        self.draws = 0
        self.skipped = [0] * n_layers

    def draw(self, module, args, kwargs) -> None:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            self.skip = None
            return
        u = torch.rand(len(self.probs))
        self.skip = [float(x) < p for x, p in zip(u, self.probs, strict=True)]
        self.draws += 1
        for i, s in enumerate(self.skip):
            self.skipped[i] += s

    def wrap(self, index: int, forward):
        def layer_forward(*args, **kwargs):
            if self.skip is not None and self.skip[index]:
                return args[0] if args else kwargs["hidden_states"]
            return forward(*args, **kwargs)

        return layer_forward


def decoder_of(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def install(model, p_max: float) -> LayerDrop:
    """Skip `model`'s decoder layers at random in training (see the module's doc); returns the counters."""
    decoder = decoder_of(model)
    layers = decoder.layers
    drop = LayerDrop(len(layers), p_max)
    decoder.register_forward_pre_hook(drop.draw, with_kwargs=True)
    for i, layer in enumerate(layers):
        layer.forward = drop.wrap(i, layer.forward)
    decoder.localtune_layer_drop = drop
    return drop
