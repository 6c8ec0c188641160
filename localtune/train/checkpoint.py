"""All-or-nothing checkpoints: written to a temporary folder, fsync'd, manifest last, one rename.

A checkpoint folder `checkpoints/step-NNNNNN/` holds the adapter (peft format), the optimizer and
scheduler states, the RNG states, the loop state, and `manifest.json` (every file's size and
sha256, the step, and the identity of the config, data and base model). A folder without a valid
manifest is incomplete and never resumed from; a stale temporary folder is removed with a warning.
Rotation keeps the newest K complete checkpoints, deletes only after a new one is complete, and never
deletes the checkpoint this process resumed from.

The `.pt` files hold only tensors and plain values (numpy's RNG state is stored as a tensor), and are
read back with torch's `weights_only` loader, which refuses anything that would run code: a planted
pickle in a checkpoint folder is an error, never an execution.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localtune.faults import disk_full, fault_point
from localtune.files import atomic_folder, recover_folder

MANIFEST = "manifest.json"
PREFIX = "step-"
FORMAT_VERSION = 1
_OLD = re.compile(rf"^\.(?P<name>{PREFIX}\d+)\.old-\d+$")  # files.replace_folder's moved-aside copy


class CheckpointError(Exception):
    pass


@dataclass
class Snapshot:
    """Everything needed to continue a run exactly (what a checkpoint holds, in memory)."""

    step: int
    adapter: dict[str, Any]  # LoRA tensors
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    loop: dict[str, Any]
    identity: dict[str, Any]


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:06d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CheckpointStore:
    def __init__(self, root: Path, keep: int, warn: Callable[[str], None]):
        self.root = Path(root)
        self.keep = keep
        self.warn = warn
        self.protected: set[str] = set()  # the resume source
        self.saves = 0

    def complete(self) -> list[Path]:
        """Folders with a manifest, oldest first (validity is checked on load)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / MANIFEST).is_file()
        )

    def remove_stale(self) -> None:
        """Undo what a crash left: a checkpoint moved aside while the same step was saved again is put back
        if its replacement never arrived; temporary folders (every hidden one here: `.step-N.partial-PID`,
        `.step-N.old-PID`, and older versions' `.tmp-*`) and step folders without a manifest are deleted."""
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir()):
            m = _OLD.match(p.name)
            if m and p.is_dir() and recover_folder(self.root / m["name"]):
                self.warn(f"restored checkpoint {self.root / m['name']} (its replacement was interrupted)")
        for p in sorted(self.root.iterdir()):
            partial = p.name.startswith(".") or (p.name.startswith(PREFIX) and not (p / MANIFEST).is_file())
            if p.is_dir() and partial:
                shutil.rmtree(p, ignore_errors=True)
                self.warn(f"removed incomplete checkpoint {p} (left by an interrupted save)")

    def save(self, snap: Snapshot, write_adapter: Callable[[Path], None]) -> Path:
        import torch

        self.saves += 1
        self.root.mkdir(parents=True, exist_ok=True)
        final = step_dir(self.root, snap.step)
        try:
            # Filled under a temporary name, every file fsync'd, then one rename (files.atomic_folder). The same
            # step saved again (after an OOM restart) replaces the old copy only once the new one is complete.
            with atomic_folder(final) as tmp:
                write_adapter(tmp)
                fault_point("checkpoint.adapter")
                torch.save(snap.optimizer, tmp / "optimizer.pt")
                fault_point("checkpoint.optimizer")
                torch.save(snap.scheduler, tmp / "scheduler.pt")
                torch.save(_rng_to_tensors(snap.rng), tmp / "rng.pt")
                (tmp / "loop_state.json").write_text(json.dumps(snap.loop, indent=1))
                listed = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir())}
                manifest = {"format": FORMAT_VERSION, "step": snap.step, "files": listed, "identity": snap.identity}
                fault_point("checkpoint.manifest")
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: it marks the folder complete
                fault_point("checkpoint.rename")
        except OSError as exc:
            if full := disk_full(exc, f"checkpoint {final.name}", self.root, self._expected_bytes(snap)):
                raise full from None
            raise
        self._rotate()
        return final

    def _expected_bytes(self, snap: Snapshot) -> int:
        """About how large a checkpoint is: the newest complete one, else the optimizer state plus the
        fp32 adapter (half the size of Adam's two fp32 moments)."""
        done = self.complete()
        if done:
            return sum(f.stat().st_size for f in done[-1].iterdir())
        import torch

        def tensor_bytes(obj) -> int:
            if isinstance(obj, torch.Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(tensor_bytes(v) for v in obj.values())
            if isinstance(obj, (list, tuple)):
                return sum(tensor_bytes(v) for v in obj)
            return 0

        state = tensor_bytes(snap.optimizer.get("state", {}))
        return state + state // 2

    def _rotate(self) -> None:
        done = self.complete()
        for old in done[: max(0, len(done) - self.keep)]:
            if old.name not in self.protected:
                # The manifest goes first: a crash mid-delete leaves a folder that no longer claims to be complete.
                (old / MANIFEST).unlink(missing_ok=True)
                shutil.rmtree(old, ignore_errors=True)

    def verify(self, folder: Path) -> dict:
        """The manifest, if every listed file is present with its size and hash; else CheckpointError."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"unreadable manifest ({exc})") from None
        for name, meta in manifest.get("files", {}).items():
            f = folder / name
            if not f.is_file():
                raise CheckpointError(f"{name} is missing")
            if f.stat().st_size != meta["bytes"]:
                raise CheckpointError(f"{name} has {f.stat().st_size} bytes, the manifest says {meta['bytes']}")
            if _sha256(f) != meta["sha256"]:
                raise CheckpointError(f"{name} does not match its hash in the manifest")
        return manifest

    def latest_valid(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that verifies; damaged newer ones are reported and skipped."""
        for folder in reversed(self.complete()):
            try:
                return folder, self.verify(folder)
            except CheckpointError as exc:
                self.warn(f"checkpoint {folder} is damaged ({exc}); falling back to an earlier one")
        return None

    def load(self, folder: Path, manifest: dict, read_adapter: Callable[[Path], dict]) -> Snapshot:
        return Snapshot(
            step=manifest["step"],
            adapter=read_adapter(folder),
            optimizer=_load_data(folder / "optimizer.pt"),
            scheduler=_load_data(folder / "scheduler.pt"),
            rng=_rng_from_tensors(_load_data(folder / "rng.pt")),
            loop=json.loads((folder / "loop_state.json").read_text()),
            identity=manifest["identity"],
        )


def _rng_to_tensors(rng: dict) -> dict:
    """numpy's state tuple holds an array; store its key as a tensor so weights_only loading accepts it.
    A data-parallel run's checkpoint holds every rank's state too, under "ranks" (loop.py)."""
    import torch

    if "ranks" in rng:
        rng = {**rng, "ranks": [_rng_to_tensors(r) for r in rng["ranks"]]}
    if "numpy" not in rng:
        return rng
    name, keys, pos, has_gauss, cached = rng["numpy"]
    return {**rng, "numpy": (name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)}


def _rng_from_tensors(rng: dict) -> dict:
    if "ranks" in rng:
        rng = {**rng, "ranks": [_rng_from_tensors(r) for r in rng["ranks"]]}
    if "numpy" not in rng:
        return rng
    name, keys, pos, has_gauss, cached = rng["numpy"]
    return {**rng, "numpy": (name, keys.numpy().astype("uint32"), pos, has_gauss, cached)}


def _load_data(path: Path):
    """A .pt file of tensors and plain values; anything that would need code to unpickle is refused."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")  # the optimizer moves its state to its params
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CheckpointError(
            f"{path.name} holds more than tensors and plain values, or is damaged ({str(exc).splitlines()[0][:200]})"
        ) from None
