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

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from localtune.faults import disk_full, fault_point

MANIFEST = "manifest.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"
FORMAT_VERSION = 1


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


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. Some filesystems (FUSE and network mounts) cannot sync a folder and
    say EINVAL or ENOTSUP: the rename has happened and the file's own data was synced, so that is not an error."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


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
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and p.name.startswith(PREFIX) and (p / MANIFEST).is_file())

    def remove_stale(self) -> None:
        """Delete partial saves left by a crash: temporary folders and step folders without a manifest."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            partial = p.name.startswith(TMP_PREFIX) or (p.name.startswith(PREFIX) and not (p / MANIFEST).is_file())
            if p.is_dir() and partial:
                shutil.rmtree(p, ignore_errors=True)
                self.warn(f"removed incomplete checkpoint {p} (left by an interrupted save)")

    def save(self, snap: Snapshot, write_adapter: Callable[[Path], None]) -> Path:
        import torch

        self.saves += 1
        self.root.mkdir(parents=True, exist_ok=True)
        final = step_dir(self.root, snap.step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            write_adapter(tmp)
            fault_point("checkpoint.adapter")
            torch.save(snap.optimizer, tmp / "optimizer.pt")
            fault_point("checkpoint.optimizer")
            torch.save(snap.scheduler, tmp / "scheduler.pt")
            torch.save(_rng_to_tensors(snap.rng), tmp / "rng.pt")
            (tmp / "loop_state.json").write_text(json.dumps(snap.loop, indent=1))
            files = {}
            for f in sorted(tmp.iterdir()):
                fsync_file(f)
                files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            manifest = {"format": FORMAT_VERSION, "step": snap.step, "files": files, "identity": snap.identity}
            fault_point("checkpoint.manifest")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
            fsync_file(tmp / MANIFEST)
            fsync_dir(tmp)
            fault_point("checkpoint.rename")
            if final.exists():  # the same step saved again (after an OOM restart): swap atomically
                old = self.root / f"{TMP_PREFIX}old-{final.name}-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_dir(self.root)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and (full := disk_full(exc, f"checkpoint {final.name}", self.root,
                                                               self._expected_bytes(snap))):
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
    """numpy's state tuple holds an array; store its key as a tensor so weights_only loading accepts it."""
    import torch

    if "numpy" not in rng:
        return rng
    name, keys, pos, has_gauss, cached = rng["numpy"]
    return {**rng, "numpy": (name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)}


def _rng_from_tensors(rng: dict) -> dict:
    if "numpy" not in rng:
        return rng
    name, keys, pos, has_gauss, cached = rng["numpy"]
    return {**rng, "numpy": (name, keys.numpy().astype("uint32"), pos, has_gauss, cached)}


def _load_data(path: Path):
    """A .pt file of tensors and plain values; anything that would need code to unpickle is refused."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path.name} holds more than tensors and plain values, or is damaged "
                              f"({str(exc).splitlines()[0][:200]})") from None
