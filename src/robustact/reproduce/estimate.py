"""Time estimates for `robustact reproduce --dry-run`. A job another seed of the same row has already done is
estimated from what it measured there (the shortest epoch time of its training log, or the `seconds` of its
evaluation report), since nothing predicts this device better; an attack evaluation (not a suite: suites differ
per defense) that no other seed did, from the same evaluation's reports on other runs of the same architecture
(AutoAttack measured ≈ 12 min per 1,000 images where bench rates predicted 75); any other job from
`robustact bench`'s
training-step and attack rates on this device for its architecture (measured once per setting and thread count,
cached in OUT/bench.json), scaled by epochs, images and attack steps, and for evaluations a nominal number of
gradient steps per image of each suite. The bench-based figure omits validation, data loading and each defense's
own cost (CIFS ≈ 1.08×), and is only as good as the machine was idle when bench ran."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import NamedTuple

import torch

from robustact.bench import Setting, bench_arch
from robustact.config import load_run_config
from robustact.data import dataset_info
from robustact.errors import ConfigError
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
        if self.known.get(key, {}).get("threads", torch.get_num_threads()) != torch.get_num_threads():
            del self.known[key]   # measured with another thread count: not this setting
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


class Estimate(NamedTuple):
    seconds: float
    measured: bool   # from another seed of the same job, or another run's same attack evaluation (else bench)


def _siblings(run_dir: Path) -> list[Path]:
    """The other seeds' directories of the same run recipe (OUT/runs/ID/seed*)."""
    return sorted(d for d in run_dir.parent.glob("seed*") if d != run_dir and d.is_dir())


def measured_train_seconds(job: TrainJob) -> float | None:
    """Epochs × the shortest epoch the other seeds of this run logged (None: none logged one): the job on an idle
    machine, which is what the rest of the estimate assumes too (a busy machine's epochs can take 5× as long)."""
    times = []
    for other in _siblings(job.run_dir):
        try:
            lines = (other / "metrics.jsonl").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                times.append(float(json.loads(line)["epoch_seconds"]))
            except (ValueError, KeyError, TypeError):
                continue
    return job.config().training.epochs * min(times) if times else None


def _report_seconds(path: Path, job: EvalJob, same_evaluation: bool = False) -> float | None:
    """A report's total attack time scaled to the job's image count (None: unreadable, or — when asked — a
    report of another evaluation than the job's)."""
    try:
        report = json.loads(path.read_text())
        if same_evaluation and job.differs_from(report) is not None:
            return None
        return sum(float(s) for s in report["seconds"].values()) * job.n / int(report["n"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        return None


def _arch(run_dir: Path) -> str | None:
    try:
        return load_run_config(run_dir / "config.yaml").model.arch
    except ConfigError:
        return None


def measured_eval_seconds(job: EvalJob, arch: str | None = None) -> float | None:
    """The median time the other seeds' report of this evaluation took, scaled to this job's image count; for an
    attack evaluation no other seed did, the median over other runs of architecture `arch` under OUT/runs that
    ran exactly this evaluation (its cost varies with the robust accuracy, ±50%, not 6× like bench's)."""
    times = [t for other in _siblings(job.run_dir)
             if (t := _report_seconds(other / "eval" / job.report.name, job)) is not None]
    if not times and job.spec.attacks and arch is not None:
        runs = job.run_dir.parent.parent
        times = [t for path in sorted(runs.glob(f"*/seed*/eval/{job.report.name}"))
                 if path.parent.parent.parent != job.run_dir.parent and _arch(path.parent.parent) == arch
                 and (t := _report_seconds(path, job, same_evaluation=True)) is not None]
    return statistics.median(times) if times else None


def estimate(plan: Plan, device: str | None = None) -> dict[str, Estimate]:
    """An estimate per job key: measured on another seed where one did the job, else from bench rates (measured
    only when some job needs them)."""
    rates = None
    train_of = {t.run_dir: t for t in plan.trains}
    arch_of = {t.run_dir: t.config().model.arch for t in plan.trains}   # each config resolved once
    out = {}
    for job in plan.jobs():
        seen = (measured_train_seconds(job) if isinstance(job, TrainJob)
                else measured_eval_seconds(job, arch_of[job.run_dir]))
        if seen is not None:
            out[job.key] = Estimate(seen, True)
            continue
        rates = rates or Rates(plan.out / "bench.json", device)
        if isinstance(job, TrainJob):
            out[job.key] = Estimate(train_seconds(job, rates), False)
        else:
            out[job.key] = Estimate(eval_seconds(job, train_of[job.run_dir], rates), False)
    return out


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
