"""Attacks around attacks: with the defense's masks fixed to a mode, the worst of several, transferred from a
surrogate model, and the worst case over the K masks. Each is called as `attack(model, x, y) -> x_adv` and its
`repr` is built from the wrapped attack's, so reports describe it completely."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks.base import model_forward
from robustact.attacks.predict import predict
from robustact.defenses.base import aux_logits, conditioned, mask_mode


def fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Misclassified by the real (eval-mode, predicted-mask) model."""
    return predict(model, x, batch_size=max(len(x), 1)) != y


class WithMasks:
    """Run `attack` with every defense site in `mode` ("pred" | "soft" | "label"; label = the attacked labels,
    or the fixed `mask_labels(y)` if given — e.g. to force the mask of one class). On a model without sites
    it is the attack itself."""

    def __init__(self, attack, mode: str, mask_labels=None) -> None:
        self.attack, self.mode, self.mask_labels = attack, mode, mask_labels

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "label":
            labels = y if self.mask_labels is None else self.mask_labels(y)
            with conditioned(model, labels):
                return self.attack(model, x, y)
        with mask_mode(model, self.mode):
            return self.attack(model, x, y)

    def __repr__(self) -> str:
        return f"{self.attack!r} with {self.mode} masks"


class WorstOf:
    """Per example, the first of several attacks' results that fools the model (its eval-mode prediction);
    the last attack's result where none does. Attacks after a success are skipped for that point."""

    def __init__(self, attacks: list) -> None:
        self.attacks = list(attacks)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        open_ = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for attack in self.attacks:
            idx = open_.nonzero().flatten()
            if idx.numel() == 0:
                break
            x_adv = attack(model, x[idx], y[idx])
            best[idx] = x_adv
            open_[idx[fooled(model, x_adv, y[idx])]] = False
        return best

    def __repr__(self) -> str:
        return "WorstOf(" + ", ".join(repr(a) for a in self.attacks) + ")"


class Transfer:
    """A transfer attack: craft on the `surrogate` model, then hand the result to the attacked model.
    (A run directory as the surrogate: the protocol loads it, `robustact.checkpoints.load_model`.)"""

    def __init__(self, attack, surrogate: nn.Module, source: str = "model") -> None:
        self.attack, self.surrogate, self.source = attack, surrogate, source

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(self.surrogate.to(x.device).eval(), x, y)

    def __repr__(self) -> str:
        return f"Transfer({self.attack!r}, surrogate={self.source})"


class EnumerateMasks:
    """Worst case over the K possible masks: for each class k, fix every site's mask to k (label-conditioned
    forward) and attack with `make_attack(k)` — an attack whose loss also pulls the aux heads toward k, so that
    the real (predicted-mask) model picks that mask. Per example the classes are tried in the order of the
    aux heads' clean ranking and an example is done once fooled (judged on the real model)."""

    def __init__(self, make_attack, num_classes: int | None = None) -> None:
        self.make_attack, self.num_classes = make_attack, num_classes

    @torch.no_grad()
    def _ranking(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            logits = model_forward(model, x)
            heads = aux_logits(model)
        finally:
            model.train(was)
        score = torch.stack([F.softmax(a.float(), 1) for a in heads]).mean(0) if heads else F.softmax(logits, 1)
        return score.argsort(dim=1, descending=True)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ranking = self._ranking(model, x)
        k_max = ranking.shape[1] if self.num_classes is None else min(self.num_classes, ranking.shape[1])
        best = x.clone()
        open_ = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for j in range(k_max):
            idx = open_.nonzero().flatten()
            if idx.numel() == 0:
                break
            k = ranking[idx, j]
            with conditioned(model, k):
                x_adv = self.make_attack(k)(model, x[idx], y[idx])
            best[idx] = x_adv
            open_[idx[fooled(model, x_adv, y[idx])]] = False
        return best

    def __repr__(self) -> str:
        sample = self.make_attack(torch.zeros(1, dtype=torch.long))  # the attack each class k gets
        return f"EnumerateMasks({sample!r}, masks fixed to each class k in the aux heads' order)"
