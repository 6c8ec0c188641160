"""A corpus of broken and hostile model files, generated here, given to the real CLI.

Safetensors with bad headers, config.json with missing or absurd values, tokenizer files from another
model, adapters whose shapes do not fit the base, and a model that ships its own code. Each must be
refused with a clear error (title, the file, the value) and no traceback, quickly and in bounded
memory: every case runs in its own process, which reports its peak RSS and wall time. The bounds are
generous guards against a hang or a runaway allocation (a header that claims 2**62 bytes, a config with
a billion layers), not speed targets.

GGUF files (bad magic, huge dimensions, data beyond the end, a renamed safetensors) are covered in
tests/export/test_export.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import chat, localtune_process, train_tiny_run, write_jsonl

MAX_SECONDS = 45  # a hang detector; these cases take 3-10 s on a 2-core CI machine
MAX_RSS_MB = 1000  # measured 16-400 MB (the CLI alone, or with torch imported); an allocation would exceed it
# The child's own peak RSS: VmHWM belongs to the process image, while getrusage's ru_maxrss survives
# exec and would report the (large) pytest process that forked it.
MEASURE = (
    "import atexit, re, runpy, sys\n"
    "def peak():\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('PEAK_RSS_KB', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['localtune'] + sys.argv[1:]\n"
    "runpy.run_module('localtune', run_name='__main__')\n"
)
FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(6)]


def refused(*args, expect: str, code: int | None = None) -> str:
    """Run `localtune ARGS` in a fresh process; assert a clear refusal within the time and memory bounds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LOCALTUNE_FAULT", None)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS * 4,
        env=env,
    )
    seconds = time.monotonic() - start
    err = result.stderr
    assert result.returncode in ((code,) if code else (1, 2)), err[-2000:]
    assert "Traceback" not in err and "error: " in err and "fix: " in err, err[-2000:]
    assert re.search(expect, err), f"expected {expect!r} in:\n{err[-2000:]}"
    peak_mb = int(re.search(r"PEAK_RSS_KB (\d+)", err).group(1)) / 1024
    assert peak_mb < MAX_RSS_MB, f"peak RSS {peak_mb:.0f} MB"
    assert seconds < MAX_SECONDS, f"took {seconds:.1f} s"
    return err


# ---- safetensors --------------------------------------------------------------------------------------
def _header_bytes(header) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def _tensor(dtype="F32", shape=(2, 2), offsets=(0, 16)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


SAFETENSORS_CASES = {
    "zero_bytes": (b"", r"fewer than the 8-byte header length"),
    "huge_header_length": (struct.pack("<Q", 2**62) + b"{}", r"header claims \d+ bytes but the file has 10"),
    "header_not_json": (struct.pack("<Q", 16) + b"\x00\xffnot json at all", r"header is not JSON"),
    "header_is_a_list": (_header_bytes([1, 2, 3]), r"header is a JSON list, not an object"),
    "offsets_beyond_the_end": (
        _header_bytes({"w": _tensor(offsets=(0, 1 << 40))}) + bytes(16),
        r"tensor 'w' lies at bytes 0\.\.1099511627776, beyond the 16 bytes",
    ),
    "unknown_dtype": (_header_bytes({"w": _tensor(dtype="Q4_K")}) + bytes(16), r"unknown dtype 'Q4_K'"),
    "negative_shape": (_header_bytes({"w": _tensor(shape=(-1, 4))}) + bytes(16), r"shape \[-1, 4\]"),
    "shape_and_bytes_disagree": (
        _header_bytes({"w": _tensor(shape=(1 << 20, 1 << 20))}) + bytes(16),
        r"needs 4398046511104 bytes but is given 16",
    ),
    "renamed_gguf": (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + bytes(64), r"GGUF file renamed"),
}


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """model_copy(arch="llama") -> a writable copy of a tiny model folder to damage."""

    def make(arch: str = "llama") -> Path:
        dest = tmp_path / f"model-{arch}"
        shutil.copytree(tiny_model_dir(arch), dest)
        return dest

    return make


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_broken_safetensors_are_refused_by_export(case, model_copy, tmp_path):
    folder = model_copy()
    content, expect = SAFETENSORS_CASES[case]
    (folder / "model.safetensors").write_bytes(content)
    err = refused("export", folder, "--quant", "f16", "--out", tmp_path / "out", expect=expect)
    assert "model.safetensors" in err and "not a valid safetensors file" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", ["huge_header_length", "offsets_beyond_the_end", "renamed_gguf"])
def test_broken_safetensors_are_refused_before_training_loads_anything(case, model_copy, tmp_path):
    folder = model_copy()
    content, expect = SAFETENSORS_CASES[case]
    (folder / "model.safetensors").write_bytes(content)
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    refused(
        "train",
        "--model",
        folder,
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--max-steps",
        "1",
        "--no-quant",
        expect=expect,
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- config.json ----------------------------------------------------------------------------------------
CONFIG_CASES = {
    "not_json": (None, r"config\.json:3: not valid JSON"),
    "model_type_missing": ({"model_type": None}, r"model_type is missing"),
    "a_billion_layers": ({"num_hidden_layers": 10**9}, r"num_hidden_layers = 1000000000 \(expected an integer"),
    "negative_width": ({"hidden_size": -64}, r"hidden_size = -64"),
    "vocab_of_a_trillion": ({"vocab_size": 10**12}, r"vocab_size = 1000000000000"),
    "size_as_a_string": ({"hidden_size": "64"}, r"hidden_size = '64' \(expected an integer"),
    "heads_do_not_divide": (
        {"num_attention_heads": 5, "num_key_value_heads": 2},
        r"num_attention_heads = 5 is not a multiple of num_key_value_heads = 2",
    ),
    "more_layers_than_weights": ({"num_hidden_layers": 7}, r"says num_hidden_layers 7, but the weights hold 2 layers"),
    "vocab_disagrees_with_weights": ({"vocab_size": 4096}, r"says vocab_size 4096 x hidden_size \d+, but the weights"),
}


def _damage_config(folder: Path, change) -> None:
    path = folder / "config.json"
    if change is None:
        path.write_text('{\n  "model_type": "llama",\n  "hidden_size": 64 oops\n}\n')
        return
    cfg = json.loads(path.read_text())
    if "num_attention_heads" in change:  # let the head count alone decide the head width
        cfg.pop("head_dim", None)
    for key, value in change.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_absurd_config_json_is_refused(case, model_copy, tmp_path):
    folder = model_copy()
    change, expect = CONFIG_CASES[case]
    _damage_config(folder, change)
    err = refused("export", folder, "--quant", "f16", "--out", tmp_path / "out", expect=expect)
    assert str(folder / "config.json") in err


def test_absurd_config_is_refused_by_training_too(model_copy, tmp_path):
    folder = model_copy("qwen2")
    _damage_config(folder, {"num_hidden_layers": 10**9})
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    refused(
        "train",
        "--model",
        folder,
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--max-steps",
        "1",
        "--no-quant",
        expect=r"num_hidden_layers = 1000000000",
    )


# ---- tokenizer files ------------------------------------------------------------------------------------
def test_tokenizer_from_another_model_is_refused(model_copy, tmp_path, tiny_model_dir):
    folder = model_copy("llama")  # SentencePiece, 600-token embedding
    for f in folder.glob("tokenizer*"):
        f.unlink()
    for f in tiny_model_dir("qwen2").glob("*"):  # a bigger byte-level BPE tokenizer
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens", "chat_template")):
            shutil.copy2(f, folder / f.name)
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    refused(
        "train",
        "--model",
        folder,
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--max-steps",
        "1",
        "--no-quant",
        expect=r"the tokenizer in .* has \d+ tokens .*but the model's embedding has \d+ rows",
    )
    refused("export", folder, "--quant", "f16", "--out", tmp_path / "out", expect=r"model's embedding has \d+ rows")


def test_damaged_tokenizer_file_is_named(model_copy, tmp_path):
    folder = model_copy("qwen2")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": 12')
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    refused(
        "train",
        "--model",
        folder,
        "--data",
        data,
        "--out",
        tmp_path / "run",
        "--max-steps",
        "1",
        "--no-quant",
        expect=r"cannot load the tokenizer of .*tokenizer\.json",
    )


# ---- adapters -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from localtune.model.tiny import cached_tiny_model

    root = tmp_path_factory.mktemp("hostile-run")
    run = root / "run"
    assert train_tiny_run(cached_tiny_model("llama"), write_jsonl(root / "d.jsonl", FACTS), run).exit_code == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(finished_run, dest)
    return dest


def _rewrite_adapter(run: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file(edit(tensors), path)


def test_adapter_with_shapes_from_another_base_is_refused(run_copy, tmp_path):
    import torch

    def widen(tensors):  # as if trained on a model twice as wide
        return {k: torch.zeros(v.shape[0], v.shape[1] * 2) if ".lora_A." in k else v for k, v in tensors.items()}

    _rewrite_adapter(run_copy, widen)
    expect = r"lora_A\.weight has shape \[\d+, \d+\], but the base's .* needs \[\d+, \d+\]"
    refused("merge", run_copy, expect=expect)
    assert not (run_copy / "merged").exists()
    refused("export", run_copy, "--adapter", "--out", tmp_path / "out", expect=expect)
    assert not list((tmp_path / "out").glob("*.gguf"))


def test_adapter_for_a_module_the_base_lacks_is_refused(run_copy):
    def rename(tensors):
        return {k.replace("layers.0.", "layers.9."): v for k, v in tensors.items()}

    _rewrite_adapter(run_copy, rename)
    refused("merge", run_copy, expect=r"adapts model\.layers\.9\.\S+, which the base model does not have")


def test_adapter_from_a_different_base_fingerprint_is_refused(run_copy):
    info = json.loads((run_copy / "run.json").read_text())
    info["base"]["fingerprint"] = "0123456789abcdef"
    (run_copy / "run.json").write_text(json.dumps(info))
    refused("merge", run_copy, expect=r"error: adapter from a different base", code=2)
    assert not (run_copy / "merged").exists()


# ---- custom model code ----------------------------------------------------------------------------------
def test_custom_model_code_runs_only_with_trust_remote_code(model_copy, tmp_path):
    folder = model_copy("llama")
    marker = tmp_path / "custom-code-ran"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLlama"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import LlamaForCausalLM\n\n\nclass CustomLlama(LlamaForCausalLM):\n    pass\n"
    )
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    args = ["train", "--model", folder, "--data", data, "--max-steps", "1", "--no-quant"]
    refused(
        *args,
        "--out",
        tmp_path / "run1",
        expect=r"error: model needs custom code\n.*modeling_custom\.CustomLlama"
        r"(.|\n)*--trust-remote-code",
    )
    assert not marker.exists()
    ok = localtune_process(*args, "--out", tmp_path / "run2", "--trust-remote-code")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert marker.exists()  # the model's own code ran, because the user asked for it


# ---- pickles in checkpoints -----------------------------------------------------------------------------
class _Planted:
    """Unpickling this would run a command: what a tampered checkpoint file could hold."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(tmp_path, tiny_model_dir):
    import hashlib
    import pickle

    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    run = tmp_path / "run"
    cmd = ["train", "--model", tiny_model_dir("qwen2"), "--data", data, "--out", run, "--save-every", "1", "--no-quant"]
    first = localtune_process(*cmd, "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoint = sorted((run / "checkpoints").glob("step-*"))[-1]
    marker = tmp_path / "pickle-ran"
    planted = pickle.dumps({"numpy": _Planted(str(marker))})
    (checkpoint / "rng.pt").write_bytes(planted)
    manifest = json.loads((checkpoint / "manifest.json").read_text())  # forged to match, as an attacker would
    manifest["files"]["rng.pt"] = {"bytes": len(planted), "sha256": hashlib.sha256(planted).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(run / "adapter")
    refused(
        *cmd,
        "--max-steps",
        "3",
        "--resume",
        expect=r"error: checkpoint refused\ncannot resume from .*step-\d+: rng\.pt holds "
        r"more than tensors and plain values",
    )
    assert not marker.exists()
