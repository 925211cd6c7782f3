"""PGD (Madry et al. 2018): iterated projected steepest ascent; CE or CW-margin loss; restarts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustact.attacks.base import STARTS, Attack, count_setting, size_setting
from robustact.errors import RobustactError


class PGD(Attack):
    """Projected gradient ascent.

    `alpha` defaults to 2.5·ε/steps (Madry et al.). `random_start` starts uniformly in the ε-ball, or — with
    `start="normal"` — at `x + start_sigma·N(0, 1)` (TRADES' and MART's start); `clamp_start=False` leaves the
    start outside [0, 1] where it falls (the official CAS / TRADES / MART code). With restarts, each example keeps
    the first restart that fools the model, or else the one with the highest loss. `loss="margin"` with `kappa`
    is CW∞ (`hinge="batch"`: the official CAS evaluation's hinge on the batch-summed margin); a callable loss makes it
    any other PGD (TRADES' KL adversary is one).
    """

    name = "pgd"

    def __init__(self, eps: float, norm: str = "Linf", *, steps: int = 10, alpha: float | None = None,
                 random_start: bool = True, start: str = "uniform", start_sigma: float = 0.001,
                 restarts: int = 1, **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)
        if start not in STARTS:
            raise RobustactError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
        self.steps = count_setting(steps, "PGD steps")
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else size_setting(alpha, "PGD step size alpha")
        self.random_start_ = random_start
        self.start, self.start_sigma = start, size_setting(start_sigma, "start_sigma")
        self.restarts = count_setting(restarts, "PGD restarts")

    def first_point(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return self.random_start(x, gen, self.start, self.start_sigma) if self.random_start_ else x.clone()

    def ascend(self, model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               steps: int) -> torch.Tensor:
        """`steps` projected ascent steps from `x_adv` inside the threat model around `x`."""
        for _ in range(steps):
            _, _, grad = self.loss_and_grad(model, x_adv, y)
            x_adv = self.project(x_adv + self.ascent_step(grad, self.alpha), x)
        return x_adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        if self.restarts == 1:
            return self.ascend(model, self.first_point(x, gen), x, y, self.steps)  # the plain final iterate
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            x_adv = self.ascend(model, self.first_point(x, gen), x, y, self.steps)
            with torch.no_grad():
                logits = self.forward(model, x_adv)
                loss = self.loss(model, logits, y)
                success = logits.argmax(1) == y if self.targeted else logits.argmax(1) != y
            take = (~fooled) & (success | (loss > best_loss))
            best[take] = x_adv[take]
            best_loss = torch.where(take, loss, best_loss)
            fooled |= success
            if bool(fooled.all()):
                break
        return best

    def settings(self) -> dict[str, Any]:
        start = (self.start if self.start == "uniform" else f"normal({self.start_sigma:g})") \
            if self.random_start_ else "none"
        return super().settings() | {"steps": self.steps, "alpha": self.alpha, "random_start": start,
                                     "restarts": self.restarts}
