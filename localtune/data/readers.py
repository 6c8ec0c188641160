"""Reading data files into located records, before anything knows about formats or models.

Every record remembers where it came from (`file:line`, or `file row N` for Parquet) so that every
later problem can point at it. Reading is forgiving about what is harmless (UTF-8 BOM, CRLF, blank
lines) and precise about what is not (bytes that are not UTF-8, broken or cut-off JSON, a JSON value
that is not an object).

Supported: .jsonl, .json (an array of objects), .csv, .tsv, .parquet, .txt (paragraphs of raw text),
a folder of these, or a dataset id on the Hugging Face hub (downloaded when online).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localtune.errors import DataError, Problem

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
_SURROGATE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" leaves for non-UTF-8 bytes


@dataclass(frozen=True)
class Record:
    """One row of a data file, with its location. `value` is a dict, except where a problem says not."""

    path: str
    line: int  # 1-based line (text files) or row number (Parquet)
    value: Any
    unit: str = "line"

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.unit == "line" else f"{self.path} row {self.line}"


@dataclass
class FileRead:
    """What reading one file produced: good records, row problems, and counts of harmless oddities."""

    path: str
    records: list[Record]
    problems: list[Problem]
    blank_lines: int = 0
    forced_format: str | None = None  # .txt files are raw text whatever --format says


def resolve_data_files(spec: str) -> list[Path]:
    """The data files named by `spec`: a file, a folder of files, `demo` or `demo-tools` (the built-in demo
    sets), or a hub dataset id."""
    from localtune.demo import DEMO_SETS

    if spec in DEMO_SETS and not Path(spec).exists():
        return [DEMO_SETS[spec]]
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(
                [
                    Problem(
                        str(path),
                        None,
                        f"unsupported file type {path.suffix or '(none)'!r}",
                        f"convert it to one of: {', '.join(SUPPORTED_SUFFIXES)}",
                        "unsupported",
                    )
                ],
                heading="cannot read data",
            )
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in SUPPORTED_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(
                [
                    Problem(
                        str(path),
                        None,
                        "the folder holds no data files",
                        f"put files ending in {', '.join(SUPPORTED_SUFFIXES)} in it",
                        "missing",
                    )
                ],
                heading="cannot read data",
            )
        return files
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith("."):
        return _download_hub_dataset(spec)
    raise DataError(
        [
            Problem(
                spec,
                None,
                "no such file or folder",
                "check the path (or give a hub dataset id like 'user/name' when online)",
                "missing",
            )
        ],
        heading="cannot read data",
    )


def _download_hub_dataset(repo_id: str) -> list[Path]:
    """Fetch the data files of a hub dataset (no `datasets` dependency: we read the files ourselves)."""
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, repo_type="dataset", allow_patterns=[f"*{s}" for s in SUPPORTED_SUFFIXES])
    except Exception as exc:  # offline, unknown id, gated: all become one clear message
        raise DataError(
            [
                Problem(
                    repo_id,
                    None,
                    f"not a local path, and the hub dataset could not be fetched "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                    "check the path, or the dataset id and your network connection",
                    "missing",
                )
            ],
            heading="cannot read data",
        ) from None
    files = resolve_data_files(local)
    train = [f for f in files if "train" in f.name.lower()]  # hub repos often ship train/test splits
    return train or files


def read_file(path: Path) -> FileRead:
    """Read one data file; raises DataError only when the file as a whole cannot be read."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise DataError(
            [
                Problem(
                    str(path),
                    None,
                    "the file is empty (0 bytes)",
                    "check that the export or download that wrote it finished",
                    "empty",
                )
            ],
            heading="cannot read data",
        )
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json_array(path)
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".txt":
        return _read_txt(path)
    raise AssertionError(f"resolve_data_files let through {path}")


def _decode(raw: bytes) -> str:
    """UTF-8 text with any BOM removed; undecodable bytes survive as surrogates, found per row later."""
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _not_utf8(where: str, text: str, field: str | None = None) -> Problem:
    bad = _SURROGATE.search(text)
    byte = ord(bad.group()) - 0xDC00
    return Problem(
        where,
        field,
        f"byte 0x{byte:02x} at column {bad.start() + 1} is not valid UTF-8",
        "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`), or pass --skip-invalid",
        "not_utf8",
    )


def _not_object(where: str, value: Any) -> Problem:
    kind = {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    return Problem(
        where,
        None,
        f"expected a JSON object {{...}} per row, got {kind}",
        'make every row an object such as {"messages": [...]}, or pass --skip-invalid',
        "not_object",
    )


def _read_jsonl(path: Path) -> FileRead:
    out = FileRead(str(path), [], [])
    with open(path, "rb") as fh:
        lines = list(fh)
    last_content = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    for i, raw in enumerate(lines):
        lineno = i + 1
        where = f"{path}:{lineno}"
        text = _decode(raw) if i == 0 else raw.decode("utf-8", errors="surrogateescape")
        text = text.rstrip("\r\n")
        if not text.strip():
            out.blank_lines += 1
            continue
        if _SURROGATE.search(text):
            out.problems.append(_not_utf8(where, text))
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            cut_off = i == last_content and not raw.endswith(b"\n") and exc.pos >= len(text.rstrip()) - 1
            if cut_off or (i == last_content and "Unterminated string" in exc.msg and not raw.endswith(b"\n")):
                out.problems.append(
                    Problem(
                        where,
                        None,
                        "the last line ends in the middle of a JSON value: the file looks cut off",
                        "re-export or re-download the file, or pass --skip-invalid to drop the partial row",
                        "truncated",
                    )
                )
            else:
                out.problems.append(
                    Problem(
                        where,
                        None,
                        f"not valid JSON: {exc.msg} at column {exc.colno}",
                        "fix the JSON on this line (one object per line), or pass --skip-invalid",
                        "bad_json",
                    )
                )
            continue
        if not isinstance(value, dict):
            out.problems.append(_not_object(where, value))
            continue
        out.records.append(Record(str(path), lineno, value))
    return out


def _read_json_array(path: Path) -> FileRead:
    text = _decode(path.read_bytes())
    out = FileRead(str(path), [], [])
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    def fatal(p: int, message: str, fix: str, reason: str):
        raise DataError([Problem(f"{path}:{line_at(p)}", None, message, fix, reason)], heading="cannot read data")

    if pos < len(text) and text[pos] == "{":
        fatal(
            pos,
            "the file holds one JSON object, not an array of rows",
            "wrap the rows in [ ... ], or save one object per line as .jsonl",
            "not_array",
        )
    if pos >= len(text) or text[pos] != "[":
        fatal(
            pos, "expected a JSON array of row objects", "start the file with [ and put one object per row", "not_array"
        )
    pos = ws.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        return out
    while True:
        start = pos
        try:
            value, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if not text.rstrip().endswith("]"):  # the array never closes: the file was cut short
                fatal(
                    exc.pos,
                    "the file ends in the middle of the array: it looks cut off",
                    "re-export or re-download the file",
                    "truncated",
                )
            fatal(exc.pos, f"not valid JSON: {exc.msg}", "fix the JSON syntax at this line", "bad_json")
        where = f"{path}:{line_at(start)}"
        if isinstance(value, dict) and _SURROGATE.search(text, start, pos):
            out.problems.append(_not_utf8(where, text[start:pos]))
        elif isinstance(value, dict):
            out.records.append(Record(str(path), line_at(start), value))
        else:
            out.problems.append(_not_object(where, value))
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos = ws.match(text, pos + 1).end()
            continue
        if pos < len(text) and text[pos] == "]":
            return out
        if pos >= len(text):
            fatal(
                pos,
                "the file ends before the array is closed with ]: it looks cut off",
                "re-export or re-download the file",
                "truncated",
            )
        fatal(
            pos,
            f"expected ',' or ']' between rows, found {text[pos]!r}",
            "fix the JSON syntax at this line",
            "bad_json",
        )


def _read_delimited(path: Path, delimiter: str) -> FileRead:
    text = _decode(path.read_bytes())
    out = FileRead(str(path), [], [])
    csv.field_size_limit(2**31 - 1)  # long documents in one cell are normal in training data
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return out
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(
            [
                Problem(
                    f"{path}:1",
                    None,
                    "the first line must name the columns",
                    "add a header line such as `instruction,input,output`",
                    "no_header",
                )
            ],
            heading="cannot read data",
        )
    prev_end = reader.line_num
    for row in _rows_with_errors(reader, path):
        if isinstance(row, Problem):  # the reader resumes on the next line
            out.problems.append(row)
            prev_end = reader.line_num
            continue
        start = prev_end + 1
        prev_end = reader.line_num
        where = f"{path}:{start}"
        if not row or all(not c.strip() for c in row):
            out.blank_lines += 1
            continue
        joined = delimiter.join(row)
        if _SURROGATE.search(joined):
            out.problems.append(_not_utf8(where, joined))
            continue
        if len(row) != len(header):
            out.problems.append(
                Problem(
                    where,
                    None,
                    f"the row has {len(row)} fields but the header names {len(header)}",
                    "check quoting and delimiters on this line, or pass --skip-invalid",
                    "bad_columns",
                )
            )
            continue
        out.records.append(Record(str(path), start, dict(zip(header, row))))
    return out


def _rows_with_errors(reader, path: Path) -> Iterator[list[str] | Problem]:
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Problem(
                f"{path}:{reader.line_num}",
                None,
                f"cannot parse this line: {exc}",
                "fix the quoting on this line (a field with the delimiter or a newline needs quotes)",
                "bad_csv",
            )


def _read_parquet(path: Path) -> FileRead:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(
            [
                Problem(
                    str(path),
                    None,
                    f"cannot read as Parquet ({type(exc).__name__}: {exc})",
                    "check that the file is complete and really Parquet",
                    "bad_parquet",
                )
            ],
            heading="cannot read data",
        ) from None
    out = FileRead(str(path), [], [])
    for i, row in enumerate(table.to_pylist(), start=1):
        out.records.append(Record(str(path), i, row, unit="row"))
    return out


def _read_txt(path: Path) -> FileRead:
    """Raw text: one training row per paragraph (paragraphs are separated by blank lines)."""
    text = _decode(path.read_bytes())
    out = FileRead(str(path), [], [], forced_format="text")
    para: list[str] = []
    start = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not para:
                start = lineno
            para.append(line.rstrip("\r"))
            continue
        out.blank_lines += 1
        if para:
            _add_paragraph(out, path, start, para)
            para = []
    if para:
        _add_paragraph(out, path, start, para)
    return out


def _add_paragraph(out: FileRead, path: Path, start: int, lines: list[str]) -> None:
    body = "\n".join(lines)
    where = f"{path}:{start}"
    if _SURROGATE.search(body):
        out.problems.append(_not_utf8(where, body))
    else:
        out.records.append(Record(str(path), start, {"text": body}))
