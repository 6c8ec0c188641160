"""A training run: the run folder, pre-flight checks, resume rules, and the loop, as one object.

Order matters: the data is validated before any model is loaded, the disk is checked before
training, and every stage checks for a stop request. Everything that happens is an event, sent to
the caller's sinks and appended to `RUN_DIR/events.jsonl`.

Run folder (runs/layout.py): config.yaml, events.jsonl, run.json (RunInfo), chat_template.jinja,
checkpoints/step-NNNNNN/, adapter/ (replaced whole, the old one kept until the new one is in place).

Data parallel (world.py, launch.py): every rank runs this same function. Rank 0 alone locks and writes
the run folder (config, events, run.json, checkpoints, adapter); the others load the same data and base,
train their share of each step and write nothing. A check only rank 0 makes (the folder in use, the
disk, the checkpoint to resume) is agreed with the others before they go on (`_main_only`).

Run as:  localtune train --model M --data D --out RUN_DIR [--resume] [--gpus N]
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from localtune.config import Config
from localtune.console import library_output
from localtune.data.dataset import LoadedData, load_examples, prepare_data
from localtune.errors import LocaltuneError, UsageError
from localtune.events import (
    DataPrepared,
    Emitter,
    Failed,
    Finished,
    Interrupted,
    JsonlSink,
    MemoryPlanned,
    ModelLoaded,
    RecipeChosen,
    RunStarted,
    Warning,
)
from localtune.faults import disk_full, fault_point, signal_point
from localtune.files import atomic_folder, write_text
from localtune.methods import method
from localtune.model.loading import load_for_training, memory_in_use, resolve_base
from localtune.runs.layout import FAILED, INTERRUPTED, RUNNING, STARTING, BaseInfo, DataInfo, RunDir, RunInfo
from localtune.runs.lock import run_lock
from localtune.train.checkpoint import CheckpointError, CheckpointStore
from localtune.train.loop import Hooks, StopFlag, StopRequested, Trainer, TrainingError
from localtune.train.recipe import choose_recipe
from localtune.train.world import PeerFailed, RankLost, World, join

# What a checkpoint must share with the run that resumes it; anything else may change.
IDENTITY_LABELS = {
    "base": "base model",
    "data": "training data",
    "max_seq_len": "data.max_seq_len",
    "lora_shape": "LoRA shape (rank, target modules, DoRA)",
    "adapter": "adapter method or its shape",
    "lr_groups": "learning-rate groups (train.layer_lr_decay, adapter.lora_plus_ratio)",
    "world_size": "number of ranks (--gpus)",
}
# What a checkpoint made before an identity key existed is taken to have had
IDENTITY_DEFAULTS = {"lr_groups": [1.0, 0.0], "world_size": 1}


def adapter_identity(cfg: Config) -> list:
    """What a checkpoint of a non-LoRA method must share with the run that resumes it."""
    a = cfg.adapter
    return [
        a.method,
        a.r,
        sorted(a.target_modules),
        a.oft_block_size,
        a.virtual_tokens,
        a.encoder_hidden,
        a.adapter_layers,
        sorted(a.freeze_modules),
    ]


@dataclass
class RunResult:
    status: str  # finished, stopped_early, interrupted
    exit_code: int
    run_dir: Path
    adapter_dir: Path | None = None
    final_loss: float | None = None


def data_fingerprint(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.input_ids, r.labels]).encode())
    return h.hexdigest()[:16]


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = RunDir(run_dir).write_probe
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"cannot write to the output folder {run_dir}: {exc.strerror or exc}",
            hint="choose another --out, or fix the folder's permissions",
            title="output not writable",
        ) from None


def check_disk(run_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise UsageError(
            f"{run_dir} has {free / 1e9:.2f} GB free; checkpoints and the adapter need about {needed / 1e9:.2f} GB",
            hint="free some space, use another --out, or lower train.keep_checkpoints",
            title="not enough disk space",
        )


def check_resume_identity(saved: dict, current: dict, force: bool, warn) -> None:
    def label(k: str) -> str:
        if k == "world_size":  # the one a user fixes by a flag: say which value resumes
            was = saved.get(k, IDENTITY_DEFAULTS[k])
            return f"number of ranks ({was}, now {current[k]}: resume with --gpus {was}, or {was} torchrun ranks)"
        return IDENTITY_LABELS.get(k, k)

    changed = [label(k) for k in current if saved.get(k, IDENTITY_DEFAULTS.get(k)) != current[k]]
    if not changed:
        return
    if force:
        warn(f"resuming although these changed: {', '.join(changed)} (--force-resume)")
        return
    raise UsageError(
        f"the checkpoint was made with a different {', '.join(changed)}; resuming would not continue the same training",
        hint="restore the original settings and data, start a new run "
        "with another --out, or pass --force-resume to continue anyway",
        title="cannot resume",
    )


def resume_command(cfg: Config, run_dir: Path, world_size: int = 1) -> str:
    """The command that resumes the run; a checkpoint resumes on as many ranks as made it."""
    from localtune.train.launch import LAUNCHED

    plain = f"localtune train --resume --out {run_dir} --model {cfg.model.name_or_path} --data {cfg.data.path}"
    if world_size > 1 and not os.environ.get(LAUNCHED):  # started by torchrun itself
        return f"the same torchrun command with --resume added (torchrun ... -m {plain.removeprefix('localtune ')})"
    return plain + (f" --gpus {world_size}" if world_size > 1 else "")


def train_run(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    force_resume: bool = False,
    sinks=(),
    hooks: Hooks | None = None,
    loaded: LoadedData | None = None,
) -> RunResult:
    """Train cfg's model on cfg's data into run_dir. Raises LocaltuneError for user-fixable problems.

    loaded: cfg's data, already read and validated by the caller (quick's preflight), so it is not read twice.
    Started by torchrun (or --gpus), this process is one rank of a data-parallel run (world.py).
    """
    run_dir = Path(run_dir)
    world = join(cfg.train.device)
    try:
        if world.distributed:  # rank 0's: another machine has no run folder, so no saved configuration to resume
            cfg = world.broadcast(cfg)
        with contextlib.ExitStack() as stack:

            def lock() -> None:
                check_writable(run_dir)
                stack.enter_context(run_lock(run_dir, "training"))

            _main_only(world, lock)
            result = _locked_train_run(cfg, run_dir, resume, force_resume, sinks, hooks, loaded, world)
        try:  # every rank waits for rank 0's last writes: a rank that exits first makes the launcher stop the rest
            world.barrier()
        except RankLost:
            pass
        return result
    finally:
        _ignore_signals(world)
        world.close()


def _ignore_signals(world: World) -> None:
    """A rank that is done (or failing): the launcher's SIGTERM, sent to the ranks still running once one
    exits, must not cut short its last writes or its message."""
    if world.distributed:
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _main_only(world: World, fn):
    """fn() on rank 0 only (it writes or reads the run folder); a LocaltuneError it raises stops every rank:
    rank 0 re-raises it, the others end quietly. Returns fn's result on rank 0, None elsewhere."""
    result, error = None, None
    if world.main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - any failure here must stop the others too, then is re-raised
            error = exc
    world.agree_no_error(error)
    return result


def _new_info(run: RunDir, resume: bool) -> RunInfo:
    """This process's run.json, STARTING: a resumed run keeps its record (base, data) until it writes its
    own; where start_training launched this process, the train.log offset it recorded is kept."""
    prior = run.read_info()
    info = prior if resume and prior is not None else RunInfo()
    # (a rank of `--gpus N`: started by the launcher, whose pid start_training recorded)
    info.log_offset = prior.log_offset if prior is not None and prior.pid in (os.getpid(), os.getppid()) else None
    # a data-parallel run's record names the launcher (torchrun's agent, or --gpus): a signal to it reaches every rank
    from localtune.train.launch import in_world

    info.status, info.pid, info.error = STARTING, os.getppid() if in_world() else os.getpid(), ""
    info.started = time.strftime("%Y-%m-%dT%H:%M:%S")
    return info


def _locked_train_run(cfg, run_dir: Path, resume, force_resume, sinks, hooks, loaded, world: World) -> RunResult:
    run = RunDir(run_dir)
    store = CheckpointStore(run.checkpoints, cfg.train.keep_checkpoints, warn=lambda m: emit(Warning(m)))

    def first_look() -> list[str]:
        recovered = run.recover()  # an adapter replacement cut short by a crash: put the old one back first
        if not resume and (store.complete() or run.adapter.exists()):
            raise UsageError(
                f"{run_dir} already holds a training run",
                hint="continue it with --resume, or choose a new --out",
                title="run folder in use",
            )
        return recovered

    recovered = _main_only(world, first_look) or []
    emit = Emitter(JsonlSink(run.events), *sinks) if world.main else Emitter(*sinks)
    for line in recovered:
        emit(Warning(line))
    stop = StopFlag(quiet=not world.main)
    stop.install()
    started = time.monotonic()
    run_info = _new_info(run, resume) if world.main else RunInfo()
    save_info = run.save_info if world.main else (lambda info: None)  # only rank 0 writes run.json
    try:
        return _train(cfg, run, store, emit, stop, resume, force_resume, hooks, run_info, started, loaded, world)
    except StopRequested:  # before the loop started (data preparation, model loading)
        if not world.main:
            return RunResult(INTERRUPTED, stop.exit_code, run_dir)
        latest = store.latest_valid()
        if latest is None:
            emit(
                Interrupted(
                    step=0,
                    signal=stop.signal,
                    checkpoint=None,
                    resume_command="nothing was trained yet: run the same command again",
                )
            )
        else:
            emit(
                Interrupted(
                    step=latest[1]["step"],
                    signal=stop.signal,
                    checkpoint=str(latest[0]),
                    resume_command=resume_command(cfg, run_dir, world.size),
                )
            )
        run_info.status = INTERRUPTED
        save_info(run_info)
        return RunResult(INTERRUPTED, stop.exit_code, run_dir)
    except LocaltuneError as exc:
        _ignore_signals(world)  # the record and the message come first
        if not world.main and not getattr(exc, "own_rank", False):
            # rank 0 read the same data and flags and says the same (or saw this rank's failure): one message
            raise PeerFailed(exc.exit_code) from None
        emit(Failed(exc.render()))
        run_info.status, run_info.error = FAILED, exc.render()
        save_info(run_info)
        raise
    finally:
        stop.restore()
        _ignore_signals(world)  # from here to the exit: the final barrier, or the error on its way out


def _on_every_rank(world: World, fn):
    """fn() on every rank; an error on any of them stops them all (agree_no_error)."""
    result, error = None, None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised by agree_no_error on this rank
        error = exc
    world.agree_no_error(error)
    return result


def _resolve_base_once_per_machine(cfg: Config, world: World):
    """resolve_base, which may write the model cache (a GGUF import, a text-only copy): on each machine its
    local rank 0 first, then the others, which find it done."""

    def resolve():
        return resolve_base(cfg.model.name_or_path, trust_remote_code=cfg.model.trust_remote_code)

    if not world.distributed:
        return resolve()
    base, error = None, None
    if world.local_rank == 0:
        try:
            base = resolve()
        except Exception as exc:  # noqa: BLE001 - every rank stops; this one re-raises it
            error = exc
    world.agree_no_error(error)
    return base or resolve()


def _check_ranks_agree(world: World, identity: dict, rows: tuple[int, int]) -> None:
    """Every rank must train the same rows of the same base: each has its own copy of the data and model."""
    if not world.distributed:
        return
    mine = (identity["data"], identity["base"].get("fingerprint"), rows)
    every = world.gather(mine)
    other = next((r for r, x in enumerate(every) if x != every[0]), None)
    if other is not None:
        what = "training data" if every[other][0] != every[0][0] or every[other][2] != every[0][2] else "base model"
        raise UsageError(
            f"rank {other} has other {what} than rank 0 (they must be the same files on every machine)",
            hint="give every machine the same data file and model at the same paths",
            title="ranks differ",
        )


def plan_memory(cfg: Config, shape, lm, longest: int) -> MemoryPlanned:
    """The micro-batch (the planner's pick when it is auto) and whether to offload the checkpoints, for the
    longest row. Offload applies on CUDA only: when asked for, or on `auto` when the plan does not fit
    the free GPU memory without it."""
    import torch

    from localtune.planner import estimate, recommend

    micro, accum, cuda = cfg.train.micro_batch_size, cfg.train.grad_accum, lm.device == "cuda"
    in_use = memory_in_use(lm.model, lm.device)  # the loaded weights count in the plan too
    if cuda:
        budget = int((torch.cuda.mem_get_info()[0] + in_use) * 0.9)
    else:
        budget = int((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2 + in_use) * 0.9)
    checkpointing = cfg.train.gradient_checkpointing and method(cfg.adapter.method).checkpointing
    offload = cfg.train.activation_offload if cuda and checkpointing else "off"
    kw = {
        "rank": cfg.adapter.r,
        "targets": cfg.adapter.target_modules,
        "quantized": cfg.train.load_in_4bit,
        "checkpointing": checkpointing,
        "optimizer": cfg.train.optimizer,
        "weight_bytes": 2 if cuda else 4,
        "method": cfg.adapter.method,
        "virtual_tokens": cfg.adapter.virtual_tokens,
        "freeze_modules": cfg.adapter.freeze_modules,
    }
    if micro == 0:  # the planner picks the micro-batch; rows per step stay grad_accum
        plan = recommend(shape, budget, seq_len=longest, max_micro_batch=accum, offload=offload, **kw).plan
        micro, accum = plan.micro_batch, -(-accum // plan.micro_batch)
        reason = f"micro-batch {micro} is the largest that fits"
    else:
        plan = estimate(shape, micro_batch=micro, seq_len=longest, offload=offload == "on", **kw)
        if offload == "auto" and plan.total > budget:
            plan = estimate(shape, micro_batch=micro, seq_len=longest, offload=True, **kw)
        reason = f"micro-batch {micro} as configured"
    if plan.offload:
        reason += "; checkpoints offloaded to pinned CPU memory" + (
            " (train.activation_offload on)"
            if offload == "on"
            else ": without that the plan exceeds the free GPU memory"
        )
    return MemoryPlanned(micro, accum, plan.total, budget, plan.offload, reason)


def _train(
    cfg, run: RunDir, store, emit, stop, resume, force_resume, hooks, run_info: RunInfo, started, loaded, world
) -> RunResult:
    import torch

    from localtune.planner import Shape

    run_dir = run.path
    main = world.main
    save_info = run.save_info if main else (lambda info: None)
    if main and not resume:  # a resume saves its configuration once the checkpoint accepted it
        cfg.save(run.config)
    save_info(run_info)  # status "starting" and our pid, for watchers
    emit(RunStarted(str(run_dir), cfg.to_dict(), resume=resume))
    if loaded is None:  # on every rank (each machine has its own copy); a rank that cannot read it stops them all
        loaded = _on_every_rank(
            world, lambda: load_examples(cfg.data.path, cfg.data.format, skip_invalid=cfg.data.skip_invalid)
        )
    stop.check(world)
    base = _resolve_base_once_per_machine(cfg, world)
    tokenizer = base.tokenizer()
    signal_point("train.prepare")
    prepared = prepare_data(
        cfg.data, tokenizer, seed=cfg.train.seed, loaded=loaded, chat_template=cfg.model.chat_template
    )
    ts = prepared.train_stats
    emit(
        DataPrepared(
            len(prepared.train),
            len(prepared.val),
            ts.total_tokens,
            ts.trainable_tokens,
            len(ts.dropped_no_trainable),
            ts.truncated,
            prepared.template.origin,
        )
    )
    if main:
        write_text(run.chat_template, prepared.template.text)
    stop.check(world)

    from transformers import AutoConfig

    shape = Shape.from_config(AutoConfig.from_pretrained(base.folder))
    lora_params = shape.adapter_params(
        cfg.adapter.method,
        cfg.adapter.r,
        cfg.adapter.target_modules,
        cfg.adapter.virtual_tokens,
        freeze_modules=cfg.adapter.freeze_modules,
    )
    opt_bytes = 2 if "8bit" in cfg.train.optimizer and torch.cuda.is_available() else 8
    needed = lora_params * (4 + opt_bytes) * (cfg.train.keep_checkpoints + 1) + lora_params * 4 + 10**7
    _main_only(world, lambda: check_disk(run_dir, needed))

    identity = {
        "base": base.identity,
        "data": data_fingerprint(prepared.train),
        "max_seq_len": cfg.data.max_seq_len,
    }
    if method(cfg.adapter.method).lora_family:  # as before other methods existed, so earlier runs still resume
        identity["lora_shape"] = [cfg.adapter.r, sorted(cfg.adapter.target_modules), cfg.adapter.method == "dora"]
    else:
        identity["adapter"] = adapter_identity(cfg)
    identity["lr_groups"] = [cfg.train.layer_lr_decay, cfg.adapter.lora_plus_ratio]  # the optimizer's groups
    identity["world_size"] = world.size  # a step is micro x accum x ranks rows: another number is another run
    _check_ranks_agree(world, identity, (len(prepared.train), len(prepared.val)))

    def find_checkpoint():
        store.remove_stale()
        if not resume:
            return None
        latest = store.latest_valid()
        if latest is None:
            raise UsageError(
                f"{run.checkpoints} holds no complete checkpoint to resume from",
                hint="start the run without --resume",
                title="nothing to resume",
            )
        check_resume_identity(latest[1]["identity"], identity, force_resume, lambda m: emit(Warning(m)))
        store.protected.add(latest[0].name)
        return latest

    found = _main_only(world, find_checkpoint)
    if main and resume:  # a refused resume leaves the run's configuration as it was
        cfg.save(run.config)
    resuming = world.broadcast(found is not None)

    lm = load_for_training(cfg, base)
    stop.check(world)
    model = lm.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    emit(
        ModelLoaded(
            base.spec,
            base.architecture,
            lm.device,
            lm.dtype,
            lm.quantized,
            total,
            trainable,
            memory_in_use(model, lm.device),
            round(lm.seconds, 2),
            lm.kernels,
        )
    )
    for note in lm.notes:
        emit(Warning(note))

    planned = plan_memory(cfg, shape, lm, max(len(r.input_ids) for r in prepared.train))
    if world.distributed:  # planned per GPU; on auto every rank takes the smallest micro-batch any rank can fit
        micro = world.smallest(planned.micro_batch)
        accum = -(-cfg.train.grad_accum // micro) if cfg.train.micro_batch_size == 0 else planned.grad_accum
        planned = dataclasses.replace(
            planned,
            micro_batch=micro,
            grad_accum=accum,
            reason=f"{planned.reason} (planned per rank, for each of {world.size}; a step is {micro} x {accum} x "
            f"{world.size} = {micro * accum * world.size} rows)",
        )
    micro, accum, auto = planned.micro_batch, planned.grad_accum, cfg.train.micro_batch_size == 0
    if planned.activation_offload:
        from localtune.train.speed.offload import install

        install(model)
    elif cfg.train.activation_offload == "on":
        emit(
            Warning(
                "train.activation_offload is on, but training runs on the CPU, where the activations are "
                "in CPU memory already; not offloading"
            )
        )
    emit(planned)
    recipe = choose_recipe(
        cfg,
        rows=len(prepared.train),
        rows_per_step=micro * accum * world.size,
        params=shape.linear_params() + shape.embedding_params(),
    )
    if recipe is not None:  # what the user left unset; saved, so a resumed run keeps it
        for key in recipe.chosen:
            cfg.set(key, recipe.epochs if key == "train.epochs" else recipe.lr, "recipe")
        if main:
            cfg.save(run.config)
        emit(RecipeChosen(recipe.epochs, recipe.lr, recipe.total_steps, list(recipe.chosen), recipe.reason))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    trainer = Trainer(
        cfg,
        model,
        prepared.train,
        prepared.val,
        device=lm.device,
        dtype=lm.dtype,
        pad_id=pad_id,
        store=store,
        identity=identity,
        emit=emit,
        stop=stop,
        micro_batch=micro,
        grad_accum=accum,
        auto_micro_batch=auto,
        hooks=hooks,
        world=world,
    )
    if resuming:

        def read_checkpoint():
            source, manifest = found
            try:
                return store.load(source, manifest, trainer._read_adapter)
            except CheckpointError as exc:
                raise UsageError(
                    f"cannot resume from {source}: {exc}",
                    title="checkpoint refused",
                    hint="delete that checkpoint folder to resume from an earlier one, or start a new "
                    "run with another --out",
                ) from None

        snap = world.broadcast(_main_only(world, read_checkpoint))  # rank 0 reads it; every rank restores it

        try:
            trainer.restore(snap)
        except CheckpointError as exc:  # the same on every rank: rank 0 says it
            raise UsageError(
                f"cannot resume from {found[0] if found else 'the checkpoint'}: {exc}",
                title="checkpoint refused",
                hint="delete that checkpoint folder to resume from an earlier one, or start a new "
                "run with another --out",
            ) from None
        if found is not None:
            trainer.last_checkpoint = str(found[0])
            emit(Warning(f"resumed from {found[0]} at step {trainer.state.step}"))

    run_info.status = RUNNING
    run_info.base = BaseInfo(**{k: v for k, v in base.identity.items() if k in ("model", "model_type", "fingerprint")})
    run_info.data = DataInfo(identity["data"], len(prepared.train), len(prepared.val))
    run_info.device, run_info.dtype, run_info.quantized = lm.device, lm.dtype, lm.quantized
    run_info.method = cfg.adapter.method
    run_info.micro_batch, run_info.grad_accum = micro, accum
    run_info.world_size = world.size
    save_info(run_info)
    try:
        status = trainer.run()
    except (TrainingError, RankLost):
        run_info.steps, run_info.losses = trainer.state.step, list(trainer.state.losses)
        raise
    if hooks and hooks.trained:
        hooks.trained(model)
    st = trainer.state
    run_info.steps, run_info.tokens_seen, run_info.peak_memory_bytes = st.step, st.tokens_seen, trainer.peak_memory()
    run_info.final_loss = st.losses[-1] if st.losses else None
    run_info.losses, run_info.eval_losses = list(st.losses), [tuple(p) for p in st.eval_losses]
    run_info.seconds = round(time.monotonic() - started, 2)
    if status == INTERRUPTED:
        emit(Interrupted(st.step, stop.signal, trainer.last_checkpoint, resume_command(cfg, run_dir, world.size)))
        run_info.status = INTERRUPTED
        save_info(run_info)
        return RunResult(INTERRUPTED, stop.exit_code, run_dir, final_loss=run_info.final_loss)
    if not main:  # rank 0 writes the adapter and the run's record
        return RunResult(status, 0, run_dir, None, run_info.final_loss)
    try:
        # Saved under a temporary name and renamed in whole; a previous adapter (a resumed, finished run)
        # stays in place until the new one is complete.
        with atomic_folder(run.adapter) as tmp, library_output():  # no library bar of its own on the terminal
            if method(cfg.adapter.method).kind == "freeze":
                trainer.write_adapter(tmp)  # the trained tensors and freeze.json (model/freeze.py)
            else:
                model.save_pretrained(tmp)
            fault_point("adapter.rename")
    except OSError as exc:
        raise disk_full(exc, "the final adapter", run_dir, trainable * 4) or exc from None
    eval_loss = st.eval_losses[-1][1] if st.eval_losses else None
    run_info.status, run_info.adapter, run_info.eval_loss = status, str(run.adapter), eval_loss
    run.save_info(run_info)
    emit(
        Finished(
            st.step,
            run_info.final_loss,
            eval_loss,
            str(run.adapter),
            run_info.seconds,
            stopped_early=status == "stopped_early",
        )
    )
    return RunResult(status, 0, run_dir, run.adapter, run_info.final_loss)
