"""Throughput of training steps (standard and PGD-k adversarial) and of attacks, in images per second."""

from __future__ import annotations

import time

import torch

from robustact.attacks import PGD
from robustact.models import build_model
from robustact.models.layers import check_activation
from robustact.training.objectives import ObjectiveContext, get_objective
from robustact.training.trainer import autocast_context
from robustact.utils import get_device


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


def bench_arch(arch: str, batch_size: int, steps: int, device: torch.device, pgd_steps: int = 10,
               amp: str = "none", channels_last: bool = False, compile: bool = False,
               image_size: int = 32, num_classes: int = 10, activation: str = "relu") -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=num_classes, activation=activation).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    fwd = torch.compile(model) if compile else model
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
              pgd_steps: int = 10, amp: str = "none", channels_last: bool = False, compile: bool = False,
              activations: list[str] | None = None) -> dict:
    """Every arch with every activation (default ReLU); rows are named `arch` or `arch/activation`."""
    activations = activations or ["relu"]
    activations = [check_activation(a) for a in activations]  # before the header: a typo is one line
    dev = get_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev} ({name})  batch {batch_size}  amp={amp} channels_last={channels_last} compile={compile}")
    header = f"{'standard train':>16}{f'PGD-{pgd_steps} train':>16}{f'PGD-{pgd_steps} attack':>16}"
    width = max(16, *(len(a) + len(b) + 3 for a in archs for b in activations))
    print(f"{'arch':<{width}}{header}   (images/s)")
    results = {}
    for arch in archs:
        for act in activations:
            row = arch if activations == ["relu"] else f"{arch}/{act}"
            r = bench_arch(arch, batch_size, steps, dev, pgd_steps, amp, channels_last, compile, activation=act)
            results[row] = r
            vals = list(r.values())
            print(f"{row:<{width}}{vals[0]:>16.1f}{vals[1]:>16.1f}{vals[2]:>16.1f}", flush=True)
            epoch_s = 50000 / r[f"pgd{pgd_steps}_train"]
            print(f"{'':<{width}}→ a 50,000-image PGD-{pgd_steps} epoch ≈ {epoch_s:,.0f} s", flush=True)
    return results
