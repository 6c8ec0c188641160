"""Safe GGUF files: written under a temporary name, validated, then renamed; hostile files refused.

`check_gguf` reads only the header and tensor table (no tensor data) and refuses, quickly and with a
clear message, anything that is not a well-formed GGUF: wrong magic, unknown version, absurd counts
or dimensions, strings or tensors reaching past the end of the file, missing required keys. Only a
file that passes is handed to llama.cpp.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from localtune.errors import LocaltuneError
from localtune.faults import disk_full, fault_point
from localtune.files import atomic_path

MAGIC = b"GGUF"
MAX_COUNT = 1 << 20  # tensors or metadata entries; real models have a few thousand
MAX_DIMS = 4
REQUIRED_MODEL_KEYS = ("general.architecture",)
REQUIRED_ARCH_KEYS = ("context_length", "embedding_length", "block_count")


class ConversionError(LocaltuneError):
    exit_code = 2
    title = "export failed"


class GGUFError(LocaltuneError):
    exit_code = 2
    title = "not a valid GGUF file"


@contextlib.contextmanager
def safe_output(final: Path, expected_bytes: int | None = None):
    """Yield a temporary path next to `final`; on success validate, sync and rename, else delete it.

    The previous good file under the final name is untouched until the rename (files.atomic_path: the
    file is fsync'd before the final name can point at it, so a crash never leaves a hollow file).
    `expected_bytes`, when known, is what a full disk's message says the file needs.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(final) as tmp:
            yield tmp
            fault_point("gguf.validate")
            check_gguf(tmp)
            fault_point("gguf.rename")
    except OSError as exc:
        if full := disk_full(exc, final.name, final.parent, expected_bytes):
            raise full from None
        raise


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict = field(default_factory=dict)  # scalar and string values; arrays as (type, length)
    tensors: dict = field(default_factory=dict)  # name -> (dims, ggml type, offset)

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "")


# GGUF metadata value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class _Reader:
    """Bounds-checked reads over a memory map of the file: only the header pages are touched, and the
    ~100k strings of a vocabulary parse without a system call each."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        self.fh = open(path, "rb")
        self.buf = mmap.mmap(self.fh.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        self.pos = 0

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        self.fh.close()

    def skip(self, n: int, what: str) -> int:
        """Advance past n bytes; returns where they start."""
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(
                f"{self.path}: {what} reaches past the end of the file ({self.size} bytes): the file "
                "is truncated or corrupt",
                hint="re-export or re-download it",
            )
        start, self.pos = self.pos, self.pos + n
        return start

    def take(self, n: int, what: str) -> bytes:
        start = self.skip(n, what)
        return self.buf[start : self.pos]

    def unpack(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.skip(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        return self.take(n, what).decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth == 0:
            itype, count = self.unpack("<I", what), self.unpack("<Q", what)
            if itype in _SCALARS:  # skip the payload without reading it
                self.skip(struct.calcsize(_SCALARS[itype]) * count, what)
            elif itype == _STRING:  # a vocabulary: ~100k lengths to hop over, so the loop is kept tight
                pos, length = self.pos, _U64.unpack_from
                for _ in range(count):
                    if pos + 8 > self.size:
                        pos = self.size + 1  # no room for the next length: truncated
                        break
                    pos += 8 + length(self.buf, pos)[0]
                self.skip(pos - self.pos, what)  # raises if the strings run past the end
            else:
                raise GGUFError(f"{self.path}: {what} is an array of unsupported type {itype}")
            return ("array", count)
        raise GGUFError(f"{self.path}: {what} has unknown value type {vtype}", hint="the file is corrupt")


def check_gguf(path: str | os.PathLike, *, require_model: bool = True) -> GGUFInfo:
    """Validate header, metadata, tensor table and data bounds. Raises GGUFError."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file", hint="check the path")
    r = _Reader(path)
    try:
        head = r.take(4, "the magic number") if r.size >= 4 else b""
        if head != MAGIC:
            hint = (
                "this looks like a safetensors file, not GGUF; export it with `localtune export`"
                if head[:1] in (b"\x00", b"{") or path.suffix == ".safetensors"
                else "give a .gguf file"
            )
            raise GGUFError(f"{path}: does not start with 'GGUF' (found {head!r})", hint=hint)
        version = r.unpack("<I", "the version")
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = r.unpack("<Q", "the tensor count"), r.unpack("<Q", "the metadata count")
        if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
            raise GGUFError(
                f"{path}: claims {n_tensors} tensors and {n_kv} metadata entries", hint="the file is corrupt"
            )
        info = GGUFInfo(path, version)
        for i in range(n_kv):
            key = r.string(f"metadata key {i}")
            info.metadata[key] = r.value(r.unpack("<I", f"type of {key}"), f"metadata {key!r}")
        for i in range(n_tensors):
            name = r.string(f"tensor name {i}")
            n_dims = r.unpack("<I", f"dimensions of {name}")
            if n_dims == 0 or n_dims > MAX_DIMS:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions")
            dims = [r.unpack("<Q", f"shape of {name}") for _ in range(n_dims)]
            ttype, offset = r.unpack("<I", f"type of {name}"), r.unpack("<Q", f"offset of {name}")
            info.tensors[name] = (dims, ttype, offset)
        alignment = info.metadata.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{path}: invalid alignment {alignment!r}")
        data_start = -(-r.pos // alignment) * alignment
        for name, (dims, ttype, offset) in info.tensors.items():
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise GGUFError(f"{path}: tensor {name!r} has unknown type {ttype}") from None
            n = 1
            for d in dims:
                n *= d
            if n > (1 << 40):
                raise GGUFError(f"{path}: tensor {name!r} has impossible dimensions {dims}")
            nbytes = n // block * type_size
            if data_start + offset + nbytes > r.size:
                raise GGUFError(
                    f"{path}: tensor {name!r} ({nbytes} bytes at offset {offset}) reaches past the end "
                    f"of the file ({r.size} bytes): the file is truncated",
                    hint="re-export it",
                )
    finally:
        r.close()
    if require_model:
        missing = [k for k in REQUIRED_MODEL_KEYS if k not in info.metadata]
        arch = info.architecture
        if info.metadata.get("general.type") != "adapter":
            missing += [f"{arch}.{k}" for k in REQUIRED_ARCH_KEYS if f"{arch}.{k}" not in info.metadata]
        if missing:
            raise GGUFError(f"{path}: missing required keys {', '.join(missing)}", hint="re-export the model")
    return info
