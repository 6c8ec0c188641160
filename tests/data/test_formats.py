"""Every row format in every file type is detected, validated and converted the same way."""

from __future__ import annotations

import csv
import json

import pytest

from localtune.data.dataset import load_examples

ROWS = {
    "text": [{"text": "The sky is blue."}, {"text": "Water boils at 100 C.\nAt sea level."}],
    "alpaca": [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hello.", "input": "", "output": "Hello!"},
    ],
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "3+3?"},
                {"role": "assistant", "content": "6"},
            ]
        },
    ],
    "sharegpt": [
        {
            "conversations": [
                {"from": "system", "value": "Be kind."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello."},
            ]
        },
        {"conversations": [{"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]},
    ],
    "prompt_completion": [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": "2 + 2 =", "completion": " 4"},
    ],
}
EXPECTED = {  # what the first row becomes
    "text": {"text": "The sky is blue."},
    "alpaca": {"messages": (("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5"))},
    "chat": {"messages": (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."))},
    "sharegpt": {"messages": (("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello."))},
    "prompt_completion": {"prompt": "The capital of France is", "completion": " Paris."},
}


def write_rows(path, rows):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif suffix in (".csv", ".tsv"):
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t" if suffix == ".tsv" else ",")
            w.writerow(cols)
            for r in rows:  # lists of messages go into a cell as JSON text
                w.writerow([json.dumps(r[c]) if isinstance(r.get(c), list) else r.get(c, "") for c in cols])
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
@pytest.mark.parametrize("fmt", list(ROWS))
def test_each_format_in_each_file_type(tmp_path, cli, fmt, suffix):
    path = write_rows(tmp_path / f"data{suffix}", ROWS[fmt])
    loaded = load_examples(str(path))
    assert loaded.files[0].format == fmt
    assert len(loaded.examples) == 2 and not loaded.problems
    first = loaded.examples[0]
    for key, value in EXPECTED[fmt].items():
        assert getattr(first, key) == value
    result = cli("data", "inspect", path)
    assert result.exit_code == 0, result.output
    assert f"format: {fmt}" in result.output and "rows: 2 read, 2 valid, 0 invalid" in result.output


def test_line_numbers_in_a_json_array(tmp_path):
    path = write_rows(tmp_path / "rows.json", ROWS["chat"] + [{"messages": []}])
    loaded = load_examples(str(path), strict=False)
    starts = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "  {"]
    assert [e.where for e in loaded.examples] + [p.where for p in loaded.problems] == [f"{path}:{n}" for n in starts]


def test_csv_multiline_cells_keep_the_starting_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('instruction,output\n"Line one\nline two",ok\nSecond,fine\n')
    loaded = load_examples(str(path))
    assert [e.where for e in loaded.examples] == [f"{path}:2", f"{path}:4"]
    assert loaded.examples[0].messages[0] == ("user", "Line one\nline two")


def test_txt_is_one_row_per_paragraph(tmp_path, cli):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nstill first.\n\n\nSecond one.\n\nThird.\n")
    loaded = load_examples(str(path))
    assert [(e.where, e.text) for e in loaded.examples] == [
        (f"{path}:1", "First paragraph\nstill first."),
        (f"{path}:5", "Second one."),
        (f"{path}:7", "Third."),
    ]
    result = cli("data", "inspect", path)
    assert result.exit_code == 0 and "format: text (from .txt file" in result.output


def test_folder_of_mixed_files(tmp_path, cli):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    write_rows(folder / "a.jsonl", ROWS["chat"])
    write_rows(folder / "sub" / "b.csv", ROWS["alpaca"])
    (folder / "c.txt").write_text("Some raw text.\n")
    (folder / "README.md").write_text("not data")
    (folder / ".hidden").mkdir()
    write_rows(folder / ".hidden" / "x.jsonl", ROWS["text"])
    loaded = load_examples(str(folder))
    assert [(f.path.rsplit("/", 1)[-1], f.format) for f in loaded.files] == [
        ("a.jsonl", "chat"),
        ("c.txt", "text"),
        ("b.csv", "alpaca"),
    ]
    assert len(loaded.examples) == 5
    result = cli("data", "inspect", folder)
    assert result.exit_code == 0 and "all files: 5 rows, 5 valid" in result.output


def test_format_override(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b", "text": "ab"}])
    assert load_examples(str(path)).examples[0].kind == "completion"
    assert load_examples(str(path), "text").examples[0].text == "ab"


def test_conversational_prompt_completion_and_content_parts(tmp_path):
    path = write_rows(
        tmp_path / "d.jsonl",
        [
            {
                "prompt": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
                ],
                "completion": [{"role": "assistant", "content": "Hello"}],
            }
        ],
    )
    (ex,) = load_examples(str(path)).examples
    assert ex.messages == (("user", "Hi there"), ("assistant", "Hello"))


def test_alpaca_system_field(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"system": "Be terse.", "instruction": "Hi", "output": "Yo"}])
    (ex,) = load_examples(str(path)).examples
    assert ex.messages == (("system", "Be terse."), ("user", "Hi"), ("assistant", "Yo"))


def test_unsupported_extension_is_refused(tmp_path, cli):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    result = cli("data", "inspect", path)
    assert result.exit_code == 2 and "unsupported file type '.xlsx'" in result.output and ".jsonl" in result.output
