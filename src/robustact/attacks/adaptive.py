"""PGD variants of the defense-aware (adaptive) protocols: through the soft-mask surrogate (BPDA), and in
stages with a loss per stage. The other building blocks are `aux.AuxTerm` (aux-head losses) and the wrappers
(`wrappers.py`: fixed mask modes, mask enumeration, transfer)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.losses import loss_label, resolve_loss
from robustact.attacks.pgd import PGD
from robustact.defenses.base import mask_mode, sites


def set_temperature(model: nn.Module, value: float) -> None:
    """Set the soft-mask temperature of every site that has one (sites without a `temperature` are skipped)."""
    for site in sites(model):
        if hasattr(site, "temperature"):
            site.temperature = float(value)


class SoftMaskPGD(PGD):
    """PGD through the soft-mask surrogate (BPDA): every site in `mask_mode="soft"` — hard mask forward,
    `softmax(a/T)·W` backward — with T annealed geometrically from `t_start` to `t_end` over the steps of each
    restart. The attack only sets `mask_mode` and `temperature`; the sites define the surrogate."""

    name = "pgd-softmask"

    def __init__(self, eps: float, norm: str = "Linf", *, t_start: float = 10.0, t_end: float = 0.1,
                 **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)
        if t_start <= 0 or t_end <= 0:
            raise ValueError("soft-mask temperatures must be > 0")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self._calls = 0

    def temperature_at(self, step: int) -> float:
        frac = step / max(self.steps - 1, 1)
        return self.t_start * (self.t_end / self.t_start) ** frac

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        saved = [(s, getattr(s, "temperature", None)) for s in sites(model)]
        self._calls = 0
        try:
            with mask_mode(model, "soft"):
                return super().perturb(model, x, y)
        finally:
            for s, t in saved:
                if t is not None:
                    s.temperature = t

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        set_temperature(model, self.temperature_at(self._calls % self.steps))
        self._calls += 1
        return super().loss_and_grad(model, x, y)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"T": f"{self.t_start:g}->{self.t_end:g}"}


class StagedPGD(PGD):
    """PGD in stages inside one ε-ball, each stage with its own loss: `stages` is a list of
    `(steps, loss, extra_loss)`; stage i+1 starts where stage i ended. E.g. two-stage: flip the aux head
    (aux-only loss), then attack the final head (CE + aux term keeping it flipped)."""

    name = "pgd-staged"

    def __init__(self, eps: float, norm: str = "Linf", *, stages: list, alpha: float | None = None,
                 random_start: bool = True, **kwargs) -> None:
        total = sum(int(s[0]) for s in stages)
        super().__init__(eps, norm, steps=total, alpha=alpha, random_start=random_start, **kwargs)
        self.stages = [(int(steps), resolve_loss(loss, self.kappa), extra) for steps, loss, extra in stages]
        self.stage_names = [f"{steps} steps of {loss_label(loss)}" + (f" + {extra!r}" if extra is not None else "")
                            for steps, loss, extra in stages]

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.first_point(x, self.generator(x.device))
        saved = (self.loss_fn, self.extra_loss)
        try:
            for steps, loss_fn, extra in self.stages:
                self.loss_fn, self.extra_loss = loss_fn, extra
                x_adv = self.ascend(model, x_adv, x, y, steps)
        finally:
            self.loss_fn, self.extra_loss = saved
        return x_adv

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        for key in ("loss", "kappa", "extra", "steps"):
            out.pop(key, None)
        return out | {"stages": "; ".join(self.stage_names)}
