"""Prompt tuning and P-tuning in llama.cpp, held to peft's own forward pass (teacher-forced: HF generate is wrong
for these adapters): the learned vectors as input embeddings of a base GGUF, and the portable GGUF that holds
them as virtual tokens; sampling from the portable GGUF with and without the logit bias on those tokens."""

from __future__ import annotations

import numpy as np
import pytest

from localtune.chat.runtime import open_gguf
from localtune.chat.soft_prompt import SoftPromptError, attach, load_vectors, prompt_logits
from localtune.converters.gguf_file import ConversionError
from localtune.converters.hf_to_gguf import convert
from localtune.converters.soft_prompt import (
    METHOD_KEY,
    token_name,
    virtual_token_bias,
    virtual_token_ids,
    write_soft_prompt_gguf,
)

N = 6  # virtual tokens
CONVERSATION = [
    {"role": "user", "content": "Hello there, how are you today? Tell me about the sea."},
    {"role": "assistant", "content": "Fine, thanks. The sea is large and salty."},
]
# llama.cpp's CPU GELU (Gemma's activation) uses an fp16 table: the base model alone is ~1.5e-3 off transformers
# (tests/export/test_export.py); everything else matches to ~5e-6.
TOLERANCE = {"gemma2": 3e-3, "gemma3": 3e-3}
FREE_SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


@pytest.fixture(scope="session")
def base_gguf(tiny_model_dir, tmp_path_factory):
    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = tmp_path_factory.mktemp("soft-base") / f"{arch}-f32.gguf"
            convert(tiny_model_dir(arch), made[arch], out_type="f32")
        return made[arch]

    return get


def conversation_ids(tokenizer, messages=CONVERSATION, **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


@pytest.fixture(scope="session")
def tuned(tiny_model_dir, tmp_path_factory):
    """tuned(arch, method) -> (peft model in eval mode, the vectors read back from its saved adapter). Prompt tuning
    starts from vocabulary rows plus noise; P-tuning keeps peft's random MLP encoder (its output is what is saved)."""
    import torch
    from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = {}

    def get(arch: str, method: str):
        if (arch, method) in made:
            return made[arch, method]
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), dtype=torch.float32)
        if method == "prompt_tuning":
            model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N))
            with torch.no_grad():
                rows = base.get_input_embeddings()(torch.randint(10, 300, (N,)))  # Gemma: already scaled by sqrt(d)
                model.prompt_encoder["default"].embedding.weight.copy_(rows + 0.1 * torch.randn_like(rows))
        else:
            config = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, encoder_hidden_size=32)
            model = get_peft_model(base, config)
        model.eval()
        folder = tmp_path_factory.mktemp(f"adapter-{arch}-{method}")
        model.save_pretrained(folder)
        vectors = load_vectors(folder)
        expected = model.get_prompt_embedding_to_save("default").float().numpy()  # P-tuning: the encoder's output
        assert vectors.shape == (N, base.config.hidden_size)
        assert np.array_equal(vectors, expected)
        made[arch, method] = model, vectors
        return made[arch, method]

    return get


def peft_logits(model, ids: list[int]):
    """peft's forward: logits for [virtual..., ids], one row per position."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def base_logits(model, ids: list[int]):
    import torch

    with torch.no_grad(), model.disable_adapter():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2", "gemma3"])
def test_input_embeddings_match_peft(arch, method, tuned, tiny_tokenizer, base_gguf):
    model, vectors = tuned(arch, method)
    ids = conversation_ids(tiny_tokenizer(arch))
    want = peft_logits(model, ids)[N:]
    assert np.abs(want - base_logits(model, ids)).max() > 0.5  # the learned prompt changes every prediction
    got = prompt_logits(open_gguf(base_gguf(arch), n_ctx=256, f32_kv=True), vectors, ids)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(ids), want.shape[1])
    worst = float(np.abs(got - want).max())
    assert worst <= TOLERANCE.get(arch, 1e-3), f"{arch} {method}: max |dlogit| {worst:.2e}"


def test_chat_loop_continues_after_the_vectors_and_repins(tuned, tiny_tokenizer, base_gguf):
    """Greedy sampling through llama-cpp-python's own create_completion, after the vectors: every sampled token is
    peft's argmax for the sequence so far; a reset() loses the vectors and the next call pins them again."""
    model, vectors = tuned("llama", "prompt_tuning")
    prompt = conversation_ids(tiny_tokenizer("llama"), CONVERSATION[:1], add_generation_prompt=True)
    llm = open_gguf(base_gguf("llama"), n_ctx=256, f32_kv=True)
    soft = attach(llm, vectors)
    first = soft.create_completion(prompt, max_tokens=12, temperature=0.0)
    sampled = list(llm.input_ids[N + len(prompt) : llm.n_tokens])
    # the token decoded last is fed back at n_tokens; the final one is sampled but never decoded
    assert llm.n_tokens == N + len(prompt) + len(sampled) and len(sampled) >= 4
    want = peft_logits(model, prompt + sampled)[N + len(prompt) - 1 :]
    assert list(want.argmax(axis=1)[: len(sampled)]) == sampled
    stale = soft.tokens(prompt)
    llm.reset()
    assert not soft.pinned()
    with pytest.raises(SoftPromptError, match="no longer in the context"):  # never N EOS tokens in its place
        llm.create_completion(stale, max_tokens=2)
    again = soft.create_completion(prompt, max_tokens=12, temperature=0.0)
    assert soft.pinned() and again["choices"][0]["text"] == first["choices"][0]["text"]
    with pytest.raises(SoftPromptError, match="shape"):
        attach(llm, vectors[:, :-1])


@pytest.fixture(scope="session")
def portable(tiny_model_dir, tuned, tmp_path_factory):
    made = {}

    def get(arch: str, method: str):
        if (arch, method) not in made:
            path = tmp_path_factory.mktemp("soft-portable") / f"{arch}-{method}.gguf"
            write_soft_prompt_gguf(tiny_model_dir(arch), tuned(arch, method)[1], path, method=method, out_type="f32")
            made[arch, method] = path
        return made[arch, method]

    return get


def rendered_ids(llm, messages, add_bos: bool, add_generation_prompt: bool = False) -> list[int]:
    """The GGUF's own chat template rendered by llama-cpp-python and tokenized by llama.cpp."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    text = lambda tid: llm.detokenize([tid], special=True).decode("utf-8")  # noqa: E731
    prompt = Jinja2ChatFormatter(
        llm.metadata["tokenizer.chat_template"],
        eos_token=text(llm.token_eos()),
        bos_token=text(llm.token_bos()),
        add_generation_prompt=add_generation_prompt,
    )(messages=messages).prompt
    return llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "qwen3_5"])
def test_portable_gguf_matches_peft(arch, method, tuned, tiny_tokenizer, portable, base_gguf):
    import gguf

    model, _vectors = tuned(arch, method)
    ids = conversation_ids(tiny_tokenizer(arch))
    want = peft_logits(model, ids)
    n_vocab = want.shape[1]
    path = portable(arch, method)
    virtual = virtual_token_ids(path)
    assert virtual == list(range(n_vocab, n_vocab + N))
    fields = gguf.GGUFReader(str(path)).fields
    assert fields[METHOD_KEY].contents() == method
    assert fields["tokenizer.ggml.tokens"].contents()[n_vocab:] == [token_name(i) for i in range(N)]
    assert virtual_token_bias(path) == dict.fromkeys(virtual, float("-inf"))
    assert virtual_token_bias(base_gguf(arch)) == {}

    llm = open_gguf(path, n_ctx=256, f32_kv=True, logits_all=True)
    # The template puts the tokens first, BOS after them, whether the caller asks for BOS or not (llama-server does)
    base = open_gguf(base_gguf(arch), n_ctx=64)
    plain = rendered_ids(base, CONVERSATION, add_bos=False)
    assert rendered_ids(llm, CONVERSATION, add_bos=False) == virtual + plain
    assert rendered_ids(llm, CONVERSATION, add_bos=True) == virtual + plain
    llm.eval(virtual + ids)
    got = np.array(llm.scores[: N + len(ids)])
    assert np.abs(got[:, n_vocab:]).max() == 0.0  # zero head rows: the new ids score exactly 0
    worst = float(np.abs(got[N:, :n_vocab] - want[N:]).max())
    assert worst <= TOLERANCE.get(arch, 1e-3), f"{arch} {method}: max |dlogit| {worst:.2e}"


def sampled_ids(llm, logit_bias, n_tokens: int = 200) -> tuple[list[int], list[list[int]]]:
    """Tokens sampled through create_chat_completion (the GGUF's template, temperature 1, no other filter) until
    `n_tokens` are collected, and the prompts it decoded; generate() is wrapped only to record the ids."""
    generate, tokens, prompts = llm.generate, [], []

    def recording(prompt, **kwargs):
        prompts.append(list(prompt))
        for token in generate(prompt, **kwargs):
            tokens.append(token)
            yield token

    llm.generate = recording
    seed = 0
    while len(tokens) < n_tokens:
        llm.create_chat_completion(
            CONVERSATION[:1], max_tokens=n_tokens - len(tokens), seed=seed, logit_bias=logit_bias, **FREE_SAMPLING
        )
        seed += 1
    return tokens, prompts


def test_sampling_never_emits_virtual_tokens_with_the_bias(portable):
    """With the bias, 200 sampled tokens hold no virtual one; without it, 1000 do (zero head rows alone leave them
    real probability: 8 of 1000 measured, 14 of 2000, the first at token 55)."""
    path = portable("llama", "prompt_tuning")
    virtual = set(virtual_token_ids(path))
    with_bias, prompts = sampled_ids(open_gguf(path, n_ctx=512), virtual_token_bias(path), 200)
    llm = open_gguf(path, n_ctx=512)
    assert prompts[0][: N + 1] == [*sorted(virtual), llm.token_bos()]  # the chat template put them first
    without, _ = sampled_ids(llm, None, 1000)
    assert len(with_bias) >= 200 and len(without) >= 1000
    assert sum(t in virtual for t in with_bias) == 0
    assert sum(t in virtual for t in without) >= 3


@pytest.mark.parametrize("arch", ["gemma", "gemma2"])
def test_portable_gguf_refused_where_the_head_is_always_tied(arch, tiny_model_dir, tmp_path):
    vectors = np.zeros((N, 64), np.float32)
    with pytest.raises(ConversionError, match=f"not available for {arch}") as caught:
        write_soft_prompt_gguf(tiny_model_dir(arch), vectors, tmp_path / "out.gguf", out_type="f32")
    assert "input embeddings" in caught.value.hint
    assert not list(tmp_path.iterdir())


def test_input_embeddings_refused_on_a_hybrid_model(base_gguf):
    """Qwen3.5 (gated delta nets + attention): llama.cpp's raw-embedding path is 0.07-0.47 logits off peft there,
    and its recurrent state cannot keep a pinned prefix; the portable GGUF above runs it from tokens."""
    llm = open_gguf(base_gguf("qwen3_5"), n_ctx=64)
    with pytest.raises(SoftPromptError, match="recurrent or hybrid") as caught:
        attach(llm, np.zeros((N, llm.n_embd()), np.float32))
    assert "portable GGUF" in caught.value.hint


def test_load_vectors_refuses_other_adapters(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(SoftPromptError, match="LORA adapter"):
        load_vectors(tmp_path)
