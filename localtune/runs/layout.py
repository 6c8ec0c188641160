"""The run folder: every path in it, "is this a run folder", and its typed record `run.json`.

One class knows where things live, so no other module joins a name onto a RUN_DIR:

    RUN_DIR/
      config.yaml           the run's configuration (Config.save)
      run.json              RunInfo: status, pid, base and data identity, results
      events.jsonl          every event the run emitted (events.JsonlSink; read back typed)
      train.log             stdout and stderr of a training started by workspace.start_training
      library.log           warnings and log records of transformers/peft (localtune/console.py)
      chat_template.jinja   the template training rendered with (merge and export embed it)
      checkpoints/          step-NNNNNN/ folders (train/checkpoint.py)
      adapter/              the final LoRA adapter (peft format)
      merged/               the adapter merged into a 16-bit base (a Hugging Face folder)
      gguf/                 the export bundle: <run>-<TYPE>.gguf, base-<TYPE>.gguf, <run>-adapter-<TYPE>.gguf,
                            soft_prompt.safetensors (prompt/P-tuning), prefix.safetensors (prefix tuning),
                            *.verify.json, Modelfile, README.md
      eval/<timestamp>/     `localtune eval` reports
      quick.json            the phases `localtune quick` has finished
      .localtune.lock       the one-writer lock (runs/lock.py)

`run.json` is only ever written whole, through `RunInfo.save` (files.write_json), so a reader sees the
old record or the new one, never half of one. Imports neither torch nor textual.

Use as:  run = RunDir(path); info = run.load_info(); info.status = RUNNING; run.save_info(info)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from localtune import files
from localtune.errors import UsageError
from localtune.events import json_safe

# Statuses in run.json. CRASHED is never written: workspace.summarize says it of a run whose process is
# gone without having recorded an end (killed, out of memory, power cut).
STARTING = "starting"  # the process is starting (importing, loading data); start_training writes it first
RUNNING = "running"  # the training loop runs
FINISHED = "finished"
STOPPED_EARLY = "stopped_early"  # finished before its planned steps (early stopping)
INTERRUPTED = "interrupted"  # stopped by a signal; resumable from its last checkpoint
FAILED = "failed"  # stopped by an error; RunInfo.error (and a Failed event) says which
CRASHED = "crashed"
LIVE = (STARTING, RUNNING)  # a process should be alive for these
DONE = (FINISHED, STOPPED_EARLY)  # an adapter is there

BASE_STEM = "base"  # the bundle's GGUFs of the base model: base-<TYPE>.gguf
LOCK_NAME = ".localtune.lock"

FREEZE_CONFIG = "freeze.json"  # freeze tuning's adapter description (model/freeze.py)


class RunFolderError(UsageError):
    title = "not a usable run folder"


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists and has not exited (a zombie, exited but not yet reaped, has)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def gguf_name(stem: str, out_type: str) -> str:
    """The file name of an exported GGUF: `<stem>-<TYPE>.gguf` (the run's name, or BASE_STEM for the base)."""
    return f"{stem}-{out_type.upper()}.gguf"


def adapter_gguf_name(run_name: str, out_type: str) -> str:
    return f"{run_name}-adapter-{out_type.upper()}.gguf"


def is_base_gguf(path: Path) -> bool:
    return path.name.startswith(f"{BASE_STEM}-")


def is_adapter_gguf(path: Path) -> bool:
    return "-adapter-" in path.name


# ---- run.json --------------------------------------------------------------------------------------------
def _float(v: Any) -> float | None:
    """A float as run.json stores it: non-finite values are text ("nan") so the file stays strict JSON."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class BaseInfo:
    """The base model a run trained on (model.loading.Base.identity)."""

    model: str = ""  # what --model said: hub id, folder, .gguf or 'smollm2'
    model_type: str = ""  # e.g. "llama", "qwen2"
    fingerprint: str = ""  # of the weight files; merge refuses an adapter from another base


@dataclass
class DataInfo:
    fingerprint: str = ""  # of the tokenized training rows; resume refuses other data
    train_rows: int = 0
    val_rows: int = 0


@dataclass
class RunInfo:
    """What `run.json` records about a run. Unknown keys (another version's) are kept in `extra` and
    written back, so an older localtune does not erase what a newer one recorded."""

    status: str = STARTING
    started: str = ""  # local time the process started, 2025-01-31T12:00:00
    pid: int | None = None  # the training process, while STARTING or RUNNING
    log_offset: int | None = None  # where this start's output begins in train.log (start_training)
    error: str = ""  # FAILED: the rendered error, as the CLI printed it
    base: BaseInfo | None = None
    data: DataInfo | None = None
    device: str = ""
    dtype: str = ""
    quantized: bool = False
    method: str = "lora"  # adapter.method (localtune/methods.py)
    micro_batch: int = 0
    grad_accum: int = 0
    world_size: int = 1  # data-parallel ranks (train/world.py)
    steps: int = 0
    tokens_seen: int = 0
    peak_memory_bytes: int = 0
    final_loss: float | None = None
    losses: list[float] = field(default_factory=list)  # training loss per optimizer step
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    eval_loss: float | None = None  # the last validation loss
    seconds: float | None = None
    adapter: str = ""  # the final adapter folder, once written
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        """Whether the record says a process is at work (see workspace.summarize for whether it is)."""
        return self.status in LIVE

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if isinstance(v, (BaseInfo, DataInfo)):
                v = {g.name: getattr(v, g.name) for g in fields(v)}
            elif f.name == "eval_losses":
                v = [list(pair) for pair in v]
            d[f.name] = v
        return json_safe(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunInfo:
        known = {f.name for f in fields(cls)}
        info = cls(extra={k: v for k, v in d.items() if k not in known and k != "extra"})
        for key in ("status", "started", "error", "device", "dtype", "adapter"):
            if isinstance(d.get(key), str):
                setattr(info, key, d[key])
        for key in ("pid", "log_offset"):
            if isinstance(d.get(key), int):
                setattr(info, key, d[key])
        for key in ("micro_batch", "grad_accum", "world_size", "steps", "tokens_seen", "peak_memory_bytes"):
            if isinstance(d.get(key), (int, float)):
                setattr(info, key, int(d[key]))
        info.quantized = bool(d.get("quantized", False))
        info.final_loss, info.eval_loss, info.seconds = (
            _float(d.get(k)) for k in ("final_loss", "eval_loss", "seconds")
        )
        info.losses = [x for x in map(_float, d.get("losses") or []) if x is not None]
        info.eval_losses = [
            (int(p[0]), _float(p[1]))
            for p in d.get("eval_losses") or []
            if isinstance(p, (list, tuple))
            and len(p) == 2
            and isinstance(p[0], (int, float))
            and _float(p[1]) is not None
        ]
        for key, kind in (("base", BaseInfo), ("data", DataInfo)):
            if isinstance(d.get(key), dict):
                names = {g.name for g in fields(kind)}
                setattr(info, key, kind(**{k: v for k, v in d[key].items() if k in names}))
        return info

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunInfo:
        """The record in `path`; RunFolderError (naming the file) if it is missing or unreadable."""
        import json

        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunFolderError(
                f"{path} is missing: {path.parent} holds no record of a training run",
                hint="give the RUN_DIR that `localtune train --out` wrote",
            ) from None
        except (OSError, ValueError) as exc:
            raise RunFolderError(
                f"{path} cannot be read ({exc})",
                hint="restore it from a copy of the run folder, or train again into a new --out",
            ) from None
        if not isinstance(d, dict):
            raise RunFolderError(
                f"{path} holds a JSON {type(d).__name__}, not a run record", hint="train again into a new --out"
            )
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> Path:
        return files.write_json(path, self.to_dict(), indent=1)


# ---- the folder ------------------------------------------------------------------------------------------
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)$")
LIBRARY_LOG = "library.log"  # library warnings, in a run folder or beside exported GGUFs


class RunDir:
    """A run folder: the path of everything in it. Creating one touches nothing on disk."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # files
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def train_log(self) -> Path:
        return self.path / "train.log"

    @property
    def library_log(self) -> Path:
        """Warnings and log records of transformers/peft during this run's commands (localtune/console.py)."""
        return self.path / LIBRARY_LOG

    @property
    def chat_template(self) -> Path:
        return self.path / "chat_template.jinja"

    @property
    def quick_json(self) -> Path:
        return self.path / "quick.json"

    @property
    def lock(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def write_probe(self) -> Path:
        """A file check_writable creates and deletes to prove the folder is writable."""
        return self.path / ".write-test"

    # folders
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def gguf(self) -> Path:
        return self.path / "gguf"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def card(self) -> Path:
        """The export bundle's model card."""
        return self.gguf / "README.md"

    @property
    def modelfile(self) -> Path:
        return self.gguf / "Modelfile"

    @property
    def soft_prompt(self) -> Path:
        """Prompt tuning / P-tuning: the learned vectors, for the base GGUF's input embeddings in localtune chat."""
        return self.gguf / "soft_prompt.safetensors"

    @property
    def prefix_sidecar(self) -> Path:
        """Prefix tuning: the learned K/V for llama.cpp's cache (converters.prefix_sidecar.SIDECAR_NAME)."""
        return self.gguf / "prefix.safetensors"

    # what is there
    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """Whether `path` is a run folder: localtune recorded a run there (run.json, which start_training
        writes before the process runs) or saved a run's configuration (config.yaml)."""
        run = RunDir(path)
        return run.run_json.is_file() or run.config.is_file()

    @property
    def has_adapter(self) -> bool:
        """A peft adapter, or freeze tuning's trained tensors (model/freeze.py)."""
        return (self.adapter / "adapter_config.json").is_file() or (self.adapter / FREEZE_CONFIG).is_file()

    @property
    def has_merged(self) -> bool:
        return (self.merged / "config.json").is_file()

    def gguf_files(self) -> list[Path]:
        """Every exported GGUF of the bundle (tuned, base and adapter), by name."""
        return sorted(self.gguf.glob("*.gguf")) if self.gguf.is_dir() else []

    def tuned_ggufs(self) -> list[Path]:
        """The fine-tuned model's GGUFs, one per type."""
        return [p for p in self.gguf_files() if not is_base_gguf(p) and not is_adapter_gguf(p)]

    def base_ggufs(self) -> list[Path]:
        return [p for p in self.gguf_files() if is_base_gguf(p)]

    # run.json
    def load_info(self) -> RunInfo:
        """run.json, typed; RunFolderError if it is missing or unreadable."""
        return RunInfo.load(self.run_json)

    def read_info(self) -> RunInfo | None:
        """run.json, typed, or None when there is none that reads (for listings, which show what they can)."""
        try:
            return self.load_info()
        except RunFolderError:
            return None

    def save_info(self, info: RunInfo) -> Path:
        return info.save(self.run_json)

    # after a crash
    def recover(self, warn=lambda message: None) -> list[str]:
        """Undo what a crash mid-write left: an adapter/ or merged/ moved aside but not replaced is put back
        (files.recover_folder), and temporary copies of processes that are gone are deleted, here and in
        gguf/. Returns what it did, one line each (also passed to `warn`)."""
        done = []
        for folder in (self.adapter, self.merged):
            if files.recover_folder(folder):
                done.append(f"restored {folder} (a replacement was interrupted)")
        for parent in (self.path, self.gguf, self.eval):
            if not parent.is_dir():
                continue
            for p in parent.iterdir():
                m = _LEFTOVER.match(p.name)
                if not m or int(m["pid"]) != os.getpid() and pid_alive(int(m["pid"])):
                    continue  # not a temporary name, or one a live process is writing
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                done.append(f"removed {p} (left by an interrupted write)")
        for line in done:
            warn(line)
        return done
