"""Time estimates for `robustact reproduce --dry-run`: `robustact bench`'s training-step and attack rates on this
device for each architecture a plan trains (measured once, cached in OUT/bench.json), scaled by each run's
epochs, images and attack steps; evaluations from a nominal number of gradient steps per image of each suite.
An estimate, not a promise: it omits validation, data loading and each defense's own cost (CIFS ≈ 1.08×)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robustact.bench import Setting, bench_arch
from robustact.data import dataset_info
from robustact.fileio import atomic_write_text
from robustact.reproduce.plan import EvalJob, Plan, TrainJob
from robustact.utils import get_device

# Gradient steps per attacked image, nominal (AutoAttack on the ~half of the images still robust when it runs).
SUITE_STEPS = {"quick": 21, "standard": 1150, "paper": 60, "adaptive": 400, "aa": 1000}
ATTACK_STEPS = {"fgsm": 1, "cw": 30, "aa": 1000, "apgd-ce": 100, "apgd-t": 900, "fab-t": 900, "square": 1700}


def _attack_steps(name: str) -> int:
    if name in ATTACK_STEPS:
        return ATTACK_STEPS[name]
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 20


def eval_steps(job: EvalJob) -> int:
    spec = job.spec
    if spec.only or spec.attacks:
        return sum(_attack_steps(a) for a in spec.only or spec.attacks or [])
    steps = SUITE_STEPS.get(spec.suite, 400)
    return max(steps - sum(_attack_steps(a) for a in spec.skip or [] if spec.suite == "standard"), 1)


class Rates:
    """bench rates per (device, arch, activation, setting, attack steps), cached as JSON."""

    def __init__(self, cache: Path, device: str | None) -> None:
        self.cache, self.device = cache, get_device(device)
        try:
            self.known = json.loads(cache.read_text())
        except (OSError, ValueError):
            self.known = {}

    def get(self, arch: str, activation, setting: Setting, steps: int) -> dict[str, float]:
        batch = 128 if arch in ("resnet_small", "resnet18", "preact_resnet18", "vgg16") else 32
        key = f"{self.device}|{arch}|{json.dumps(activation)}|{setting}|{steps}|{batch}"
        if key not in self.known:
            print(f"measuring {arch} ({setting}, PGD-{steps}) on {self.device} ...", flush=True)
            self.known[key] = bench_arch(arch, batch, 1, self.device, max(steps, 1), setting,
                                         activation=activation) | {"threads": torch.get_num_threads()}
            atomic_write_text(self.cache, json.dumps(self.known, indent=1))
        return self.known[key]


def train_seconds(job: TrainJob, rates: Rates) -> float:
    c = job.config()
    steps = c.training.attack.steps
    r = rates.get(c.model.arch, c.model.activation, Setting(c.training.amp, c.training.channels_last), steps)
    adversarial = c.training.objective not in ("standard",)
    per_s = r[f"pgd{max(steps, 1)}_train"] if adversarial else r["standard_train"]
    images = c.data.train_subset or dataset_info(c.data.dataset).num_train
    return c.training.epochs * max(images - c.data.val_size, 1) / per_s


def eval_seconds(job: EvalJob, train: TrainJob, rates: Rates) -> float:
    c = train.config()
    steps = c.training.attack.steps
    r = rates.get(c.model.arch, c.model.activation, Setting(c.training.amp, c.training.channels_last), steps)
    steps_per_s = r[f"pgd{max(steps, 1)}_attack"] * max(steps, 1)   # image-steps per second
    return job.n * eval_steps(job) / steps_per_s


def estimate(plan: Plan, device: str | None = None) -> dict[str, float]:
    """Seconds per job key."""
    rates = Rates(plan.out / "bench.json", device)
    train_of = {t.run_dir: t for t in plan.trains}
    out = {}
    for job in plan.jobs():
        if isinstance(job, TrainJob):
            out[job.key] = train_seconds(job, rates)
        else:
            out[job.key] = eval_seconds(job, train_of[job.run_dir], rates)
    return out


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
