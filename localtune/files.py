"""Writing files and folders under their final names, atomically.

Every writer in localtune that puts a file or a folder under a name other commands read (config.yaml,
run.json, checkpoints, the adapter, merged/, GGUFs, reports) goes through here, so a crash, a full
disk or Ctrl-C never leaves a half-written file under a final name:

1. write to a temporary name beside the target (`.NAME.partial-PID`, same folder, so the rename
   cannot cross file systems), flush and fsync it;
2. rename it over the target (atomic on POSIX and Windows for files);
3. fsync the parent folder, so the rename itself survives a power cut.

A folder that replaces an older one keeps the old one until the new one is complete: the old is moved
aside to `.NAME.old-PID`, the new renamed in, then the old deleted. A crash between the two renames
leaves the old copy beside the target, where `recover_folder` puts it back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def partial_name(target: str | os.PathLike) -> Path:
    """The temporary name a write to `target` goes to before its rename (hidden, per process)."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in `folder` durable. Where a folder cannot be opened (Windows) or
    synced (FUSE and network mounts answer EINVAL or ENOTSUP) that is no error: the rename has happened and
    the file's own data was synced. Any other failure (EIO) is raised: the new name may not be on disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
        fsync_dir(sub)
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name (a library's save function); on a clean
    exit the file it wrote there is fsync'd and renamed to `target`, on an error it is removed."""
    target = Path(target)
    tmp = partial_name(target)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces `target`, on an error it is removed."""
    with atomic_path(target) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
        yield fh


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_file(target) as fh:
        fh.write(text)
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(target, "wb") as fh:
        fh.write(data)
    return Path(target)


def write_json(target: str | os.PathLike, obj, *, indent: int | None = 2) -> Path:
    import json

    return write_text(target, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _old_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old-{os.getpid()}")


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder to fill; on a clean exit it takes `target`'s place. An existing `target`
    stays in place, complete, until the new folder is ready; then it is moved aside and deleted."""
    target = Path(target)
    tmp = partial_name(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `new` under the name `target`, keeping the old `target` until it is there."""
    new, target = Path(new), Path(target)
    old = None
    if target.exists():
        old = _old_name(target)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: str | os.PathLike) -> bool:
    """After a crash between the two renames of `replace_folder`: put a moved-aside copy back.
    True when one was restored."""
    target = Path(target)
    if target.exists():
        return False
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], target)
    fsync_dir(target.parent)
    return True
