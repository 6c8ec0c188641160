"""What reaches the terminal while libraries work: their bars become our Progress events, their warnings
go to the run's library.log (localtune/console.py)."""

from __future__ import annotations

import logging
import warnings

from helpers import chat, write_jsonl

from localtune.console import library_output, report_to
from localtune.events import ListSink, Progress


def test_library_bars_become_progress_events_and_warnings_go_to_the_log(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    sink, log = ListSink(), tmp_path / "library.log"
    with report_to(sink, log), library_output():
        for _ in hf_logging.tqdm(range(7), desc="Loading weights"):
            pass
        warnings.warn("is_gradient_checkpointing is deprecated", FutureWarning, stacklevel=1)
        logging.getLogger("transformers.modeling_utils").warning("some weights were not initialized")
    progress = sink.of(Progress)
    assert progress and progress[-1].phase == "loading weights" and progress[-1].unit == "tensors"
    assert (progress[-1].done, progress[-1].total) == (7, 7)
    text = log.read_text()
    assert "FutureWarning: is_gradient_checkpointing is deprecated" in text
    assert "transformers.modeling_utils: some weights were not initialized" in text
    out = capsys.readouterr()
    assert "Loading weights" not in out.err + out.out and "deprecated" not in out.err + out.out


def test_outside_report_to_nothing_is_drawn_or_written(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    with library_output():
        assert sum(1 for _ in hf_logging.tqdm(range(3), desc="Writing model shards")) == 3
        warnings.warn("nobody listens", UserWarning, stacklevel=1)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""
    assert hf_logging.is_progress_bar_enabled() == was  # restored as it was


def test_train_prints_our_progress_line_and_no_library_output(cli, tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"q{i}", f"a{i}") for i in range(12)])
    run = tmp_path / "run"
    result = cli(
        "train", "--model", tiny_model_dir("qwen2"), "--data", data, "--out", run, "--max-steps", "1", "--no-quant"
    )
    assert result.exit_code == 0, result.output
    assert "loading weights: " in result.output and " tensors [" in result.output
    assert "Loading weights" not in result.output and "Warning" not in result.output
    assert "is_gradient_checkpointing" in (run / "library.log").read_text()  # peft's notice, kept for whoever looks
