"""Prefix tuning in llama.cpp: peft's learned K/V written into the KV cache give peft's own logits.

The reference is always peft's teacher-forced forward pass (HF generate is wrong for prefix tuning in
peft 0.21), on f32 GGUFs with an f32 KV cache.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from localtune.chat.prefix_cache import PinnedPrefix, PrefixCacheError, open_with_prefix, parse_seq_state
from localtune.chat.runtime import open_gguf
from localtune.converters.hf_to_gguf import convert, read_config
from localtune.converters.prefix_sidecar import (
    Prefix,
    PrefixError,
    check_fits,
    prefix_from_peft,
    read_sidecar,
    write_sidecar,
)

N_PREFIX = 6
TEXT = "The quick brown fox jumps over the lazy dog, and then it naps in the sun."
TOL = 1e-3  # measured 3e-6 .. 5e-6 (llama, qwen2, qwen3; flash attention off)


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """tuned(arch, projection=False) -> a peft prefix-tuning model of the tiny `arch`, saved, with its f32 GGUF and
    the teacher-forced logits of peft's forward (with and without the prefix)."""
    made = {}

    def get(arch: str, projection: bool = False):
        if (arch, projection) in made:
            return made[arch, projection]
        import torch
        from peft import PrefixTuningConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        folder = tiny_model_dir(arch)
        out = tmp_path_factory.mktemp(f"prefix-{arch}")
        gguf = out / f"{arch}-f32.gguf"
        convert(folder, gguf, out_type="f32")
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        cfg = PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=N_PREFIX, prefix_projection=projection, encoder_hidden_size=32
        )
        model = get_peft_model(base, cfg).eval()  # default init: N(0, 1) per element, far from trivial
        if projection:
            with torch.no_grad():
                for p in model.prompt_encoder.parameters():
                    p.normal_(std=0.5)
        ids = tiny_tokenizer(arch)(TEXT)["input_ids"]
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            with model.disable_adapter():
                plain = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        model.save_pretrained(out / "adapter")
        made[arch, projection] = dict(
            model=model, folder=folder, gguf=gguf, adapter=out / "adapter", ids=ids, ref=ref, plain=plain, dir=out
        )
        return made[arch, projection]

    return get


def _prefix(t) -> Prefix:
    return prefix_from_peft(t["adapter"], read_config(t["folder"]))


def _peft_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Greedy continuation by peft's forward pass, one full teacher-forced pass per token."""
    import torch

    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_pinned_prefix_gives_peft_logits(arch, tuned):
    t = tuned(arch)
    prefix = _prefix(t)
    pinned = PinnedPrefix(open_gguf(t["gguf"], f32_kv=True), prefix)
    pinned.pin()
    got = pinned.score(t["ids"])
    delta = np.abs(got - t["ref"]).max()
    effect = np.abs(t["ref"] - t["plain"]).max()
    print(f"{arch}: max |dlogit| {delta:.2e} over {len(t['ids'])} positions; the prefix moves logits by {effect:.2f}")
    assert delta <= TOL
    assert effect > 100 * TOL  # the prefix matters, so a wrong K or V layout could not pass
    keys, values = pinned.read_back()  # what llama.cpp holds after taking the state back
    assert np.array_equal(keys, prefix.keys) and np.array_equal(values, prefix.values)


def _tolerance(t, flash_attn: bool) -> float:
    """TOL; with flash attention, 3x the base model's own gap to transformers (llama.cpp's flash attention casts an
    f32 cache to f16 for the product, see test_flash_attention_layout)."""
    if not flash_attn:
        return TOL
    llm = open_gguf(t["gguf"], f32_kv=True, flash_attn=True, logits_all=True)  # the base model, no prefix
    llm.eval(t["ids"])
    return max(3 * np.abs(llm.scores[: len(t["ids"])] - t["plain"]).max(), TOL)


@pytest.mark.parametrize("flash_attn", [False, True])
def test_sidecar_round_trip_and_repin_after_reset(flash_attn, tuned):
    t = tuned("llama")
    path = write_sidecar(t["dir"] / "prefix.safetensors", _prefix(t), [t["gguf"]])
    back = read_sidecar(path)
    assert (back.architecture, back.n_layer, back.n_tokens, back.n_head_kv, back.head_dim) == ("llama", 2, 6, 2, 16)
    assert np.array_equal(back.keys, _prefix(t).keys) and np.array_equal(back.values, _prefix(t).values)
    pinned = open_with_prefix(t["gguf"], path, f32_kv=True, flash_attn=flash_attn)
    first = pinned.score(t["ids"])
    assert np.abs(first - t["ref"]).max() <= _tolerance(t, flash_attn)
    # The trap re-pinning exists for: after a reset, llama-cpp-python recomputes cells 0..N-1 from the placeholders.
    pinned.llm.reset()
    pinned.llm.eval(pinned.placeholders)
    assert not np.array_equal(pinned.read_back()[0], back.keys)
    pinned.llm.reset()
    assert not pinned.is_pinned()
    again = pinned.score(t["ids"])  # re-pins by itself
    assert pinned.pins == 2
    assert np.abs(again - first).max() == 0.0


def test_generate_continues_after_the_prefix_like_peft(tuned):
    """Llama.generate (greedy) through the pinned prefix, two turns reusing the cache, vs peft's forward."""
    t = tuned("llama")
    pinned = open_with_prefix(
        t["gguf"], write_sidecar(t["dir"] / "gen.safetensors", _prefix(t), [t["gguf"]]), f32_kv=True
    )
    prompt = t["ids"][:8]

    def greedy(tokens, steps):
        out = []
        for tok in pinned.generate(tokens, temp=0.0, top_k=1):
            out.append(tok)
            if len(out) == steps:
                break
        return out

    first = greedy(prompt, 6)
    assert first == _peft_greedy(t["model"], prompt, 6)
    second_prompt = prompt + first + t["ids"][8:12]
    second = greedy(second_prompt, 6)
    assert pinned.pins == 1  # the second turn reused the pinned cells and the first turn's
    assert second == _peft_greedy(t["model"], second_prompt, 6)


def test_prefix_projection_saves_what_runs(tuned):
    """With prefix_projection=True peft saves the MLP's output, so the sidecar holds the same K/V the model used."""
    t = tuned("llama", projection=True)
    pinned = PinnedPrefix(open_gguf(t["gguf"], f32_kv=True), _prefix(t))
    pinned.pin()
    assert np.abs(pinned.score(t["ids"]) - t["ref"]).max() <= TOL


def test_flash_attention_layout(tuned):
    """Flash attention on: V rows are not transposed. llama.cpp's flash attention casts an f32 cache to f16 for the
    product, so its own base-model gap to transformers sets the scale (measured on llama: base 8.0e-3, with the prefix
    9.1e-3), while a misplaced V row would move logits by the prefix's effect (~1)."""
    t = tuned("llama")
    pinned = PinnedPrefix(open_gguf(t["gguf"], f32_kv=True, flash_attn=True), _prefix(t))
    pinned.pin()
    blob = pinned._state()
    assert not parse_seq_state(blob, 2, 32).v_trans
    delta = np.abs(pinned.score(t["ids"]) - t["ref"]).max()
    print(f"flash attention: with the prefix {delta:.2e}, tolerance {_tolerance(t, True):.2e}")
    assert delta <= _tolerance(t, True)
    assert delta < 0.05 * np.abs(t["ref"] - t["plain"]).max()


def test_f16_cache_holds_the_rounded_prefix(tuned):
    t = tuned("qwen2")
    prefix = _prefix(t)
    pinned = PinnedPrefix(open_gguf(t["gguf"]), prefix)  # llama-cpp-python's default f16 cache
    pinned.pin()
    keys, values = pinned.read_back()
    assert np.array_equal(keys, prefix.keys.astype(np.float16).astype(np.float32))
    assert np.array_equal(values, prefix.values.astype(np.float16).astype(np.float32))
    delta = np.abs(pinned.score(t["ids"]) - t["ref"]).max()
    print(f"f16 cache: max |dlogit| {delta:.2e}")
    assert delta <= 5e-2


def test_sliding_window_cache_is_refused(tiny_model_dir, tmp_path):
    """Gemma 3 keeps its sliding-window layers in a second cache: the parser does not guess, it refuses."""
    gguf = tmp_path / "gemma3.gguf"
    convert(tiny_model_dir("gemma3"), gguf, out_type="f32")
    cfg = read_config(tiny_model_dir("gemma3"))
    n_layer, kv, hd = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4, n_layer * 2 * kv * hd)).astype(np.float32)
    from localtune.converters.prefix_sidecar import split_prompt_embeddings

    keys, values = split_prompt_embeddings(emb, n_layer, kv, hd, permute_k=False)
    pinned = PinnedPrefix(open_gguf(gguf, f32_kv=True), Prefix(keys, values, "gemma3", kv, hd))
    with pytest.raises(PrefixCacheError) as err:
        pinned.pin()
    assert "sliding-window" in str(err.value) and "fix:" in str(err.value)


def _blob(tuned) -> tuple[bytes, int, int]:
    t = tuned("llama")
    pinned = PinnedPrefix(open_gguf(t["gguf"], f32_kv=True), _prefix(t))
    pinned.pin()
    return pinned._state(), 2, 32


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda b: b"\0" + b[1:], "header"),  # another state format
        (lambda b: b + b"\0" * 4, "bytes follow"),  # an extra part after the layers
        (lambda b: b[:-1], "past the end"),  # truncated
        (lambda b: b[:24] + struct.pack("<I", 2) + b[28:], "sequence"),  # cell 0 shared with another sequence
    ],
)
def test_damaged_states_are_refused(damage, says, tuned):
    blob, n_layer, n_embd = _blob(tuned)
    parse_seq_state(blob, n_layer, n_embd)  # the intact blob parses
    with pytest.raises(PrefixCacheError, match=says):
        parse_seq_state(damage(blob), n_layer, n_embd)


def test_quantized_cache_type_is_refused(tuned):
    """A q8_0 (ggml type 8) K cache: refused by its type code before any byte is read as a float."""
    blob, n_layer, n_embd = _blob(tuned)
    st = parse_seq_state(blob, n_layer, n_embd)
    k_header = st.k_offsets[0] - 12  # i32 type, u64 row size
    patched = blob[:k_header] + struct.pack("<i", 8) + blob[k_header + 4 :]
    with pytest.raises(PrefixCacheError, match="ggml type 8"):
        parse_seq_state(patched, n_layer, n_embd)


def test_sidecar_refuses_another_model(tuned, tmp_path):
    t, other = tuned("llama"), tuned("qwen2")
    path = write_sidecar(tmp_path / "prefix.safetensors", _prefix(t), [t["gguf"]])
    with pytest.raises(PrefixError, match="does not fit|prefix is for"):
        check_fits(read_sidecar(path), other["gguf"])  # another architecture
    f16 = tmp_path / "llama-f16.gguf"
    convert(t["folder"], f16, out_type="f16")
    with pytest.raises(PrefixError, match="not a GGUF this prefix was exported for"):
        open_with_prefix(f16, path)  # same shape, but not a file it was written for
    write_sidecar(path, _prefix(t), [t["gguf"], f16])
    check_fits(read_sidecar(path), f16)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(PrefixError, match="'LORA' adapter, not prefix tuning"):
        prefix_from_peft(lora, read_config(t["folder"]))
    (tmp_path / "broken.safetensors").write_bytes(b"not a sidecar")
    with pytest.raises(PrefixError, match="not a readable safetensors"):
        read_sidecar(tmp_path / "broken.safetensors")
