"""`verify`'s tool check: the exported GGUF's template must render a fixed tool conversation (tools, a call,
its result, reasoning) in llama-cpp-python exactly as the training template does in transformers."""

from __future__ import annotations

import pytest

from localtune.model.tiny import QWEN3_TOOL_TEMPLATE

# The same template with its tool results wrapped differently: plain conversations render the same, so only
# a check that renders a tool conversation can see that a runtime would show the model other text.
DRIFTED = QWEN3_TOOL_TEMPLATE.replace("<tool_response>", "<tool_result>")


@pytest.fixture(scope="module")
def qwen3(tiny_model_dir, tmp_path_factory):
    """The tiny qwen3 folder, and a GGUF of it per embedded template."""
    from localtune.converters.hf_to_gguf import convert

    folder = tiny_model_dir("qwen3")
    out = tmp_path_factory.mktemp("tool-verify")
    files = {}

    def gguf(name: str, template: str):
        if name not in files:
            files[name] = convert(folder, out / f"{name}.gguf", out_type="f32", chat_template=template).path
        return files[name]

    return folder, gguf


def check(gguf, folder, template):
    from transformers import AutoTokenizer

    from localtune.converters.gguf_file import check_gguf
    from localtune.export.verify import _tool_template_check

    return _tool_template_check(check_gguf(gguf), AutoTokenizer.from_pretrained(folder), template)


def test_the_same_template_passes_and_a_drifted_one_fails(qwen3):
    folder, gguf = qwen3
    same = check(gguf("same", QWEN3_TOOL_TEMPLATE), folder, QWEN3_TOOL_TEMPLATE)
    assert same.passed and "the same" in same.detail and "does not write" not in same.detail
    drifted = check(gguf("drifted", DRIFTED), folder, QWEN3_TOOL_TEMPLATE)
    assert not drifted.passed
    assert "<tool_result>" in drifted.detail and "<tool_response>" in drifted.detail  # where they differ, shown


def test_reasoning_shown_mid_call_is_checked(qwen3):
    """Qwen3 hides the reasoning once a later user message exists: only the probe cut at the tool result shows
    it, so a template that drifted in how it writes reasoning is caught there."""
    folder, gguf = qwen3
    drifted = QWEN3_TOOL_TEMPLATE.replace("'<think>\\n' + think", "'<think>' + think")
    assert drifted != QWEN3_TOOL_TEMPLATE
    result = check(gguf("think", drifted), folder, QWEN3_TOOL_TEMPLATE)
    assert not result.passed and "up to the tool result" in result.detail


def test_a_template_that_lost_its_tool_support_fails(qwen3, tiny_model_dir):
    from transformers import AutoTokenizer

    folder, gguf = qwen3
    plain = AutoTokenizer.from_pretrained(folder).chat_template  # the tiny qwen3's own: no tools, no reasoning
    lost = check(gguf("plain", plain), folder, QWEN3_TOOL_TEMPLATE)
    assert not lost.passed and "renders differently" in lost.detail


def test_the_wrapped_template_of_a_tool_run_passes(qwen3, tmp_path):
    """A model without tool support trains with localtune's tool format; the GGUF embeds that template."""
    from transformers import AutoTokenizer

    from localtune.data.template import resolve_chat_template

    folder, gguf = qwen3
    wrapped = resolve_chat_template(AutoTokenizer.from_pretrained(folder), reasoning="last_turn", tools=True).text
    result = check(gguf("wrapped", wrapped), folder, wrapped)
    assert result.passed and "does not write" not in result.detail


def test_the_full_report_carries_the_tool_check(qwen3):
    from localtune.export.verify import verify

    folder, gguf = qwen3
    report = verify(gguf("drifted", DRIFTED), folder, chat_template=QWEN3_TOOL_TEMPLATE)
    by_name = {c.name: c for c in report.checks}
    assert by_name["chat template"].passed  # a plain conversation cannot see the drift
    assert not by_name["tool template"].passed and not report.passed
    assert "FAIL  tool template" in report.render()
