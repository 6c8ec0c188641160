"""Packing loses nothing and lets no row see another; the validation split is deterministic."""

from __future__ import annotations

import pytest
from helpers import chat, write_jsonl

from localtune.config import DataConfig
from localtune.data.dataset import load_examples, prepare_data, split_examples
from localtune.data.packing import pack_rows
from localtune.data.tokenize import IGNORE, TokenizedRow


def rows_of(lengths):
    return [
        TokenizedRow(f"f:{i}", [i * 100 + j for j in range(n)], [i * 100 + j for j in range(n)], n)
        for i, n in enumerate(lengths)
    ]


def test_packing_keeps_every_token_and_fits():
    rows = rows_of([7, 3, 9, 2, 5, 5, 1, 8])
    packed = pack_rows(rows, max_seq_len=10)
    assert all(len(p.input_ids) <= 10 for p in packed)
    assert sorted(t for p in packed for t in p.input_ids) == sorted(t for r in rows for t in r.input_ids)
    assert len(packed) == 4  # 40 tokens, bins of 10: best-fit-decreasing finds 9+1, 8+2, 7+3, 5+5
    for p in packed:
        starts = [i for i, pos in enumerate(p.position_ids) if pos == 0]
        assert len(starts) == len(p.wheres)
        assert all(p.labels[i] == IGNORE for i in starts)  # no row learns the start of the next
        for a, b in zip(starts, starts[1:] + [len(p.input_ids)]):
            assert p.position_ids[a:b] == list(range(b - a))


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2"])
def test_packed_rows_do_not_attend_across_boundaries(arch, tiny_model_dir):
    """Logits of a packed sequence equal the logits of each row run on its own.

    transformers builds the block-diagonal mask only without a KV cache (use_cache=False), as in training.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()
    rows = rows_of([6, 9, 4])
    for r in rows:  # ids within the tiny vocabulary
        r.input_ids = [5 + (t * 7) % 500 for t in r.input_ids]
    (packed,) = pack_rows(rows, max_seq_len=32)
    with torch.no_grad():
        together = model(
            input_ids=torch.tensor([packed.input_ids]),
            position_ids=torch.tensor([packed.position_ids]),
            use_cache=False,
        ).logits[0]
        by_where = {r.where: r for r in rows}
        offset = 0
        for where in packed.wheres:
            ids = by_where[where].input_ids
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(together[offset : offset + len(ids)], alone, atol=1e-4, rtol=1e-4)
            offset += len(ids)


def test_prepare_with_packing(tmp_path, tiny_tokenizer):
    p = write_jsonl(tmp_path / "d.jsonl", [chat(f"question {i}", f"answer {i}") for i in range(20)])
    cfg = DataConfig(path=str(p), max_seq_len=128, packing=True, val_fraction=0.1)
    prepared = prepare_data(cfg, tiny_tokenizer("qwen2"), seed=0)
    assert len(prepared.val) == 2
    assert sum(len(x.wheres) for x in prepared.train) == 18
    assert len(prepared.train) < 18 and all(len(x.input_ids) <= 128 for x in prepared.train)


def test_split_is_deterministic_and_disjoint(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [chat(f"q{i}", f"a{i}") for i in range(40)])
    examples = load_examples(str(p)).examples
    train, val = split_examples(examples, 0.1, seed=3)
    assert len(val) == 4 and len(train) == 36
    assert {e.where for e in train}.isdisjoint(e.where for e in val)
    assert split_examples(examples, 0.1, seed=3) == (train, val)
    assert split_examples(examples, 0.1, seed=4)[1] != val


def test_small_datasets_are_not_split(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [chat(f"q{i}", f"a{i}") for i in range(9)])
    train, val = split_examples(load_examples(str(p)).examples, 0.2, seed=0)
    assert len(train) == 9 and val == []


def test_validation_file(tmp_path, tiny_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}", f"a{i}") for i in range(12)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"instruction": "Hi", "output": "Hello"}])
    prepared = prepare_data(DataConfig(path=str(train), val_file=str(val)), tiny_tokenizer("llama"), seed=0)
    assert len(prepared.train) == 12 and [r.where for r in prepared.val] == [f"{val}:1"]


def test_tokenizing_reports_progress(tmp_path, tiny_tokenizer):
    from localtune.data.dataset import PROGRESS_EVERY, tokenize_all
    from localtune.data.template import make_renderer, resolve_chat_template

    n = PROGRESS_EVERY * 2 + 7
    p = write_jsonl(tmp_path / "d.jsonl", [chat(f"q{i}", f"a{i}") for i in range(n)])
    tok = tiny_tokenizer("qwen2")
    calls = []
    rows, stats = tokenize_all(
        load_examples(str(p)).examples,
        tok,
        make_renderer(tok, resolve_chat_template(tok)),
        DataConfig(path=str(p)),
        [],
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(0, n), (PROGRESS_EVERY, n), (2 * PROGRESS_EVERY, n), (n, n)]
    assert len(rows) == stats.rows == n
