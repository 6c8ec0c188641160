"""Running a prefix-tuning adapter in llama.cpp: its learned keys and values written into the KV cache.

llama.cpp has no input for a KV prefix, but its per-sequence state can be read and written back. Pinning a
prefix of N positions: decode N placeholder tokens at positions 0..N-1, read sequence 0's state, overwrite
their K and V rows with the prefix (converters.prefix_sidecar has them in llama.cpp's order), write the
state back, and decode the prompt from position N, as peft's forward does (its prompt starts at N too).

The state is llama.cpp's internal format, so `parse_seq_state` reads it exactly and refuses anything else
(another header, a quantized cache, a two-part sliding-window cache, a hybrid/recurrent memory, M-RoPE cell
data): a wrong guess would give plausible but wrong answers. Layout of this llama.cpp build (0.3.36):

    u32 magic 0xAF143CD8, u32 0       (what llama.cpp checks before it reads a sequence back)
    u32 n_stream (1), u32 n_cells, per cell: i32 pos, u32 n_seq_id (1), i32 seq_id
    u32 v_trans, u32 n_layer
    per layer: i32 K type, u64 K row bytes, n_cells rows of K (n_head_kv * head_dim each, head-major)
    v_trans 0 (flash attention on): per layer i32 V type, u64 V row bytes, n_cells rows of V
    v_trans 1 (flash attention off): per layer i32 V type, u32 element bytes, u32 n_embd_v, then V
                                     transposed: n_embd_v rows of n_cells elements

llama-cpp-python's `Llama` keeps its own record of the cache (`n_tokens`, `input_ids`) and only re-decodes
what differs from it. After `pin()` that record says "N placeholder tokens", so `Llama.generate` and `eval`
continue after the prefix. Anything that drops below position N (`Llama.reset()`, a prompt that does not
start with the placeholders) silently recomputes those cells from the placeholder token: the owner of the
`Llama` (a chat loop) goes through `generate`/`score` here, which re-pin when the record says so.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from localtune.converters.prefix_sidecar import Prefix, PrefixError, check_fits, read_sidecar

STATE_MAGIC = 0xAF143CD8
GGML_F32, GGML_F16 = 0, 1
_ELEMENT = {GGML_F32: ("<f4", 4), GGML_F16: ("<f2", 2)}


class PrefixCacheError(PrefixError):
    title = "cannot pin the prefix into llama.cpp's cache"


@dataclass(frozen=True)
class KVState:
    """Where the K and V data of each layer lie in one sequence's state blob."""

    n_cells: int
    positions: tuple[int, ...]
    v_trans: bool
    k_type: int
    v_type: int
    k_offsets: tuple[int, ...]  # per layer: start of n_cells rows of n_embd_kv elements
    v_offsets: tuple[int, ...]  # per layer: the same, or (v_trans) n_embd_kv rows of n_cells elements
    n_embd_kv: int

    @property
    def n_layer(self) -> int:
        return len(self.k_offsets)


class _Cursor:
    def __init__(self, blob: bytes):
        self.blob, self.at = blob, 0

    def take(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if self.at + size > len(self.blob):
            raise _refuse(f"the state ends inside {what} (at byte {self.at} of {len(self.blob)})")
        values = struct.unpack_from(fmt, self.blob, self.at)
        self.at += size
        return values if len(values) > 1 else values[0]

    def skip(self, n: int, what: str) -> int:
        start = self.at
        if n < 0 or start + n > len(self.blob):
            raise _refuse(f"{what} ({n} bytes at {start}) runs past the end of the state ({len(self.blob)} bytes)")
        self.at += n
        return start


def _refuse(why: str) -> PrefixCacheError:
    return PrefixCacheError(
        f"llama.cpp's KV cache state is not in the one layout localtune can write a prefix into: {why}",
        hint="prefix tuning runs on models with one plain KV cache (llama, mistral, qwen2, qwen3, ...) stored "
        "as f32 or f16; not on sliding-window (Gemma 2/3), hybrid or recurrent models, nor with a quantized KV cache",
    )


def parse_seq_state(blob: bytes, n_layer: int, n_embd_kv: int) -> KVState:
    """Read one sequence's state exactly; refuse (PrefixCacheError) any byte it does not account for."""
    c = _Cursor(blob)
    magic, word = c.take("<II", "the header")
    if magic != STATE_MAGIC or word != 0:
        raise _refuse(f"header {magic:#010x} {word:#x}, expected {STATE_MAGIC:#010x} 0x0")
    n_stream = c.take("<I", "the stream count")
    if n_stream != 1:
        raise _refuse(f"{n_stream} streams, expected 1")
    n_cells = c.take("<I", "the cell count")
    positions = []
    for i in range(n_cells):
        pos, n_seq, seq = c.take("<iIi", f"cell {i}")
        if n_seq != 1 or seq != 0:
            raise _refuse(f"cell {i} belongs to {n_seq} sequence(s) (first {seq}), expected sequence 0 only")
        positions.append(pos)
    v_trans, layers = c.take("<II", "the layer header")
    if v_trans not in (0, 1):
        raise _refuse(f"v_trans is {v_trans}")
    if layers != n_layer:
        raise _refuse(
            f"its first part holds {layers} of the model's {n_layer} layers (sliding-window models keep "
            "their layers in two caches)"
        )
    k_types, k_offsets = set(), []
    for il in range(layers):
        k_type, row = c.take("<iQ", f"layer {il}'s K header")
        k_types.add(k_type)
        _check_type(k_type, f"layer {il}'s K")
        if row != n_embd_kv * _ELEMENT[k_type][1]:
            raise _refuse(f"layer {il}'s K rows are {row} bytes, expected {n_embd_kv} elements")
        k_offsets.append(c.skip(row * n_cells, f"layer {il}'s K"))
    v_types, v_offsets = set(), []
    for il in range(layers):
        if v_trans:
            v_type, el, n_embd_v = c.take("<iII", f"layer {il}'s V header")
            _check_type(v_type, f"layer {il}'s V")
            if el != _ELEMENT[v_type][1] or n_embd_v != n_embd_kv:
                raise _refuse(f"layer {il}'s V: {n_embd_v} rows of {el}-byte elements, expected {n_embd_kv}")
            size = n_embd_v * n_cells * el
        else:
            v_type, row = c.take("<iQ", f"layer {il}'s V header")
            _check_type(v_type, f"layer {il}'s V")
            if row != n_embd_kv * _ELEMENT[v_type][1]:
                raise _refuse(f"layer {il}'s V rows are {row} bytes, expected {n_embd_kv} elements")
            size = row * n_cells
        v_types.add(v_type)
        v_offsets.append(c.skip(size, f"layer {il}'s V"))
    if c.at != len(blob):
        raise _refuse(
            f"{len(blob) - c.at} bytes follow the cache of {layers} layers: a second cache part "
            "(sliding-window layers) or recurrent state"
        )
    if len(k_types) != 1 or len(v_types) != 1:
        raise _refuse("the layers' K or V types differ")
    return KVState(
        n_cells,
        tuple(positions),
        bool(v_trans),
        k_types.pop(),
        v_types.pop(),
        tuple(k_offsets),
        tuple(v_offsets),
        n_embd_kv,
    )


def _check_type(t: int, what: str) -> None:
    if t not in _ELEMENT:
        raise _refuse(f"{what} is stored as ggml type {t} (only f32 = 0 and f16 = 1 can be written)")


def _views(blob: bytearray, st: KVState, il: int):
    """(K, V) of layer il as writable numpy views [n_cells, n_embd_kv]; V transposed when v_trans."""
    import numpy as np

    kd, vd = _ELEMENT[st.k_type][0], _ELEMENT[st.v_type][0]
    n = st.n_cells * st.n_embd_kv
    k = np.frombuffer(blob, dtype=kd, count=n, offset=st.k_offsets[il]).reshape(st.n_cells, st.n_embd_kv)
    v = np.frombuffer(blob, dtype=vd, count=n, offset=st.v_offsets[il])
    v = v.reshape(st.n_embd_kv, st.n_cells).T if st.v_trans else v.reshape(st.n_cells, st.n_embd_kv)
    return k, v


def write_prefix(blob: bytes, st: KVState, prefix: Prefix) -> bytearray:
    """A copy of `blob` whose cells at positions 0..N-1 hold the prefix's K and V."""
    import numpy as np

    if sorted(st.positions) != list(range(prefix.n_tokens)):
        raise _refuse(
            f"the cache holds positions {min(st.positions, default=None)}..{max(st.positions, default=None)}"
            f" in {st.n_cells} cells, expected exactly 0..{prefix.n_tokens - 1}"
        )
    order = np.asarray(st.positions)  # cell i holds position order[i]
    out = bytearray(blob)
    for il in range(st.n_layer):
        k, v = _views(out, st, il)
        k[:] = prefix.keys[il][order]
        v[:] = prefix.values[il][order]
    return out


def read_prefix(blob: bytes, st: KVState):
    """(keys, values) as float32 [n_layer, n_cells, n_embd_kv], rows ordered by position."""
    import numpy as np

    order = np.argsort(np.asarray(st.positions))
    copy = bytearray(blob)
    views = [_views(copy, st, il) for il in range(st.n_layer)]
    keys = np.stack([k[order] for k, _v in views]).astype(np.float32)
    values = np.stack([v[order] for _k, v in views]).astype(np.float32)
    return keys, values


class PinnedPrefix:
    """A prefix pinned at positions 0..N-1 of a `Llama`'s sequence 0; owns re-pinning.

    Go through `generate` and `score` (or call `ensure_pinned()` before touching the Llama yourself):
    they re-pin whenever llama-cpp-python's record of the cache no longer starts with the placeholders.
    """

    def __init__(self, llm, prefix: Prefix, *, placeholder: int | None = None):
        self.llm, self.prefix = llm, prefix
        if placeholder is None:
            bos = llm.token_bos()
            placeholder = bos if bos is not None and bos >= 0 else 0
        self.placeholders = [int(placeholder)] * prefix.n_tokens
        self.pins = 0  # how many times the cells were written (tests and logs read it)

    @property
    def n_tokens(self) -> int:
        return self.prefix.n_tokens

    def _state(self) -> bytes:
        import llama_cpp.llama_cpp as lib

        size = lib.llama_state_seq_get_size(self.llm.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        got = lib.llama_state_seq_get_data(self.llm.ctx, buf, size, 0)
        if got != size:
            raise _refuse(f"llama.cpp wrote {got} of {size} state bytes")
        return bytes(buf)

    def _parse(self, blob: bytes) -> KVState:
        return parse_seq_state(blob, self.prefix.n_layer, self.prefix.n_head_kv * self.prefix.head_dim)

    def pin(self) -> None:
        """Write the prefix into cells 0..N-1, dropping everything after it."""
        import llama_cpp.llama_cpp as lib

        llm = self.llm
        if self.n_tokens >= llm.n_ctx():
            raise PrefixCacheError(
                f"the prefix has {self.n_tokens} positions, the context only {llm.n_ctx()}",
                hint="open the model with a larger n_ctx",
            )
        llm.reset()
        lib.llama_memory_clear(lib.llama_get_memory(llm.ctx), True)
        llm.eval(self.placeholders)  # Llama now records N tokens, so it continues at position N
        blob = self._state()
        new = write_prefix(blob, self._parse(blob), self.prefix)
        buf = (ctypes.c_uint8 * len(new)).from_buffer(new)
        if lib.llama_state_seq_set_data(llm.ctx, buf, len(new), 0) != len(new):
            raise _refuse("llama.cpp did not take the state back")
        llm._requires_eval = True  # the context's logits are the placeholders': never sample from them
        self.pins += 1

    def is_pinned(self) -> bool:
        llm, n = self.llm, self.n_tokens
        return llm.n_tokens >= n and [int(t) for t in llm.input_ids[:n]] == self.placeholders

    def ensure_pinned(self) -> bool:
        """Pin if llama-cpp-python's record no longer starts with the prefix; True when it re-pinned."""
        if self.is_pinned():
            return False
        self.pin()
        return True

    def read_back(self):
        """The prefix as the cache holds it now: (keys, values), float32 [n_layer, N, n_embd_kv]."""
        blob = self._state()
        keys, values = read_prefix(blob, self._parse(blob))
        return keys[:, : self.n_tokens], values[:, : self.n_tokens]

    def generate(self, tokens: Sequence[int], **sampling) -> Iterator[int]:
        """Llama.generate for `tokens` after the prefix (the whole conversation so far, without the prefix);
        the cells it already holds are reused as Llama.generate does. Yields token ids."""
        if not tokens:
            raise ValueError("generate() needs at least one token after the prefix")
        self.ensure_pinned()
        return self.llm.generate(self.placeholders + [int(t) for t in tokens], reset=True, **sampling)

    def score(self, tokens: Sequence[int]):
        """Teacher-forced logits: float32 [len(tokens), n_vocab], row i predicting the token after tokens[i]."""
        import llama_cpp.llama_cpp as lib
        import numpy as np

        llm, n = self.llm, self.n_tokens
        tokens = [int(t) for t in tokens]
        if n + len(tokens) > llm.n_ctx():
            raise PrefixCacheError(
                f"{n} prefix positions + {len(tokens)} tokens exceed the context ({llm.n_ctx()})",
                hint="open the model with a larger n_ctx",
            )
        self.ensure_pinned()
        mem = lib.llama_get_memory(llm.ctx)
        lib.llama_memory_seq_rm(mem, 0, n, -1)
        llm.n_tokens = n
        n_vocab, step = llm.n_vocab(), llm.n_batch
        out = np.empty((len(tokens), n_vocab), dtype=np.float32)
        batch = lib.llama_batch_init(step, 0, 1)
        try:
            for start in range(0, len(tokens), step):
                chunk = tokens[start : start + step]
                for i, tok in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, n + start + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, 1
                batch.n_tokens = len(chunk)
                if (rc := lib.llama_decode(llm.ctx, batch)) != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
                for i in range(len(chunk)):
                    row = lib.llama_get_logits_ith(llm.ctx, i)
                    out[start + i] = np.ctypeslib.as_array(row, shape=(n_vocab,))
                llm.input_ids[n + start : n + start + len(chunk)] = chunk
                llm.n_tokens = n + start + len(chunk)
        finally:
            lib.llama_batch_free(batch)
        llm._requires_eval = True  # Llama.generate replays the last token rather than trust these logits
        return out


def open_with_prefix(gguf_path: str | os.PathLike, sidecar: str | os.PathLike | Prefix, **open_kwargs) -> PinnedPrefix:
    """open_gguf(gguf_path, **open_kwargs) with the sidecar's prefix checked against it and pinned."""
    from localtune.chat.runtime import open_gguf

    prefix = sidecar if isinstance(sidecar, Prefix) else read_sidecar(sidecar)
    check_fits(prefix, gguf_path)
    pinned = PinnedPrefix(open_gguf(gguf_path, **open_kwargs), prefix)
    pinned.pin()
    return pinned
