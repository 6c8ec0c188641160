"""One measured training run of one stack, in a fresh process (so peak RSS and max_memory_allocated are its own).

bench.compare_stacks starts this module once per run with a JSON spec and reads the JSON it writes:
- `localtune`: localtune's real training, `localtune.train.run.train_run`, timed through its
  typed events (a sink stamps every StepMetrics event; real tokens come from `tokens_seen`).
- `reference`: the usual QLoRA recipe: transformers Trainer + peft + bitsandbytes (NF4 + double
  quant, gradient checkpointing, paged_adamw_8bit on CUDA, SDPA attention), timed by a Trainer
  callback at every optimizer step; real tokens are the attention masks' sums, counted by the collator.
- `build`: save a random-weight model of a public shape (bench.flops) with a tokenizer, once.

Both stacks get the same token rows in the same order (see bench/compare_stacks/prepare.py). A step's time is the
interval between two consecutive step stamps, so it covers everything the loop does (collation,
forward, backward, clipping, optimizer, logging); on CUDA the stamp synchronises first.

Run as:  python -m bench.stack_run SPEC.json OUT.json      (from the repository root; normally started by
         bench.compare_stacks)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path


def _sync(device: str):
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def peak_memory(device: str) -> int:
    """GPU: the allocator's peak (torch.cuda.max_memory_allocated). CPU: this process's peak RSS."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    # VmHWM is this process image's own peak; getrusage's ru_maxrss survives exec and could report the
    # parent that started this run, when the parent was the larger of the two
    with open("/proc/self/status") as fh:
        hwm = next((line.split()[1] for line in fh if line.startswith("VmHWM:")), None)
    return int(hwm) * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "localtune"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing or broken package is reported, not fatal
            env[name] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            gpu_capability=f"{props.major}.{props.minor}",
        )
    return env


def read_rows(path: str):
    """[(input_ids, labels)] from a rows file written by bench.compare_stacks."""
    return [(r[0], r[1]) for r in json.loads(Path(path).read_text())["rows"]]


def param_dtypes(model) -> dict[str, int]:
    """Bytes held by parameters per dtype (shows e.g. the reference's fp32 up-cast of embeddings)."""
    out: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype).removeprefix("torch.")
        out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out


# ---- localtune ----------------------------------------------------------------------------------------
def localtune_config(spec: dict):
    """The localtune configuration tree of a run (bench.compare_stacks prepares the data with it too)."""
    from localtune.config import load_config

    overrides = {
        "model.name_or_path": spec["model_dir"],
        "data.path": spec["data_spec"],
        "data.max_seq_len": spec["seq_len"],
        "data.val_fraction": 0.0,
        "data.packing": False,
        "adapter.r": spec["rank"],
        "adapter.alpha": spec["alpha"],
        "adapter.dropout": spec["dropout"],
        "adapter.target_modules": spec["targets"],
        "train.max_steps": spec["steps"],
        "train.micro_batch_size": spec["micro_batch"],
        "train.grad_accum": spec["grad_accum"],
        "train.lr": spec["lr"],
        "train.lr_scheduler": "cosine",
        "train.warmup_ratio": spec["warmup_ratio"],
        "train.weight_decay": 0.0,
        "train.max_grad_norm": 1.0,
        "train.optimizer": spec["optimizer"],
        "train.load_in_4bit": spec["mode"] == "qlora",
        "train.gradient_checkpointing": True,
        "train.precision": spec["precision"],
        "train.device": spec["device"],
        "train.seed": spec["seed"],
        "train.save_every": 10**9,
        "train.keep_checkpoints": 1,
        "train.eval_every": 0,
    }
    return load_config(None, {k: (v, "compare_stacks") for k, v in overrides.items()})


def run_localtune(spec: dict) -> dict:
    from localtune.events import ModelLoaded, StepMetrics, Warning
    from localtune.train.loop import Hooks
    from localtune.train.run import train_run

    if spec.get("train_rows_file"):
        _serve_synthetic_rows(spec["train_rows_file"])
    cfg = localtune_config(spec)
    sync = _sync(spec["device"])
    steps, info, warnings = [], {}, []

    def sink(event) -> None:
        if isinstance(event, StepMetrics):
            sync()
            steps.append(
                {"step": event.step, "t": time.perf_counter(), "tokens_seen": event.tokens_seen, "loss": event.loss}
            )
        elif isinstance(event, ModelLoaded):
            info.update(
                load_seconds=event.seconds,
                params_trainable=event.params_trainable,
                dtype=event.dtype,
                quantized=event.quantized,
            )
        elif isinstance(event, Warning):
            warnings.append(event.message)

    def trained(model) -> None:
        info.update(attn_implementation=model.config._attn_implementation, param_bytes=param_dtypes(model))

    t0 = time.perf_counter()
    train_run(cfg, spec["run_dir"], sinks=[sink], hooks=Hooks(trained=trained))
    run_json = json.loads((Path(spec["run_dir"]) / "run.json").read_text())
    prev = 0
    for s in steps:
        s["tokens"], prev = s["tokens_seen"] - prev, s["tokens_seen"]
    return {
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
        "warnings": warnings,
        "data_fingerprint": run_json["data"]["fingerprint"],
        "micro_batch": run_json["micro_batch"],
        "grad_accum": run_json["grad_accum"],
        **info,
    }


def _serve_synthetic_rows(path: str) -> None:
    """Make train_run train on the rows in `path` instead of tokenizing cfg.data (synthetic rows of
    random token ids have no text). Everything else in train_run runs as usual."""
    from localtune.data.dataset import PreparedData, TokenStats
    from localtune.data.template import resolve_chat_template
    from localtune.data.tokenize import TokenizedRow
    from localtune.train import run as training_run

    rows = [TokenizedRow(f"synthetic:{i}", ids, labels, len(ids)) for i, (ids, labels) in enumerate(read_rows(path))]

    def prepare_synthetic(cfg, tokenizer, *, seed, loaded=None, chat_template=None):
        stats = TokenStats(
            rows=len(rows),
            lengths=[len(r.input_ids) for r in rows],
            trainable_tokens=sum(r.trainable for r in rows),
            total_tokens=sum(len(r.input_ids) for r in rows),
        )
        return PreparedData(rows, [], resolve_chat_template(tokenizer, chat_template), stats, TokenStats(), [])

    training_run.prepare_data = prepare_synthetic


# ---- reference: transformers Trainer + peft + bitsandbytes --------------------------------------------
def run_reference(spec: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    device, qlora = spec["device"], spec["mode"] == "qlora"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["precision"]]
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # as localtune pads
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa", "device_map": {"": 0 if device == "cuda" else "cpu"}}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], **kwargs)
    model.config.use_cache = False
    if qlora:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    torch.manual_seed(spec["seed"])
    targets = spec["targets"]
    model = get_peft_model(
        model,
        LoraConfig(
            r=spec["rank"],
            lora_alpha=spec["alpha"],
            lora_dropout=spec["dropout"],
            task_type="CAUSAL_LM",
            target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        ),
    )
    load_seconds = time.perf_counter() - t0

    rows = read_rows(spec["step_rows_file"])
    dataset = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels} for ids, labels in rows]
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def collate(features):
        batch = dict(pad(features))
        batch["real_tokens"] = int(batch["attention_mask"].sum())  # counted on the CPU: no extra sync
        return batch

    sync = _sync(device)
    state = {"tokens": 0}
    steps, losses = [], {}

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):  # the rows are already in localtune's order
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return torch.utils.data.SequentialSampler(dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            state["tokens"] += inputs.pop("real_tokens")
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        def on_step_end(self, args, st, control, **kw):
            sync()
            steps.append({"step": st.global_step, "t": time.perf_counter(), "tokens": state["tokens"]})
            state["tokens"] = 0

        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses[st.global_step] = logs["loss"]

    args = TrainingArguments(
        output_dir=spec["run_dir"],
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=spec["grad_accum"],
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        warmup_steps=int(spec["warmup_ratio"] * spec["steps"]),  # whole steps, rounded down as localtune does
        max_grad_norm=1.0,
        optim=spec["reference_optim"],
        bf16=spec["precision"] == "bf16",
        fp16=spec["precision"] == "fp16",
        logging_strategy="steps",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        seed=spec["seed"],
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        **_checkpointing_args(TrainingArguments),
    )
    trainer = OrderedTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    trainer.train()
    for s in steps:
        s["loss"] = losses.get(s["step"])
    return {
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
        "load_seconds": round(load_seconds, 2),
        "attn_implementation": model.config._attn_implementation,
        "param_bytes": param_dtypes(model),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "optimizer": type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__,
        "micro_batch": spec["micro_batch"],
        "grad_accum": spec["grad_accum"],
    }


def _checkpointing_args(training_args_cls) -> dict:
    """Non-reentrant gradient checkpointing, under the argument names this transformers has."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_args_cls)}
    if "activation_checkpointing" in names:  # transformers >= 5.2x; gradient_* are deprecated aliases
        return {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": False}}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}


# ---- building a random model of a public shape ------------------------------------------------------
def build_model(spec: dict) -> dict:
    """Random bf16 weights of a public shape (or a miniature of it), saved with a tokenizer.

    The tokenizer is localtune's tiny Llama-3-style one: training only needs its pad token and chat
    template, since the rows are random ids of the model's full vocabulary.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from localtune.model.tiny import build_tokenizer

    out = Path(spec["out_dir"])
    t0 = time.perf_counter()
    tokenizer = build_tokenizer("llama3", out)
    config = LlamaConfig(**spec["config"], pad_token_id=tokenizer.pad_token_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialising 8B weights on the CPU takes minutes; on a GPU, seconds
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(out)
    return {
        "seconds": time.perf_counter() - t0,
        "params": sum(p.numel() for p in model.parameters()),
        "bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
    }


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or getattr(exc, "title", "") == "out of memory":  # localtune's
        return True
    text = str(exc).lower()  # some kernels report a failed allocation as a plain RuntimeError
    return "out of memory" in text or "cublas_status_alloc_failed" in text


def main() -> int:
    spec_path, out_path = sys.argv[1:3]
    spec = json.loads(Path(spec_path).read_text())
    result: dict = {"stack": spec["stack"], "pid": os.getpid()}
    try:
        if spec["stack"] == "build":
            result.update(build_model(spec), status="ok")
        else:
            result["env"] = environment(spec["device"])
            run = run_localtune if spec["stack"] == "localtune" else run_reference
            result.update(run(spec), status="ok")
    except BaseException as exc:  # noqa: BLE001 - the parent decides; OOM is a result in the longest-sequence search
        oom = not isinstance(exc, KeyboardInterrupt) and _is_oom(exc)
        result.update(
            status="oom" if oom else "error",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=8),
        )
    if spec["stack"] != "build":
        result["peak_memory_bytes"] = peak_memory(spec["device"])
    Path(out_path).write_text(json.dumps(result, indent=1, default=str))
    return 0 if result["status"] in ("ok", "oom") else 1


if __name__ == "__main__":
    sys.exit(main())
