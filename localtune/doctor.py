"""`localtune doctor`: is this machine ready? One line per check, pass / warn / fail, with the fix.

Run as:  localtune doctor [--workspace runs]
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass
class Check:
    status: str
    name: str
    detail: str
    fix: str = ""

    def render(self) -> str:
        line = f"{self.status.upper():<4}  {self.name:<18} {self.detail}"
        return line + (f"\n      fix: {self.fix}" if self.fix and self.status != PASS else "")


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _data_parallel_check(gpus: int) -> Check:
    """Whether NCCL is there, and with two GPUs or more whether it works (a one-rank all-reduce on GPU 0)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        return Check(
            WARN if gpus > 1 else PASS,
            "nccl",
            "not in this torch build: --gpus N cannot use NCCL",
            "install a CUDA build of torch from pytorch.org (it ships NCCL)",
        )
    if gpus < 2:
        return Check(PASS, "nccl", f"available (NCCL {'.'.join(map(str, _nccl_version()))}); one GPU: --gpus 1")
    from localtune.train.world import self_test

    error = self_test("nccl")
    if error:
        fix = "check the driver and the NCCL_* settings; --gpus 1 works"
        return Check(WARN, "nccl", f"does not work here: {error}", fix)  # one GPU still trains: not a failure
    return Check(PASS, "nccl", f"works (NCCL {'.'.join(map(str, _nccl_version()))}): --gpus up to {gpus}")


def _nccl_version() -> tuple:
    import torch

    try:
        v = torch.cuda.nccl.version()
        return v if isinstance(v, tuple) else (v,)
    except Exception:  # noqa: BLE001 - a version is only for the line
        return ("?",)


def run_checks(workspace: Path = Path("runs")) -> list[Check]:
    checks = []
    py = sys.version_info
    checks.append(
        Check(PASS if py >= (3, 10) else FAIL, "python", platform.python_version(), "use Python 3.10 or newer")
    )
    missing = [
        p
        for p in (
            "torch",
            "transformers",
            "peft",
            "bitsandbytes",
            "gguf",
            "llama-cpp-python",
            "textual",
            "sentencepiece",
        )
        if _version(p) is None
    ]
    checks.append(
        Check(
            FAIL if missing else PASS,
            "packages",
            "missing: " + ", ".join(missing)
            if missing
            else ", ".join(f"{p} {_version(p)}" for p in ("transformers", "peft", "bitsandbytes", "gguf")),
            "pip install -e . (see the README)",
        )
    )
    try:
        import torch

        cuda = torch.cuda.is_available()
        checks.append(Check(PASS, "torch", f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}"))
        if cuda:
            bf16 = torch.cuda.is_bf16_supported()
            for i in range(torch.cuda.device_count()):  # every GPU: `--gpus N` trains on the first N
                p = torch.cuda.get_device_properties(i)
                checks.append(
                    Check(
                        PASS,
                        f"gpu {i}",
                        f"{p.name}, {p.total_memory / 1024**3:.1f} GiB, compute "
                        f"{p.major}.{p.minor}, bf16 {'yes' if bf16 else 'no (fp16 is used)'}",
                    )
                )
            checks.append(_data_parallel_check(torch.cuda.device_count()))
        else:
            checks.append(
                Check(
                    WARN,
                    "gpu",
                    "no CUDA GPU: training runs on the CPU (slowly)",
                    "install a CUDA build of torch on a machine with an NVIDIA GPU for speed",
                )
            )
    except Exception as exc:  # a broken torch install must not break the doctor
        checks.append(Check(FAIL, "torch", f"cannot import torch ({exc})", "pip install torch"))
    try:
        import bitsandbytes  # noqa: F401

        checks.append(Check(PASS, "bitsandbytes", f"{_version('bitsandbytes')} (4-bit loading and 8-bit optimizers)"))
    except Exception as exc:
        checks.append(
            Check(
                WARN,
                "bitsandbytes",
                f"cannot import ({exc}); 4-bit training is unavailable",
                "pip install bitsandbytes, or train with --no-quant",
            )
        )
    from localtune.chat.runtime import cpu_has_amx, extra_bufts_allowed

    if not cpu_has_amx():
        amx_note = "has no AMX"
    else:
        amx_note = "has AMX: the AMX workaround is " + (
            "off (LOCALTUNE_EXTRA_BUFTS=1)" if extra_bufts_allowed() else "active"
        )
    checks.append(
        Check(
            PASS,
            "llama-cpp-python",
            f"{_version('llama-cpp-python')}; CPU {amx_note}",
        )
    )
    where = workspace if workspace.exists() else Path.cwd()
    free = shutil.disk_usage(where).free / 1e9
    checks.append(
        Check(
            PASS if free > 20 else WARN if free > 2 else FAIL,
            "disk",
            f"{free:.1f} GB free in {where}",
            "free some space: a 7B run needs about 20 GB (checkpoints, merge, GGUF)",
        )
    )
    from huggingface_hub import constants

    checks.append(Check(PASS, "hf cache", str(constants.HF_HUB_CACHE)))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        checks.append(
            Check(
                WARN,
                "hub",
                "offline mode (HF_HUB_OFFLINE=1): only local models and the demo",
                "unset HF_HUB_OFFLINE to download models",
            )
        )
    else:
        import urllib.request

        try:
            urllib.request.urlopen(constants.ENDPOINT, timeout=3)
            checks.append(Check(PASS, "hub", f"{constants.ENDPOINT} reachable"))
        except Exception as exc:
            checks.append(
                Check(
                    WARN,
                    "hub",
                    f"{constants.ENDPOINT} unreachable ({type(exc).__name__})",
                    "use local folders or .gguf files, or check the network",
                )
            )
    return checks
