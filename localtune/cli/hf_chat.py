"""`localtune chat RUN_DIR` for runs whose adapter has no GGUF form (LLaMA-Adapter): the run's model on
transformers (model/run_model.py) in chat/hf_session.py's session, which the chat command drives like its
llama.cpp sessions.
"""

from __future__ import annotations

from pathlib import Path

from localtune.errors import UsageError


def transformers_method(target) -> str | None:
    """The method of the run at `target` when only transformers runs it, else None."""
    from localtune.config import load_config
    from localtune.methods import method
    from localtune.runs.layout import RunDir

    run = RunDir(target)
    if not Path(target).is_dir() or not run.config.is_file():
        return None
    name = load_config(run.config).adapter.method
    return name if method(name).kind == "adaption" else None


def hf_session(target, *, compare: bool, system, sampling, ctx: int, notice):
    """(label, session) for the run at `target` on transformers."""
    from localtune.chat.hf_session import HFChatSession
    from localtune.model.run_model import load_run_model

    if compare:
        raise UsageError(
            "--compare needs GGUF files, and this run's adapter has none",
            hint=f"distil it into a LoRA first: localtune distill {target}",
        )
    rm = load_run_model(target)
    notice(f"(running on transformers, {rm.device} {rm.dtype}: LLaMA-Adapter has no GGUF form)")
    session = HFChatSession(
        rm.model, rm.tokenizer, rm.template, system=system, sampling=sampling, notice=notice, n_ctx=ctx
    )
    return None, session
