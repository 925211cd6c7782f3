"""PGD (Madry et al. 2018): iterated projected steepest ascent; CE or CW-margin loss; restarts."""

from __future__ import annotations

import torch
from torch import nn

from robustact.attacks.base import Attack


class PGD(Attack):
    """Projected gradient ascent.

    `alpha` defaults to 2.5·ε/steps (Madry et al.). With restarts, each example keeps the first restart that
    fools the model, or else the one with the highest loss. `loss="margin"` with `kappa` is CW∞.
    """

    name = "pgd"

    def __init__(self, eps: float, norm: str = "Linf", *, steps: int = 10, alpha: float | None = None,
                 random_start: bool = True, restarts: int = 1, **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
        self.steps = int(steps)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else float(alpha)
        self.random_start_ = random_start
        self.restarts = int(restarts)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.generator(x.device)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            x_adv = self.random_start(x, gen) if self.random_start_ else x.clone()
            for _ in range(self.steps):
                _, _, grad = self.loss_and_grad(model, x_adv, y)
                x_adv = self.project(x_adv + self.ascent_step(grad, self.alpha), x)
            if self.restarts == 1:
                return x_adv  # the plain final iterate; no extra forward
            with torch.no_grad():
                logits = model(x_adv)
                loss = self.loss(model, logits, y)
                success = logits.argmax(1) == y if self.targeted else logits.argmax(1) != y
            take = (~fooled) & (success | (loss > best_loss))
            best[take] = x_adv[take]
            best_loss = torch.where(take, loss, best_loss)
            fooled |= success
            if self.restarts > 1 and bool(fooled.all()):
                break
        return best
