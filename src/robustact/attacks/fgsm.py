"""FGSM (Goodfellow et al. 2015): one step of size ε along the gradient sign; optionally from a random start."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, size_setting


class FGSM(Attack):
    """One ascent step. `random_start=True` + `alpha` gives the FGSM-RS of fast AT (Wong et al. 2020) and
    the "FGSM" of the CAS code (random start, then one ε step)."""

    name = "fgsm"

    def __init__(self, eps: float, norm: str = "Linf", *, alpha: float | None = None,
                 random_start: bool = False, **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)
        self.alpha = self.eps if alpha is None else size_setting(alpha, "FGSM step size alpha")
        self.random_start_ = random_start

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.random_start(x, self.generator(x.device)) if self.random_start_ else x
        _, _, grad = self.loss_and_grad(model, x_adv, y)
        return self.project(x_adv + self.ascent_step(grad, self.alpha), x)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"alpha": self.alpha, "random_start": "uniform" if self.random_start_ else "none"}
