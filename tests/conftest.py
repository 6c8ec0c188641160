"""Shared fixtures: tiny models built once per session, a tiny LoRA model, a CLI runner, SVG snapshots.

Helpers that tests import (rows, data files, a tiny run, the CLI in a subprocess) are in helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(arch) -> folder of a tiny random model of that architecture (built once)."""
    from localtune.model.tiny import build_tiny_model

    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return built[arch]

    return get


@pytest.fixture
def lora_llama(tiny_model_dir):
    """lora_llama(dropout, checkpointing=True, arch="llama", quantized=False, **lora_config) -> a tiny model (default
    the llama) in fp32, or with an NF4 double-quant base computing in fp32, with all-linear LoRA (r=4) whose B matrices
    are non-zero, so every LoRA weight gets a gradient; in train mode."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    def build(dropout: float, checkpointing: bool = True, arch: str = "llama", quantized: bool = False, **lora_config):
        kwargs = {"dtype": torch.float32}
        if quantized:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32,
            )
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), **kwargs)
        for m in model.modules():  # as model_loading does: keep bitsandbytes' training layout on the CPU
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
        model.config.use_cache = False
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(0)
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", **lora_config)
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
        return model.train()

    return build


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """tiny_tokenizer(arch) -> the loaded tokenizer of that tiny model."""
    from transformers import AutoTokenizer

    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = AutoTokenizer.from_pretrained(tiny_model_dir(arch))
        return cache[arch]

    return get


@pytest.fixture
def cli():
    """Run the localtune CLI in-process: cli(*args) -> click Result (output has stdout and stderr)."""
    from click.testing import CliRunner

    from localtune.cli import main

    def run(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception  # a bug, not a user mistake: show its traceback in the test
        return result

    return run


SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture
def snap_compare(request):
    """snap_compare(app, terminal_size, run_before) -> True when the screen matches its stored SVG.

    The first run (or UPDATE_SNAPSHOTS=1) writes tests/snapshots/<test id>.svg; review it before committing.
    """
    import asyncio
    import re

    def normalise(svg: str) -> str:  # ids Textual derives per render
        return re.sub(r"terminal-\d+", "terminal", svg)

    def compare(app, terminal_size=(80, 24), run_before=None) -> bool:
        from textual.widgets import Input

        async def shoot():
            async with app.run_test(size=terminal_size) as pilot:
                if run_before:
                    await run_before(pilot)
                for inp in app.screen.query(Input):  # a blinking cursor would make screenshots flaky
                    inp.cursor_blink = False
                await pilot.pause(0.1)
                return app.export_screenshot()

        svg = normalise(asyncio.run(shoot()))
        name = re.sub(r"[^\w.-]+", "_", request.node.name) + ".svg"
        stored = SNAPSHOTS / name
        if os.environ.get("UPDATE_SNAPSHOTS") or not stored.exists():
            SNAPSHOTS.mkdir(exist_ok=True)
            stored.write_text(svg, encoding="utf-8")
            return True
        if stored.read_text(encoding="utf-8") == svg:
            return True
        stored.with_suffix(".actual.svg").write_text(svg, encoding="utf-8")  # for a side-by-side look
        return False

    return compare
