"""Liger's fused kernels: patched in only on CUDA with liger-kernel installed and the model supported; asked for
where they cannot run, a clear error. (CI has no GPU and no Liger: a stand-in module records the patch call.)"""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest

from localtune.errors import UsageError
from localtune.train.speed import kernels
from localtune.train.speed.kernels import use_fused_kernels


def model_of(model_type: str):
    return SimpleNamespace(config=SimpleNamespace(model_type=model_type))


@pytest.fixture
def fake_liger(monkeypatch):
    """A stand-in liger_kernel package whose patch functions record their calls."""
    calls = []

    def apply_liger_kernel_to_llama(
        rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, swiglu=True, model=None
    ):
        calls.append(
            (
                "llama",
                dict(
                    rope=rope,
                    cross_entropy=cross_entropy,
                    rms_norm=rms_norm,
                    swiglu=swiglu,
                    fused_linear_cross_entropy=fused_linear_cross_entropy,
                    model=model,
                ),
            )
        )

    def apply_liger_kernel_to_gemma(
        rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, geglu=True, model=None
    ):
        calls.append(("gemma", dict(geglu=geglu, fused_linear_cross_entropy=fused_linear_cross_entropy, model=model)))

    package, transformers = types.ModuleType("liger_kernel"), types.ModuleType("liger_kernel.transformers")
    transformers.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
    transformers.apply_liger_kernel_to_gemma = apply_liger_kernel_to_gemma
    package.transformers = transformers
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        kernels.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "liger_kernel" else real_find_spec(name, *a),
    )
    return calls


def test_on_cuda_with_liger_installed_the_model_is_patched_without_its_loss(fake_liger):
    model = model_of("llama")
    applied = use_fused_kernels(model, "cuda", "auto")
    assert applied == "liger: rope, rms_norm, swiglu"
    ((name, args),) = fake_liger
    assert name == "llama" and args["model"] is model
    # localtune's chunked loss stays: Liger's cross-entropy and fused linear cross-entropy are off
    assert args["cross_entropy"] is False and args["fused_linear_cross_entropy"] is False
    assert use_fused_kernels(model_of("gemma"), "cuda", "liger") == "liger: rope, rms_norm, geglu"
    assert fake_liger[1][1]["geglu"] is True


def test_auto_leaves_the_model_alone_where_liger_cannot_run(fake_liger):
    assert use_fused_kernels(model_of("llama"), "cpu", "auto") == ""
    assert use_fused_kernels(model_of("phi3"), "cuda", "auto") == ""  # the stand-in has no phi3 patch
    assert use_fused_kernels(model_of("gpt2"), "cuda", "auto") == ""  # no Liger kernels for it at all
    assert use_fused_kernels(model_of("llama"), "cuda", "off") == ""
    assert fake_liger == []


@pytest.mark.parametrize(
    "device, model_type, reason",
    [
        ("cpu", "llama", "trains on the CPU"),
        ("cuda", "gpt2", "no kernels for model type 'gpt2'"),
    ],
)
def test_asking_for_liger_where_it_cannot_run_is_a_clear_error(fake_liger, device, model_type, reason):
    with pytest.raises(UsageError, match=reason) as info:
        use_fused_kernels(model_of(model_type), device, "liger")
    assert "train.kernels" in str(info.value) and fake_liger == []


def test_without_liger_installed_liger_is_refused_and_auto_is_silent(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        kernels.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "liger_kernel" else real_find_spec(name, *a),
    )
    assert use_fused_kernels(model_of("llama"), "cuda", "auto") == ""
    with pytest.raises(UsageError, match="pip install 'localtune\\[liger\\]'"):
        use_fused_kernels(model_of("llama"), "cuda", "liger")


def test_a_cpu_training_run_reports_no_fused_kernels(tiny_model_dir):
    from localtune.config import load_config
    from localtune.model.loading import load_for_training, resolve_base

    folder = tiny_model_dir("llama")
    cfg = load_config(
        None,
        {
            "model.name_or_path": (str(folder), "test"),
            "train.load_in_4bit": (False, "test"),
            "train.device": ("cpu", "test"),
        },
    )
    assert load_for_training(cfg, resolve_base(str(folder))).kernels == ""
    cfg = load_config(
        None,
        {
            "model.name_or_path": (str(folder), "test"),
            "train.load_in_4bit": (False, "test"),
            "train.device": ("cpu", "test"),
            "train.kernels": ("liger", "test"),
        },
    )
    with pytest.raises(UsageError, match="train.kernels"):
        load_for_training(cfg, resolve_base(str(folder)))
