"""Building blocks of defense-aware (adaptive) attacks: joint losses over the aux heads, mask-mode wrappers,
and the per-example worst case over several attacks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustact.defenses.base import aux_logits, conditioned, mask_mode


def joint_loss(beta: float, aux_only: bool = False, reduce: str = "mean"):
    """Extra loss `(model, logits, y) -> (N,)` adding β·(mean or sum over sites of CE(aux_s, y)).

    With `aux_only=True` pair it with an attack whose main loss is zeroed (`aux_only_loss`)."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be mean or sum, got {reduce!r}")

    def extra(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        heads = aux_logits(model)
        if not heads or beta == 0:
            return torch.zeros(y.shape[0], device=y.device)
        ce = torch.stack([F.cross_entropy(a.float(), y, reduction="none") for a in heads])
        return beta * (ce.mean(0) if reduce == "mean" else ce.sum(0))

    extra.__name__ = f"joint_beta{beta:g}" + ("_auxonly" if aux_only else "")
    return extra


def aux_only_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A zero main loss: the attack ascends only its extra (aux) loss."""
    return torch.zeros(y.shape[0], device=y.device)


class WithMasks:
    """Run `attack` with every defense site in `mode` ("pred" | "soft" | "label"; label = the attacked labels,
    or the fixed `mask_labels(y)` if given — e.g. to force the mask of one class)."""

    def __init__(self, attack, mode: str, mask_labels=None, name: str | None = None) -> None:
        self.attack, self.mode, self.mask_labels, self.name = attack, mode, mask_labels, name

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "label":
            labels = y if self.mask_labels is None else self.mask_labels(y)
            with conditioned(model, labels):
                return self.attack(model, x, y)
        with mask_mode(model, self.mode):
            return self.attack(model, x, y)

    def __repr__(self) -> str:
        return self.name or f"WithMasks({self.attack!r}, mode={self.mode})"


class WorstOf:
    """Per example, the first of several attacks' results that fools the model (its inference-mode
    prediction); the last attack's result where none does. Attacks after a success are skipped for that point."""

    def __init__(self, attacks: list, name: str | None = None) -> None:
        self.attacks, self.name = list(attacks), name

    @torch.no_grad()
    def _fooled(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            return model(x).argmax(1) != y
        finally:
            model.train(was)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        open_ = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for attack in self.attacks:
            idx = open_.nonzero().flatten()
            if idx.numel() == 0:
                break
            x_adv = attack(model, x[idx], y[idx])
            best[idx] = x_adv
            open_[idx[self._fooled(model, x_adv, y[idx])]] = False
        return best

    def __repr__(self) -> str:
        return self.name or "WorstOf(" + ", ".join(repr(a) for a in self.attacks) + ")"
