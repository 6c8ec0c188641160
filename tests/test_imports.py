"""Import hygiene, proven in fresh interpreters: the core never loads textual, --help never loads torch,
and the wheel ships tui/ and converters/ inside the localtune namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "textual", "peft", "bitsandbytes", "llama_cpp", "pyarrow", "numpy")


def loaded_after(code: str, *argv: str) -> set[str]:
    """Run `code` in a fresh interpreter; return which HEAVY modules it imported."""
    probe = (
        f"import sys\nsys.argv = {['localtune', *argv]!r}\ntry:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "except SystemExit:\n    pass\n"
        + f"import json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=REPO.parent,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_core_never_imports_textual():
    code = (
        "import localtune, localtune.config, localtune.errors, localtune.cli, localtune.model.source\n"
        "import localtune.data, localtune.data.inspect, localtune.converters, localtune.converters.quants\n"
        "import localtune.model.tiny"
    )
    assert "textual" not in loaded_after(code)


def test_data_pipeline_with_a_model_never_imports_textual(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    code = (
        "from localtune.model.tiny import build_tiny_model\n"
        "from localtune.config import DataConfig\n"
        "from localtune.data import prepare_data\n"
        "from localtune.model.source import load_tokenizer, resolve_model\n"
        f"d = build_tiny_model('qwen2', {str(tmp_path / 'm')!r})\n"
        "tok = load_tokenizer(resolve_model(str(d)))\n"
        f"prepare_data(DataConfig(path={str(data)!r}), tok, seed=0)"
    )
    loaded = loaded_after(code)
    assert "torch" in loaded  # the probe really ran the heavy path
    assert "textual" not in loaded


PACKAGES = (
    "localtune",
    "localtune.cli",
    "localtune.data",
    "localtune.model",
    "localtune.train",
    "localtune.train.speed",
    "localtune.export",
    "localtune.chat",
    "localtune.runs",
    "localtune.evaluation",
    "localtune.converters",
)


def test_every_package_imports_without_torch():
    """A package's __init__ re-exports only torch-free names: importing every stage stays fast (the TUI
    and --help import several of them)."""
    loaded = loaded_after("\n".join(f"import {p}" for p in PACKAGES))
    assert not loaded & {"torch", "transformers", "textual", "peft", "llama_cpp"}


@pytest.mark.parametrize(
    "argv", [("--help",), ("--version",), ("data", "--help"), ("data", "inspect", "--help"), ("config",)]
)
def test_cli_start_up_does_not_import_torch(argv):
    loaded = loaded_after("from localtune.cli import main\nmain()", *argv)
    assert not loaded & {"torch", "transformers", "textual", "numpy"}


def test_inspect_without_model_does_not_import_torch(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hello"}\n')
    loaded = loaded_after("from localtune.cli import main\nmain()", "data", "inspect", str(data))
    assert not loaded & {"torch", "transformers", "textual"}


def test_console_script_help_and_version():
    exe = Path(sys.executable).parent / "localtune"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "data" in proc.stdout and "Fine-tune an LLM" in proc.stdout
    from localtune import __version__

    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_wheel_puts_tui_and_converters_inside_localtune(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("localtune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "localtune/tui/__init__.py" in names and "localtune/converters/quants.py" in names
    assert "localtune/tui/app.tcss" in names and "localtune/tui/screens/new_run.py" in names  # CSS and screens ship
    assert "localtune/data/dataset.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"localtune", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}


def test_layer_contracts_hold():
    """The static twin of the runtime tests above: import-linter checks every import, lazy ones too,
    against the layers in pyproject.toml (faces -> quick -> export/eval -> train -> model/data -> core) and
    that no core module imports textual."""
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ruff_lint_and_format_are_clean():
    """ruff (pinned in the dev extra, configured in pyproject.toml) finds nothing to fix or reformat."""
    check = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], capture_output=True, text=True, cwd=REPO
    )
    assert check.returncode == 0, check.stdout[-4000:]
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], capture_output=True, text=True, cwd=REPO
    )
    assert fmt.returncode == 0, fmt.stdout[-4000:]
