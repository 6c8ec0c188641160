"""The export bundle of a prompt-tuning, P-tuning or prefix-tuning run (methods of kind virtual / prefix).

Nothing merges into the weights, so the bundle is the base GGUF (verified against the base folder) plus:
- virtual (prompt / P-tuning): `soft_prompt.safetensors` (the vectors, for the base GGUF's input embeddings in
  localtune chat) and the portable `<run>-<TYPE>.gguf` with the vectors as virtual tokens, where the
  architecture allows it (not Gemma / Gemma 2: their llama.cpp graphs tie the head; the bundle says so);
- prefix: `prefix.safetensors`, the sidecar localtune chat pins into llama.cpp's KV cache, written for every
  base GGUF of the bundle.
Each route is verified against peft's forward of base + adapter (export.verify_prompts).
"""

from __future__ import annotations

from localtune.runs.layout import BASE_STEM, RunDir, gguf_name

PORTABLE_NOTE = (
    "the portable GGUF needs a -inf logit bias on its virtual tokens in every sampler; localtune chat and eval "
    "apply it, llama-server and Ollama do not read it from the file and can sample them"
)
PREFIX_NOTE = "prefix tuning runs in localtune chat only: Ollama and llama-server cannot run the prefix"


def export_prompt_run(run_dir, bundle, cfg, quants, verify: bool, say):
    from localtune.chat.routes import RouteSpec
    from localtune.export.bundle import default_quant
    from localtune.export.gguf import export_model
    from localtune.export.verify_prompts import check_route, peft_model, route_report
    from localtune.methods import method
    from localtune.model.loading import resolve_base

    run = RunDir(run_dir)
    kind = method(cfg.adapter.method).kind
    template = run.chat_template.read_text(encoding="utf-8") if run.chat_template.is_file() else None
    base = resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    quants = quants or [default_quant(base.folder)]
    gguf_dir = run.gguf
    bundle.base = export_model(
        base.folder, quants[:1], gguf_dir, chat_template=template, verify=verify, stem=BASE_STEM, say=say
    )
    model = peft_model(base.folder, run.adapter) if verify else None
    if kind == "prefix":
        from localtune.converters.hf_to_gguf import read_config
        from localtune.converters.prefix_sidecar import prefix_from_peft, write_sidecar

        prefix = prefix_from_peft(run.adapter, read_config(base.folder))
        write_sidecar(run.prefix_sidecar, prefix, [f.path for f in bundle.base])
        bundle.extras.append(
            f"`{run.prefix_sidecar.name}` (the learned prefix: {prefix.n_tokens} positions x {prefix.n_layer} "
            f"layers of K/V for localtune chat, written for {bundle.base[0].path.name})"
        )
        bundle.notes.append(PREFIX_NOTE)
        say(f"wrote {run.prefix_sidecar} ({prefix.n_tokens} prefix positions); {PREFIX_NOTE}")
        specs = [(RouteSpec(f.path, sidecar=run.prefix_sidecar), f) for f in bundle.base]
    else:
        specs = _virtual(run, bundle, base.folder, cfg.adapter.method, quants, template, say)
    if verify:
        for spec, f in specs:
            if f is None:  # a portable GGUF: its own report
                f = next(t for t in bundle.tuned if t.path == spec.gguf)
                f.verify = route_report(
                    spec, base.folder, run.adapter, file_type=f.out_type, chat_template=template, model=model
                )
            else:
                check = check_route(
                    spec, base.folder, run.adapter, file_type=f.out_type, chat_template=template, model=model
                )
                f.verify.checks.append(check)
            f.verify.save(f.path.with_name(f.path.name + ".verify.json"))
            say(f.verify.render())
    return bundle


def _virtual(run: RunDir, bundle, folder, method_name: str, quants, template, say):
    from localtune.chat.routes import RouteSpec, write_vectors
    from localtune.chat.soft_prompt import load_vectors
    from localtune.converters.gguf_file import ConversionError
    from localtune.converters.hf_to_gguf import DIRECT_TYPES
    from localtune.converters.soft_prompt import check_portable, write_soft_prompt_gguf
    from localtune.export.gguf import ExportedFile

    vectors = load_vectors(run.adapter)
    write_vectors(run.soft_prompt, vectors, method_name)
    bundle.extras.append(
        f"`{run.soft_prompt.name}` ({len(vectors)} learned vectors: localtune chat runs them as input embeddings "
        f"of `{bundle.base[0].path.name}`)"
    )
    specs = []
    try:
        check_portable(folder)
    except ConversionError as exc:
        note = f"no portable GGUF: {exc.message}; the bundle is the base GGUF + {run.soft_prompt.name} (localtune chat)"
        bundle.notes.append(note)
        say(f"note: {note}")
        return [(RouteSpec(f.path, vectors=run.soft_prompt), f) for f in bundle.base]
    for q in quants:
        target = run.gguf / gguf_name(run.name, q)
        if q in DIRECT_TYPES:
            rep = write_soft_prompt_gguf(
                folder, vectors, target, method=method_name, out_type=q, chat_template=template
            )
        else:  # llama.cpp's quantizer from an f16 intermediate, as export_model does
            from localtune.converters.quantize import quantize

            tmp = run.gguf / f".{run.name}-f16-intermediate.gguf"
            write_soft_prompt_gguf(folder, vectors, tmp, method=method_name, out_type="f16", chat_template=template)
            rep = quantize(tmp, target, q)
            tmp.unlink(missing_ok=True)
        bundle.tuned.append(ExportedFile(target, q, rep.mb_per_s, list(getattr(rep, "fallbacks", []))))
        say(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB; {len(vectors)} virtual tokens baked in)")
        specs.append((RouteSpec(target), None))
    bundle.notes.append(PORTABLE_NOTE)
    return specs + [(RouteSpec(f.path, vectors=run.soft_prompt), f) for f in bundle.base]
