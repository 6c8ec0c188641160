"""The atomic-write helper (localtune/files.py) where it can fail: a writer that raises, a folder that fails
half-way, a crash between the two renames of a folder replacement, and the fsyncs that make it durable."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from localtune import files


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class Boom(Exception):
    pass


def test_a_writer_that_raises_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "run.json"
    target.write_bytes(b'{"status": "finished"}\n')
    before = target.read_bytes()
    with pytest.raises(Boom):
        with files.atomic_file(target) as fh:
            fh.write('{"status": "runn')
            fh.flush()
            assert files.partial_name(target).is_file()  # written beside the target, under the one scheme
            raise Boom
    assert target.read_bytes() == before and hidden(tmp_path) == []
    with pytest.raises(Boom):
        with files.atomic_path(tmp_path / "model.gguf") as tmp:
            tmp.write_bytes(b"GGUF half")
            raise Boom
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_full_disk_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = files.write_text(tmp_path / "config.yaml", "model: old\n")
    real_replace = os.replace

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        files.write_text(target, "model: new\n")
    monkeypatch.setattr(os, "replace", real_replace)
    assert target.read_text() == "model: old\n" and hidden(tmp_path) == []


def test_partial_name_is_hidden_beside_the_target_and_per_process(tmp_path):
    assert files.partial_name(tmp_path / "adapter") == tmp_path / f".adapter.partial-{os.getpid()}"


def test_atomic_folder_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "adapter_model.safetensors").write_bytes(b"old weights")
    with pytest.raises(Boom):
        with files.atomic_folder(target) as tmp:
            (tmp / "adapter_config.json").write_text("{}")
            assert (target / "adapter_model.safetensors").read_bytes() == b"old weights"  # still there meanwhile
            raise Boom  # the save fails before the weights are written
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors"]
    assert (target / "adapter_model.safetensors").read_bytes() == b"old weights" and hidden(tmp_path) == []
    with files.atomic_folder(target) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        (tmp / "adapter_model.safetensors").write_bytes(b"new weights")
    assert (target / "adapter_model.safetensors").read_bytes() == b"new weights"
    assert hidden(tmp_path) == []  # neither the temporary folder nor the moved-aside old one is left


def test_atomic_folder_creates_a_missing_target_and_its_parents(tmp_path):
    with files.atomic_folder(tmp_path / "eval" / "20250101-120000") as tmp:
        (tmp / "report.json").write_text("{}")
    assert (tmp_path / "eval" / "20250101-120000" / "report.json").is_file()


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    target, new = tmp_path / "merged", tmp_path / "new"
    target.mkdir()
    (target / "config.json").write_text("old")
    new.mkdir()
    (new / "config.json").write_text("new")
    real_replace = os.replace

    def replace(src, dst):
        if os.fspath(src) == os.fspath(new):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        files.replace_folder(new, target)
    assert (target / "config.json").read_text() == "old" and hidden(tmp_path) == []


def test_recover_folder_after_a_crash_between_the_renames(tmp_path):
    target = tmp_path / "merged"
    target.mkdir()
    (target / "config.json").write_text("old")
    # What replace_folder leaves when the process dies between its two renames: the old copy moved aside
    # (under a dead process's name), the new one still under its temporary name, no target.
    moved = tmp_path / ".merged.old-999999"
    os.rename(target, moved)
    (tmp_path / ".merged.partial-999999").mkdir()
    assert not target.exists()
    assert files.recover_folder(target) is True
    assert (target / "config.json").read_text() == "old" and not moved.exists()
    assert files.recover_folder(target) is False  # nothing to do once the target is there
    assert files.recover_folder(tmp_path / "adapter") is False  # nothing moved aside: nothing to restore


def test_recover_folder_restores_the_newest_moved_aside_copy(tmp_path):
    target = tmp_path / "adapter"
    for pid, content in ((111, "older"), (222, "newer")):
        old = tmp_path / f".adapter.old-{pid}"
        old.mkdir()
        (old / "w").write_text(content)
        os.utime(old, (1000 + pid, 1000 + pid))
    assert files.recover_folder(target) and (target / "w").read_text() == "newer"


def counting_fsync(monkeypatch, dir_errno: int | None = None):
    """Replace os.fsync: record whether each call synced a file or a folder (and its path where known)."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        calls.append(("dir" if is_dir else "file", os.readlink(f"/proc/self/fd/{fd}")))
        if is_dir and dir_errno:
            raise OSError(dir_errno, os.strerror(dir_errno))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_a_file_and_its_folder_are_fsynced(tmp_path, monkeypatch):
    calls = counting_fsync(monkeypatch)
    files.write_json(tmp_path / "run.json", {"status": "running"})
    partial = str(files.partial_name(tmp_path / "run.json"))
    assert calls == [("file", partial), ("dir", str(tmp_path))]  # the data before the rename, the rename after


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_a_folder_is_fsynced_whole_before_it_takes_the_name(tmp_path, monkeypatch):
    calls = counting_fsync(monkeypatch)
    with files.atomic_folder(tmp_path / "step-000002") as tmp:
        (tmp / "optimizer.pt").write_bytes(b"o")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"x")
    tmp = str(files.partial_name(tmp_path / "step-000002"))
    assert sorted(c for c in calls if c[0] == "file") == [("file", f"{tmp}/optimizer.pt"), ("file", f"{tmp}/sub/x.bin")]
    assert ("dir", f"{tmp}/sub") in calls and ("dir", tmp) in calls
    assert calls[-1] == ("dir", str(tmp_path))  # last: the rename itself


def test_a_folder_that_cannot_be_synced_is_tolerated_but_a_failing_disk_is_not(tmp_path, monkeypatch):
    counting_fsync(monkeypatch, dir_errno=errno.EINVAL)  # FUSE and network mounts answer this
    files.write_text(tmp_path / "a.txt", "ok")
    assert (tmp_path / "a.txt").read_text() == "ok"
    counting_fsync(monkeypatch, dir_errno=errno.EIO)
    with pytest.raises(OSError, match="Input/output"):
        files.fsync_dir(tmp_path)


def test_a_file_that_does_not_reach_the_disk_never_takes_the_name(tmp_path, monkeypatch):
    target = files.write_bytes(tmp_path / "m.gguf", b"good")

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output"):
        files.write_bytes(target, b"new, but not on disk")
    assert target.read_bytes() == b"good" and hidden(tmp_path) == []
