"""Training an adapter: one run from a config to `RUN_DIR/adapter`.

- run.py: `train_run` — preflight (data, disk, output), memory plan, recipe, model, the loop, the adapter;
- loop.py: the explicit training loop and its state (one dataclass, checkpointed whole);
- checkpoint.py: complete, atomic checkpoints, the last N kept, resumed exactly;
- recipe.py: epochs and learning rate when the user leaves them unset;
- speed/: what makes a step cheaper without changing its result (batching, chunked loss, per-row
  attention, fused LoRA, sparse dropout, activation offload, fused kernels).

Only torch-free names are re-exported here.
"""

from localtune.train.recipe import RECIPE_KEYS, Recipe, choose_recipe

__all__ = ["RECIPE_KEYS", "Recipe", "choose_recipe"]
