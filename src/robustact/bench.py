"""Throughput of training steps (standard and PGD-k adversarial) and of attacks, in images per second; and the
small robust network that the peer-agreement tests and the AutoAttack benchmark share."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks import PGD
from robustact.defenses import build_model
from robustact.errors import RobustactError
from robustact.models.activations import activation_spec
from robustact.training.objectives import ObjectiveContext, get_objective
from robustact.training.trainer import check_compile
from robustact.utils import autocast_context, check_amp, get_device


def small_cnn(num_classes: int = 10) -> nn.Module:
    """Three conv layers, ~25k parameters: trains with PGD-AT in about half a minute on one CPU core."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(256, num_classes),
    )


def quick_pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, eps: float = 8 / 255,
                 seed: int = 0, batch_size: int = 128, verbose: bool = False) -> nn.Module:
    """A short PGD-AT (3 steps of 3ε/8, Adam 2e-3, global RNG for the starts): a model robust on part of the
    test set, for peer comparisons where the trainer's machinery would only add time."""
    attack = PGD(eps, steps=3, alpha=eps * 3 / 8, seed=None)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=order).to(x.device)
        for i in range(0, len(y), batch_size):
            b = perm[i:i + batch_size]
            x_adv = attack(model, x[b], y[b])
            model.train()
            loss = F.cross_entropy(model(x_adv), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if verbose:
            print(f"  PGD-AT epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", flush=True)
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device: torch.device, steps: int, warmup: int = 1) -> float:
    """Seconds per call, after warm-up (compile, cudnn autotune)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


@dataclass(frozen=True)
class Setting:
    """How a benchmark runs the model: autocast dtype, memory format, torch.compile; named like `bf16+cl+compile`."""

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def parse(cls, text: str) -> Setting:
        parts = [p.strip().lower() for p in text.split("+") if p.strip()]
        unknown = [p for p in parts if p not in ("fp32", "bf16", "fp16", "cl", "channels_last", "compile")]
        if unknown or not parts:
            raise RobustactError(f"unknown bench setting {text!r}; write parts joined by +: fp32 | bf16 | fp16, cl, "
                                 "compile (e.g. fp32, bf16+cl, bf16+cl+compile)")
        amp = next((p for p in parts if p in ("bf16", "fp16")), "none")
        return cls(amp, "cl" in parts or "channels_last" in parts, "compile" in parts)

    def __str__(self) -> str:
        name = "fp32" if self.amp == "none" else self.amp
        return name + ("+cl" if self.channels_last else "") + ("+compile" if self.compile else "")


def bench_arch(arch: str, batch_size: int, steps: int, device: torch.device, pgd_steps: int = 10,
               setting: Setting = Setting(), image_size: int = 32, num_classes: int = 10,
               activation: str = "relu") -> dict[str, float]:
    """Images per second of a standard and a PGD-k training step (the trainer's objective and SGD step) and of
    a PGD-k attack, on random data of CIFAR-10's shape, in `setting`."""
    torch.manual_seed(0)
    amp = check_amp(setting.amp, device)
    model = build_model(arch, num_classes=num_classes, activation=activation).to(device)
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    fwd = check_compile(model, setting.compile)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    ctx = ObjectiveContext(eps=8 / 255, alpha=2 / 255, steps=pgd_steps)

    def train_step(objective):
        def step():
            model.train()
            with autocast_context(amp, device):
                loss, _ = objective(fwd, x, y, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    attack = PGD(8 / 255, steps=pgd_steps, alpha=2 / 255)

    def attack_step():
        with autocast_context(amp, device):
            attack(fwd, x, y)

    out = {}
    out["standard_train"] = batch_size / time_it(train_step(get_objective("standard")), device, steps)
    out[f"pgd{pgd_steps}_train"] = batch_size / time_it(train_step(get_objective("pgd_at")), device, steps)
    out[f"pgd{pgd_steps}_attack"] = batch_size / time_it(attack_step, device, steps)
    return out


def run_bench(archs: list[str], batch_size: int = 128, steps: int = 3, device: str | None = None,
              pgd_steps: int = 10, settings: list[str] | None = None, activations: list[str] | None = None) -> dict:
    """Every arch in every setting with every activation (default: fp32, ReLU). Prints images/s and the seconds a
    50,000-image (CIFAR-10) epoch of PGD-k training takes at that rate."""
    activations = activations or ["relu"]
    parsed = [Setting.parse(s) for s in (settings or ["fp32"])]
    for a in activations:  # before the header: a typo is one line
        activation_spec(a)
    dev = get_device(device)
    for setting in parsed:
        check_amp(setting.amp, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev} ({name})  batch {batch_size}  {steps} timed steps after one warm-up"
          + ("  (TF32 on)" if dev.type == "cuda" else ""))
    header = f"{'standard train':>16}{f'PGD-{pgd_steps} train':>16}{f'PGD-{pgd_steps} attack':>16}"
    rows = [(arch, act, setting) for arch in archs for setting in parsed for act in activations]
    labels = [f"{a}" + (f"/{act}" if activations != ["relu"] else "") + f" {st}" for a, act, st in rows]
    width = max(16, *(len(label) + 2 for label in labels))
    print(f"{'arch, setting':<{width}}{header}{'s / 50k-image epoch':>22}   (images/s)")
    results = {}
    for (arch, act, setting), label in zip(rows, labels):
        r = bench_arch(arch, batch_size, steps, dev, pgd_steps, setting, activation=act)
        epoch_s = 50000 / r[f"pgd{pgd_steps}_train"]
        results[label] = r | {f"pgd{pgd_steps}_epoch_seconds": epoch_s}
        vals = list(r.values())
        print(f"{label:<{width}}{vals[0]:>16.1f}{vals[1]:>16.1f}{vals[2]:>16.1f}{epoch_s:>22,.1f}", flush=True)
    return results
