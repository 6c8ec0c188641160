"""Every data fault case of reliability.md: the message names the file and line, no traceback.

Strict mode (the default) stops with all problems listed; --skip-invalid drops the bad rows and
reports counts by reason.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import chat, write_jsonl

from localtune.config import DataConfig
from localtune.data.dataset import load_examples, prepare_data
from localtune.errors import DataError

GOOD = chat("What is 2+2?", "4.")


def problems_of(path, **kw):
    with pytest.raises(DataError) as info:
        load_examples(str(path), **kw)
    return info.value


def test_truncated_last_jsonl_line(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n" + '{"messages": [{"role": "user", "con')
    err = problems_of(p)
    assert [(pr.where, pr.reason) for pr in err.problems] == [(f"{p}:3", "truncated")]
    assert "cut off" in err.render() and f"{p}:3" in err.render()
    kept = load_examples(str(p), skip_invalid=True)
    assert len(kept.examples) == 2 and kept.problem_counts() == {"truncated": 1}


def test_bad_json_in_the_middle_is_not_called_truncated(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{'single': 'quotes'}\n" + json.dumps(GOOD) + "\n")
    err = problems_of(p)
    assert err.problems[0].where == f"{p}:2" and err.problems[0].reason == "bad_json"


def test_blank_lines_crlf_and_bom_are_accepted(tmp_path):
    p = tmp_path / "windows.jsonl"
    body = "\r\n".join([json.dumps(GOOD), "", "   ", json.dumps(chat("Hi", "Hello"))]) + "\r\n"
    p.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    loaded = load_examples(str(p))
    assert [e.where for e in loaded.examples] == [f"{p}:1", f"{p}:4"]
    assert loaded.files[0].blank_lines == 2
    assert loaded.examples[1].messages[1] == ("assistant", "Hello")  # no stray \r in the content


def test_non_utf8_bytes_name_line_and_column(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    err = problems_of(p, fmt="auto")
    (pr,) = err.problems
    assert pr.where == f"{p}:2" and pr.reason == "not_utf8"
    assert "0xe9" in pr.message and "column 14" in pr.message and "UTF-8" in pr.fix


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_non_utf8_in_csv_and_txt(tmp_path, suffix):
    p = tmp_path / f"latin1{suffix}"
    if suffix == ".csv":
        p.write_bytes(b"text\nfine row\nbad \xff row\n")
    else:
        p.write_bytes(b"fine paragraph\n\nbad \xff paragraph\n")
    err = problems_of(p)
    assert err.problems[0].where == f"{p}:3" and err.problems[0].reason == "not_utf8"


@pytest.mark.parametrize(
    "value,kind", [("[1, 2]", "an array"), ('"just text"', "a string"), ("42", "a number"), ("null", "null")]
)
def test_valid_json_that_is_not_an_object(tmp_path, value, kind):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + value + "\n")
    (pr,) = problems_of(p).problems
    assert pr.where == f"{p}:2" and pr.reason == "not_object" and kind in pr.message


def test_unknown_role(tmp_path):
    p = write_jsonl(
        tmp_path / "roles.jsonl",
        [GOOD, {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}],
    )
    (pr,) = problems_of(p).problems
    assert pr.where == f"{p}:2" and pr.field == "messages[1].role" and "'bot'" in pr.message
    assert "system, user, assistant" in pr.fix


def test_unknown_sharegpt_from(tmp_path):
    p = write_jsonl(
        tmp_path / "sg.jsonl",
        [{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "{}"}]}],
    )
    (pr,) = problems_of(p).problems
    assert pr.field == "conversations[1].from" and "robot" in pr.message and "function_call" in pr.fix


def test_unknown_message_keys_under_messages(tmp_path):
    p = write_jsonl(
        tmp_path / "keys.jsonl",
        [GOOD, {"messages": [{"speaker": "user", "text": "hi"}, {"speaker": "assistant", "text": "yo"}]}],
    )
    (pr,) = problems_of(p).problems
    assert pr.where == f"{p}:2" and pr.reason == "unknown_keys" and "speaker" in pr.message


def test_sharegpt_keys_inside_messages_are_understood(tmp_path):
    """from/value items under `messages` are unambiguous, so they are read rather than rejected."""
    p = write_jsonl(
        tmp_path / "mixed.jsonl", [{"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    )
    (ex,) = load_examples(str(p)).examples
    assert ex.messages == (("user", "hi"), ("assistant", "yo"))


@pytest.mark.parametrize(
    "turns,field,words",
    [
        ([("assistant", "first")], "messages[0].role", "starts with 'assistant'"),
        ([("user", "a"), ("user", "b"), ("assistant", "c")], "messages[1].role", "two 'user' messages in a row"),
        ([("user", "a"), ("assistant", "b"), ("user", "c")], "messages[2].role", "ends on a 'user' message"),
        ([("user", "a"), ("system", "late"), ("assistant", "b")], "messages[1].role", "only the first message"),
        ([("system", "only")], "messages", "only a system message"),
    ],
)
def test_role_order_violations(tmp_path, turns, field, words):
    p = write_jsonl(tmp_path / "order.jsonl", [GOOD, {"messages": [{"role": r, "content": c} for r, c in turns]}])
    (pr,) = problems_of(p).problems
    assert (pr.where, pr.field, pr.reason) == (f"{p}:2", field, "role_order") and words in pr.message


@pytest.mark.parametrize("content,word", [(None, "null"), ("", "empty"), ("   ", "empty")])
def test_empty_or_null_content(tmp_path, content, word):
    p = write_jsonl(
        tmp_path / "empty.jsonl",
        [GOOD, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]}],
    )
    (pr,) = problems_of(p).problems
    assert pr.where == f"{p}:2" and pr.field == "messages[1].content" and word in pr.message


def test_alpaca_missing_and_empty_fields(tmp_path):
    p = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {"instruction": "Add", "input": "2+2", "output": "4"},
            {"instruction": "Add", "input": "1+1", "output": ""},
            {"instruction": "", "output": "x"},
            {"instruction": "Say hi", "output": 5},
        ],
    )
    got = [(pr.where, pr.field, pr.reason) for pr in problems_of(p).problems]
    assert got == [
        (f"{p}:2", "output", "empty_content"),
        (f"{p}:3", "instruction", "empty_content"),
        (f"{p}:4", "output", "wrong_type"),
    ]


def test_row_of_another_format_in_a_file(tmp_path):
    p = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"text": "plain"}])
    (pr,) = problems_of(p).problems
    assert pr.where == f"{p}:2" and pr.reason == "wrong_format" and "'text'" in pr.message


def test_undetectable_format_names_the_fields(tmp_path):
    p = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    err = problems_of(p)
    assert err.problems[0].where == f"{p}:1" and "answer, question" in err.problems[0].message
    assert "--format" in err.problems[0].fix


def test_all_problems_are_reported_at_once(tmp_path):
    p = write_jsonl(tmp_path / "many.jsonl", [GOOD, {"messages": []}, GOOD, {"messages": "x"}, [1]])
    err = problems_of(p)
    assert [pr.where for pr in err.problems] == [f"{p}:2", f"{p}:4", f"{p}:5"]


def test_template_rejections_name_the_row(tmp_path, tiny_tokenizer):
    """Gemma's template raises "System role not supported": strict stops, skip-invalid drops."""
    rows = [chat("hi", "hello"), chat("hi", "hello", system="Be brief."), chat("a", "b")]
    p = write_jsonl(tmp_path / "sys.jsonl", rows)
    cfg = DataConfig(path=str(p), val_fraction=0)
    with pytest.raises(DataError) as info:
        prepare_data(cfg, tiny_tokenizer("gemma"), seed=0)
    (pr,) = info.value.problems
    assert pr.where == f"{p}:2" and pr.reason == "template" and "System role not supported" in pr.message
    cfg.skip_invalid = True
    prepared = prepare_data(cfg, tiny_tokenizer("gemma"), seed=0)
    assert [r.where for r in prepared.train] == [f"{p}:1", f"{p}:3"] and len(prepared.problems) == 1


def test_rows_without_trainable_tokens_after_truncation_some(tmp_path, tiny_tokenizer):
    long_prompt = "word " * 200
    p = write_jsonl(tmp_path / "long.jsonl", [chat("short", "answer"), chat(long_prompt, "lost"), chat("q", "a")])
    prepared = prepare_data(DataConfig(path=str(p), max_seq_len=64, val_fraction=0), tiny_tokenizer("qwen2"), seed=0)
    assert [r.where for r in prepared.train] == [f"{p}:1", f"{p}:3"]
    assert prepared.train_stats.dropped_no_trainable == [f"{p}:2"]
    assert prepared.train_stats.truncated == 1
    assert all(len(r.input_ids) <= 64 for r in prepared.train)


def test_rows_without_trainable_tokens_after_truncation_all(tmp_path, tiny_tokenizer):
    p = write_jsonl(tmp_path / "long.jsonl", [chat("word " * 200, "lost")] * 3)
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(path=str(p), max_seq_len=32, val_fraction=0), tiny_tokenizer("qwen2"), seed=0)
    msg = info.value.render()
    assert "none of the 3 training row(s)" in msg and "max_seq_len=32" in msg and "--max-seq-len" in msg


def test_cli_strict_failure_shows_file_line_and_no_traceback(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + '{"messages": [')
    proc = subprocess.run(
        [sys.executable, "-m", "localtune", "data", "inspect", str(p)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert f"{p}:2" in proc.stdout and "cut off" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_skip_invalid_counts_by_reason_with_examples(tmp_path, cli):
    p = write_jsonl(tmp_path / "mix.jsonl", [GOOD, {"messages": []}, [1], {"messages": "x"}, GOOD])
    result = cli("data", "inspect", p, "--skip-invalid")
    assert result.exit_code == 0
    assert "invalid rows: 3, dropped (--skip-invalid)" in result.output
    assert "wrong_type: 2" in result.output and "not_object: 1" in result.output
    assert f"{p}:2" in result.output and f"{p}:3" in result.output


def test_cli_missing_file_and_empty_file(tmp_path, cli):
    result = cli("data", "inspect", tmp_path / "nope.jsonl")
    assert result.exit_code == 2 and "no such file or folder" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = cli("data", "inspect", empty)
    assert result.exit_code == 2 and f"{empty}" in result.output and "empty" in result.output


def test_truncated_json_array(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text('[\n  {"text": "a"},\n  {"text": "b"},\n  {"text": "c')
    err = problems_of(p)
    assert err.problems[0].where == f"{p}:4" and err.problems[0].reason == "truncated"


def test_csv_row_with_wrong_field_count(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_text('instruction,input,output\nAdd,"1,1",2\nAdd,1,1,2\n')
    (pr,) = problems_of(p).problems
    assert pr.where == f"{p}:3" and "4 fields but the header names 3" in pr.message


def test_cli_template_rejection_names_the_row(tmp_path, cli, tiny_model_dir):
    p = write_jsonl(tmp_path / "sys.jsonl", [chat("hi", "hello"), chat("hi", "hello", system="Be brief.")])
    result = cli("data", "inspect", p, "--model", tiny_model_dir("gemma"))
    assert result.exit_code == 1
    assert "template: 1" in result.output and f"{p}:2: messages: the chat template rejected" in result.output
    assert "System role not supported" in result.output and "Traceback" not in result.output


def test_csv_parse_error_does_not_hide_later_rows(tmp_path):
    p = tmp_path / "rows.csv"
    p.write_bytes(b'text\nfirst\n"quoted"then more\nthird\n' + b"x" * 200_000 + b"\n")
    loaded = load_examples(str(p), skip_invalid=True)
    assert [e.text for e in loaded.examples] == ["first", "third", "x" * 200_000]  # a 200 kB cell is fine
    assert [(pr.where, pr.reason) for pr in loaded.problems] == [(f"{p}:3", "bad_csv")]
