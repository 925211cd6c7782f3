"""Small shared helpers: seeding and device choice. (File writing: `robustact.fileio`.)"""

from __future__ import annotations

import random
import sys
from contextlib import nullcontext

import numpy as np
import torch

from robustact.errors import ConfigError, RobustactError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_device(name: str | torch.device | None = None) -> torch.device:
    """`auto`/None picks CUDA, then MPS, then CPU; anything else must name a device this machine has."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise RobustactError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobustactError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); "
                             "use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RobustactError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not mps:
        raise RobustactError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def show_progress(wanted: bool) -> bool:
    """Progress bars only on a terminal: redirected to a log they would write carriage-return frames."""
    return bool(wanted) and sys.stderr.isatty()


def check_amp(amp: str, device: torch.device) -> str:
    """The mixed precision that will really run on `device`, or one line: bf16 runs on CUDA and on CPU (CPU
    autocast); fp16 needs a GPU (and its gradient scaler). Never silently ignored."""
    if amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"amp must be none, bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"amp=fp16 needs a CUDA device (here: {device}); use bf16, which runs on the CPU too")
    if amp == "bf16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"amp=bf16 is supported on cuda and cpu, not {device.type}")
    return amp


def autocast_context(amp: str, device: torch.device):
    """Autocast for `amp` on `device` (see `check_amp`); `none` is full precision."""
    if amp in (None, "none", False):
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[check_amp(amp, device)]
    return torch.autocast(device_type=device.type, dtype=dtype)
