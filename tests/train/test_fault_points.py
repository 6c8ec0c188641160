"""Kill (-9) and a full disk (ENOSPC) at every fault point of every writer, then check the invariants:
nothing incomplete under a final name, the previous good artifact untouched, re-running finishes.

The list of points is read from the source, so a new writer with a fault point is covered here.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
from helpers import chat, train_tiny_run, write_jsonl
from helpers import localtune_process as localtune

from localtune.converters.gguf_file import check_gguf
from localtune.train.checkpoint import CheckpointStore

REPO = Path(__file__).resolve().parents[2]
POINTS = sorted(
    {
        m
        for f in list((REPO / "localtune").rglob("*.py")) + list((REPO / "converters").rglob("*.py"))
        for m in re.findall(r'fault_point\("([\w.]+)"\)', f.read_text())
    }
)
TRAIN_POINTS = [p for p in POINTS if p.startswith(("checkpoint.", "adapter."))]
EXPORT_POINTS = [p for p in POINTS if p not in TRAIN_POINTS]
FACTS = [chat(f"What is item {i}?", f"Item {i} is a small red thing numbered {i * 7}.") for i in range(8)]


def test_every_point_is_exercised():
    assert len(POINTS) >= 10 and set(TRAIN_POINTS) | set(EXPORT_POINTS) == set(POINTS)
    assert {"checkpoint.rename", "merge.rename", "gguf.tensors", "quantize.done", "verify.save"} <= set(POINTS)


def check_run_invariants(run: Path) -> None:
    store = CheckpointStore(run / "checkpoints", keep=2, warn=lambda m: None)
    for folder in store.complete():  # anything under a final step name is complete and verifies
        store.verify(folder)
    adapter = run / "adapter"
    if adapter.exists():
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()


def fault_outcome(result, action: str, point: str) -> None:
    if action == "kill":
        assert result.returncode == -signal.SIGKILL, result.stderr[-1500:]
    else:
        assert result.returncode == 2, result.stderr[-1500:]
        assert "error: disk full" in result.stderr and "no space left" in result.stderr
        assert "Traceback" not in result.stderr
        if point != "verify.save":  # every artifact but the few-KB report says how much space it needs
            needed = re.search(r"it needs about (\d+(?:\.\d+)?) (B|KB|MB|GB)", result.stderr)
            assert needed and float(needed.group(1)) > 0, result.stderr[-1500:]


@pytest.mark.parametrize("action", ["kill", "enospc"])
@pytest.mark.parametrize("point", TRAIN_POINTS)
def test_training_survives_a_fault_at(point, action, tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", FACTS)
    run = tmp_path / "run"
    cmd = [
        "train",
        "--model",
        tiny_model_dir("qwen2"),
        "--data",
        data,
        "--out",
        run,
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--no-quant",
    ]
    fault_outcome(localtune(*cmd, fault=f"{point}:{action}"), action, point)
    check_run_invariants(run)
    has_checkpoint = bool(CheckpointStore(run / "checkpoints", 2, lambda m: None).complete())
    again = localtune(*(cmd + ["--resume"] if has_checkpoint else cmd))
    assert again.returncode == 0, again.stderr[-1500:]
    check_run_invariants(run)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A finished run, plus an earlier good export (f32 of the base) that every fault must leave intact."""
    from localtune.converters.hf_to_gguf import convert

    root = tmp_path_factory.mktemp("finished")
    train_tiny_run(tiny_model_dir("llama"), write_jsonl(root / "d.jsonl", FACTS), root / "run")
    (root / "run" / "gguf").mkdir()
    convert(tiny_model_dir("llama"), root / "run" / "gguf" / "run-F32.gguf", out_type="f32")
    return root / "run"


def check_export_invariants(run: Path, before: dict[str, bytes]) -> None:
    for gguf in (run / "gguf").glob("*.gguf") if (run / "gguf").is_dir() else []:
        check_gguf(gguf)  # every file under a final name is complete and valid
    for name, content in before.items():  # the previous good files are untouched
        assert (run / "gguf" / name).read_bytes() == content
    merged = run / "merged"
    if merged.exists():
        assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))


@pytest.mark.parametrize("action", ["kill", "enospc"])
@pytest.mark.parametrize("point", EXPORT_POINTS)
def test_export_survives_a_fault_at(point, action, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {"run-F32.gguf": (run / "gguf" / "run-F32.gguf").read_bytes()}
    faulted = localtune("export", run, "--quant", "q8_0,q4_k_m", fault=f"{point}:{action}")
    fault_outcome(faulted, action, point)
    check_export_invariants(run, before)
    again = localtune("export", run, "--quant", "q8_0,q4_k_m")
    assert again.returncode == 0, again.stderr[-1500:]
    check_export_invariants(run, before)
    named = re.search(r"while writing (\S+\.gguf) in (\S+) .*it needs about ([\d.]+) (KB|MB|GB)", faulted.stderr)
    if action == "enospc" and named:  # the space it asked for is about what the finished file takes
        needed = float(named.group(3)) * {"KB": 1e3, "MB": 1e6, "GB": 1e9}[named.group(4)]
        actual = (Path(named.group(2)) / named.group(1)).stat().st_size
        assert 0.5 < needed / actual < 2, (needed, actual)
    for name in ("run-Q8_0.gguf", "run-Q4_K_M.gguf"):
        assert json.loads((run / "gguf" / f"{name}.verify.json").read_text())["passed"]
