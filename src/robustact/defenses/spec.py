"""How a defense enters training and attacks: the one object objectives consult.

A model built with a defense carries `model.defense_spec`; a plain model gets `NO_DEFENSE`. Objectives and
evaluation read only this, so a new defense changes nothing outside its own module. The training attack is built
from it by `robustact.training.objectives.training_attack` (the joint loss, the mask mode, aux-only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustact.defenses.base import aux_logits, conditioned


@dataclass
class DefenseSpec:
    """Loss weighting and mask handling of a defense.

    total loss = main_weight · [main + aux_weight · mean_s CE(aux_s, y)]
    train_masks: "label" — the training forward uses the label's mask (all four papers);
    attack_masks: "pred" — the training attack sees predicted masks (CAS, CIFS: model in eval mode);
                  "label" — it sees the label's masks (EWAS).
    attack_aux_weight: weight of the mean aux CE in the training attack's joint loss.
    aux_only_train_attack: the training attack ascends the aux CE alone (CAS code before July 2022).
    aux_in_objective: TRADES / MART apply their own loss to every aux head as well, weighted by aux_weight and
                      averaged over sites (the CAS and EWAS code); False: the aux heads get only the CE above.
    mart_aux_kl_bug: with aux_in_objective, MART's aux KL compares the adversarial aux distribution with itself
                     (≈ 0), as the official EWAS code does; off by default.
    """

    name: str = "none"
    aux_weight: float = 0.0
    main_weight: float = 1.0
    train_masks: str = "label"
    attack_masks: str = "pred"
    attack_aux_weight: float = 0.0
    aux_only_train_attack: bool = False
    aux_in_objective: bool = False
    mart_aux_kl_bug: bool = False

    def train_forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.train_masks == "label":
            with conditioned(model, y):
                return model(x)
        return model(x)

    def aux_ce(self, model: nn.Module, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor | None:
        """Mean over sites of CE(aux_s, y) for the last forward, or None without aux heads."""
        heads = aux_logits(model)
        if not heads:
            return None
        return torch.stack([F.cross_entropy(a.float(), y, reduction=reduction) for a in heads]).mean(0)

    def compose_loss(self, model: nn.Module, main: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aux = self.aux_ce(model, y) if self.aux_weight else None
        total = main if aux is None else main + self.aux_weight * aux
        return self.main_weight * total


NO_DEFENSE = DefenseSpec()


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside the wrappers a run may add: DistributedDataParallel / DataParallel, torch.compile."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def defense_spec(model: nn.Module) -> DefenseSpec:
    return getattr(unwrap(model), "defense_spec", None) or NO_DEFENSE
