"""How a tuned model is run in llama.cpp, one route per adapter kind, behind one interface.

- plain: a GGUF as it is (merged, base, any file);
- portable: a prompt-tuning / P-tuning GGUF with the vectors as virtual tokens (converters.soft_prompt): the
  prompt starts with those ids, and every sampler call carries the -inf logit bias on them;
- vectors: the base GGUF with the learned vectors as input embeddings (chat.soft_prompt), where the portable
  form does not exist (Gemma, Gemma 2);
- prefix: the base GGUF with the prefix-tuning sidecar pinned into the KV cache (chat.prefix_cache).

Everything that generates or scores with a tuned model (chat, `--compare`, `quick`'s sample, `localtune eval`)
goes through `Route`: `prompt(ids)` is what to hand llama-cpp-python for the prompt `ids` (the virtual part
in front, pinned again if the cache lost it), `complete` samples with the route's bias, `logits` scores
teacher-forced. `ids` never hold the virtual part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from localtune.runs.layout import RunDir

VECTORS_TENSOR = "vectors"


@dataclass(frozen=True)
class RouteSpec:
    """What to open: a GGUF, plus the vectors or the sidecar that go with it (at most one)."""

    gguf: Path
    vectors: Path | None = None
    sidecar: Path | None = None

    @property
    def kind(self) -> str:
        if self.sidecar:
            return "prefix"
        if self.vectors:
            return "vectors"
        from localtune.converters.soft_prompt import virtual_token_ids

        return "portable" if virtual_token_ids(self.gguf) else "plain"

    @property
    def n_virtual(self) -> int:
        """Positions the route will put in front of every prompt (Route.n_virtual), read from the files
        without opening the model: what a prompt must leave room for in the context."""
        if self.sidecar:
            from localtune.converters.prefix_sidecar import read_sidecar

            return read_sidecar(self.sidecar).n_tokens
        if self.vectors:
            return int(read_vectors(self.vectors).shape[0])
        from localtune.converters.soft_prompt import virtual_token_ids

        return len(virtual_token_ids(self.gguf))


def write_vectors(path: str | os.PathLike, vectors, method: str) -> Path:
    """The learned vectors as one safetensors tensor, atomically (the bundle's soft_prompt.safetensors)."""
    import numpy as np
    from safetensors.numpy import save_file

    from localtune.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        save_file({VECTORS_TENSOR: rows}, str(tmp), metadata={"method": method})
    return path


def read_vectors(path: str | os.PathLike):
    from safetensors.numpy import load_file

    from localtune.chat.soft_prompt import SoftPromptError

    try:
        return load_file(str(path))[VECTORS_TENSOR]
    except (OSError, KeyError, ValueError) as exc:
        raise SoftPromptError(f"{path} holds no learned vectors ({exc})", hint="export the run again") from None


def spec_for(gguf: str | os.PathLike, *, tuned: bool = True) -> RouteSpec:
    """The route of a GGUF file: a base GGUF of a prompt-tuning or prefix bundle runs with the bundle's
    vectors / sidecar when it stands for the tuned model; any other file runs as it is (portable or plain)."""
    from localtune.runs.layout import is_base_gguf

    gguf = Path(gguf)
    run = RunDir(gguf.parent.parent)
    if tuned and is_base_gguf(gguf) and gguf.parent == run.gguf:
        if run.prefix_sidecar.is_file():
            return RouteSpec(gguf, sidecar=run.prefix_sidecar)
        if run.soft_prompt.is_file() and not run.tuned_ggufs():
            return RouteSpec(gguf, vectors=run.soft_prompt)
    return RouteSpec(gguf)


def find_routes(target: str | os.PathLike) -> tuple[RouteSpec, RouteSpec | None]:
    """(tuned, base or None) for a GGUF file or a run folder's bundle. A prefix bundle (and a prompt-tuning
    bundle without a portable GGUF) has no tuned GGUF: its tuned route is the base GGUF with the sidecar."""
    from localtune.errors import UsageError

    target = Path(target)
    if target.is_file():
        return spec_for(target), None
    run = RunDir(target)
    tuned, base = run.tuned_ggufs(), run.base_ggufs()
    base_spec = RouteSpec(base[0]) if base else None
    if tuned:
        return RouteSpec(tuned[0]), base_spec
    if base and (run.prefix_sidecar.is_file() or run.soft_prompt.is_file()):
        return spec_for(base[0]), base_spec
    raise UsageError(
        f"{target} holds no exported GGUF", hint=f"run `localtune export {target}` first, or give a .gguf file"
    )


class Route:
    """One opened model and the way to run it (see the module doc)."""

    def __init__(self, spec: RouteSpec, llm, *, soft=None, pinned=None):
        from localtune.converters.soft_prompt import virtual_token_ids

        self.spec, self.llm, self.soft, self.pinned = spec, llm, soft, pinned
        self.virtual_ids = virtual_token_ids(spec.gguf) if soft is None and pinned is None else []
        # llama.cpp samples CONTROL tokens too: a portable GGUF's virtual ids get -inf in every sampler call
        self.bias = dict.fromkeys(self.virtual_ids, float("-inf"))

    @property
    def kind(self) -> str:
        if self.pinned is not None:
            return "prefix"
        if self.soft is not None:
            return "vectors"
        return "portable" if self.virtual_ids else "plain"

    @property
    def n_virtual(self) -> int:
        """Positions the route puts in front of the prompt."""
        if self.pinned is not None:
            return self.pinned.n_tokens
        if self.soft is not None:
            return self.soft.n_virtual
        return len(self.virtual_ids)

    def prompt(self, ids) -> list[int]:
        """The token list for llama-cpp-python's create_completion/generate: the virtual part, then `ids`."""
        ids = [int(t) for t in ids]
        if self.soft is not None:
            return self.soft.tokens(ids)
        if self.pinned is not None:
            self.pinned.ensure_pinned()
            return self.pinned.placeholders + ids
        return self.virtual_ids + ids

    def complete(self, ids, **kwargs):
        """`Llama.create_completion` of the prompt `ids` through this route, with its logit bias."""
        if self.bias:
            kwargs["logit_bias"] = {**self.bias, **(kwargs.get("logit_bias") or {})}
        if self.pinned is None:
            return self.llm.create_completion(self.prompt(ids), **kwargs)
        import warnings

        def quiet(run):  # the prefix's placeholders are BOS tokens, by design: llama-cpp-python's warning is noise
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected duplicate leading", category=RuntimeWarning)
                return run()

        if not kwargs.get("stream"):
            return quiet(lambda: self.llm.create_completion(self.prompt(ids), **kwargs))

        def streamed():  # a stream runs (and warns) while it is iterated, after this call has returned
            stream = self.llm.create_completion(self.prompt(ids), **kwargs)
            while (piece := quiet(lambda: next(stream, None))) is not None:
                yield piece

        return streamed()

    def logits(self, ids):
        """Teacher-forced logits, float32 [len(ids), n_vocab]: row i predicts the token after ids[i]. A portable
        GGUF's virtual-token columns are -inf, as its logit bias makes them for sampling."""
        import numpy as np

        ids = [int(t) for t in ids]
        if self.soft is not None:
            return self.soft.logits(ids)
        if self.pinned is not None:
            return self.pinned.score(ids)
        llm, full = self.llm, self.virtual_ids + ids
        llm.reset()
        llm.eval(full)
        scores = np.asarray(llm._scores[len(self.virtual_ids) : len(full)], dtype=np.float32)
        if self.virtual_ids:  # the sampler never sees the virtual tokens (-inf bias): neither does a score
            scores[:, self.virtual_ids] = -np.inf
        return scores

    def repin(self) -> None:
        """Pin the vectors / prefix again if llama.cpp's context lost them (a no-op for GGUF-only routes)."""
        if self.soft is not None and not self.soft.pinned():
            self.soft.pin()
        if self.pinned is not None:
            self.pinned.ensure_pinned()

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The messages rendered by the GGUF's chat template and tokenized as llama.cpp's chat does, without
        the virtual part (a portable GGUF's template starts with its virtual tokens: they are taken off)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self.llm
        template = llm.metadata.get("tokenizer.chat_template") or ""
        text = lambda tid: llm.detokenize([tid], special=True).decode("utf-8", errors="replace")  # noqa: E731
        rendered = Jinja2ChatFormatter(
            template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()), add_generation_prompt=True
        )(messages=messages).prompt
        ids = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        n = len(self.virtual_ids)
        if n and ids[:n] == self.virtual_ids:
            return ids[n:]
        add_bos = str(llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower() in ("true", "1")
        bos = llm.token_bos()
        if add_bos and bos is not None and bos >= 0 and "bos_token" not in template and ids[:1] != [bos]:
            ids = [bos, *ids]  # what the portable GGUF's template writes after its virtual tokens
        return ids

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close:
            close()


def open_route(spec: RouteSpec | str | os.PathLike, **open_kwargs) -> Route:
    """Open `spec` (a RouteSpec, or a GGUF path: `spec_for(path)`) with `chat.runtime.open_gguf(**open_kwargs)`."""
    from localtune.chat.runtime import open_gguf

    spec = spec if isinstance(spec, RouteSpec) else spec_for(spec)
    if spec.sidecar:
        from localtune.chat.prefix_cache import open_with_prefix

        pinned = open_with_prefix(spec.gguf, spec.sidecar, **open_kwargs)
        return Route(spec, pinned.llm, pinned=pinned)
    llm = open_gguf(spec.gguf, **open_kwargs)
    if spec.vectors:
        from localtune.chat.soft_prompt import attach

        return Route(spec, llm, soft=attach(llm, read_vectors(spec.vectors)))
    return Route(spec, llm)


def as_route(model) -> Route:
    """A Route for an opened `Llama` (a plain route over it), or `model` itself when it is one."""
    if isinstance(model, Route):
        return model
    return Route(RouteSpec(Path(model.model_path)), model)
