"""Learning-rate schedules, stepped once per iteration so that short runs and resumes are exact."""

from __future__ import annotations

import math

from robustact.config import ScheduleConfig
from robustact.fields import parse_options


def lr_at(schedule: ScheduleConfig | dict, base_lr: float, epoch_float: float, total_epochs: int) -> float:
    """Learning rate at a (fractional) epoch.

    multistep: base·gamma^(#milestones passed), the epochs numbered from `epoch_base` (0: the first epoch is
    epoch 0; 1: it is epoch 1, as the official CAS TRADES/MART scripts, so each drop comes one epoch earlier);
    cosine: half-cosine to 0; cyclic: linear 0 → base at
    `warmup_fraction` of training → 0 (the one-cycle of fast AT). `warmup_epochs` adds a linear warm-up.
    """
    if isinstance(schedule, dict):
        schedule = parse_options(ScheduleConfig, schedule, "training.schedule")
    name = schedule.name
    warmup = schedule.warmup_epochs
    if warmup > 0 and epoch_float < warmup and name != "cyclic":
        return base_lr * epoch_float / warmup
    if name == "multistep":
        passed = sum(epoch_float + schedule.epoch_base >= m for m in schedule.milestones)
        return base_lr * schedule.gamma ** passed
    if name == "cosine":
        progress = min(max((epoch_float - warmup) / max(total_epochs - warmup, 1e-8), 0.0), 1.0)
        return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "cyclic":
        peak = schedule.warmup_fraction * total_epochs
        if epoch_float <= peak:
            return base_lr * epoch_float / max(peak, 1e-8)
        return base_lr * max(total_epochs - epoch_float, 0.0) / max(total_epochs - peak, 1e-8)
    return base_lr  # constant
