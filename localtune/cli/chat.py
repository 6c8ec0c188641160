"""`localtune chat`: talk offline with a GGUF or a run's exported model.

Run as:  localtune chat RUN_DIR|FILE.gguf [--compare] [--prompt TEXT]
"""

from __future__ import annotations

from pathlib import Path

import click

from localtune.cli.main import friendly_errors, main
from localtune.errors import LocaltuneError


@main.command("chat")
@click.argument("target", type=click.Path(exists=True))
@click.option("--prompt", "-p", help="Answer this once and exit.")
@click.option("--compare", is_flag=True, help="Show the base model's answer next to the fine-tuned one.")
@click.option("--base", "base_file", type=click.Path(exists=True, dir_okay=False), help="Base GGUF for --compare.")
@click.option("--system", help="System prompt.")
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option("--top-p", type=float, default=0.9, show_default=True)
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--ctx", type=int, default=2048, show_default=True, help="Context window in tokens.")
@click.option(
    "--tools",
    "tools_file",
    type=click.Path(dir_okay=False),
    help="JSON list of tools the model may call; you type each call's result.",
)
@click.option("--show-reasoning", is_flag=True, help="Show the model's reasoning instead of folding it to one line.")
@friendly_errors
def chat_cmd(
    target, prompt, compare, base_file, system, temperature, top_p, max_tokens, ctx, tools_file, show_reasoning
):
    """Chat offline with GGUF (or a run's exported model).

    Commands: /reset, /system TEXT, /save FILE, /reasoning (the last reasoning), /quit."""
    from localtune.chat.routes import RouteSpec, find_routes, open_route
    from localtune.chat.session import ChatSession, Sampling
    from localtune.chat.tool_calls import load_tools
    from localtune.cli.chat_turns import TurnPrinter
    from localtune.cli.hf_chat import hf_session, transformers_method
    from localtune.errors import UsageError

    sampling = Sampling(temperature, top_p, max_tokens)
    notice = lambda m: click.echo(m, err=True)  # noqa: E731
    tools = load_tools(tools_file) if tools_file else None
    if tools and transformers_method(target):
        raise UsageError("--tools needs a GGUF: this run's model runs on transformers", hint="chat without --tools")
    if transformers_method(target):  # LLaMA-Adapter: no GGUF, the run's model on transformers
        tuned, sessions = (
            target,
            [hf_session(target, compare=compare, system=system, sampling=sampling, ctx=ctx, notice=notice)],
        )
    else:
        tuned, base = find_routes(target)  # a prompt-/prefix-tuning run: its GGUF with the vectors or the prefix
        base = RouteSpec(Path(base_file)) if base_file else base
        if compare and base is None:
            raise UsageError("--compare needs a base model", hint="pass --base BASE.gguf, or chat with a RUN_DIR")
        models = [("fine-tuned" if compare else None, tuned)] + ([("base", base)] if compare else [])
        sessions = [
            (
                label,
                ChatSession(open_route(path, n_ctx=ctx), system=system, sampling=sampling, notice=notice, tools=tools),
            )
            for label, path in models
        ]
    printer = TurnPrinter(show_reasoning=show_reasoning)

    def answer(text: str, answer_calls: bool = True) -> None:
        for label, session in sessions:
            printer.turn(label, session, text, answer_calls=answer_calls and bool(tools))

    if prompt is not None:
        answer(prompt, answer_calls=False)
        return
    click.echo(f"chatting with {_shown(tuned)}" + (f" and {_shown(base)}" if compare else "") + "; /quit to leave")
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            for _, s in sessions:
                s.reset()
            click.echo("(history cleared)")
        elif line.startswith("/system"):
            for _, s in sessions:
                s.system = line[len("/system") :].strip() or None
                s.reset()
            click.echo("(system prompt set; history cleared)")
        elif line == "/reasoning":
            printer.show_last_reasoning()
        elif line.startswith("/save"):
            path = line[len("/save") :].strip() or "chat.json"
            click.echo(f"(saved to {sessions[0][1].save(path)})")
        else:
            try:
                answer(line)
            except LocaltuneError as exc:  # e.g. a prompt too long for the window: say so, keep chatting
                click.echo(exc.render(), err=True)


def _shown(spec) -> str:
    extra = spec.sidecar or spec.vectors
    return f"{spec.gguf}" + (f" + {extra.name}" if extra else "")
