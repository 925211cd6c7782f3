"""Training objectives: each maps a batch to a loss, composing the adversary with the defense's aux losses.

An objective is a function `(model, x, y, ctx) -> (loss, logits)`, where `logits` are those the training
accuracy is read from. `ctx` (`ObjectiveContext`) carries the training attack and the hyper-parameters.
Defenses enter only through `robustact.defenses` (their `DefenseSpec`): the label-conditioned training
forward, the aux-loss weighting, and how the training attack sees the masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks import FGSM, PGD, attack_mode
from robustact.defenses.spec import defense_spec
from robustact.errors import ConfigError


@dataclass
class ObjectiveContext:
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    attack_model_mode: str = "eval"
    trades_beta: float = 6.0
    mart_beta: float = 6.0
    fgsm_alpha: float | None = None
    extras: dict = field(default_factory=dict)


def train_forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training forward: label-conditioned defense masks where the defense trains that way."""
    return defense_spec(model).train_forward(model, x, y)


def supervised_loss(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE on the final logits, composed with the defense's aux losses of the same forward."""
    return defense_spec(model).compose_loss(model, F.cross_entropy(logits.float(), y), y)


def training_attack(model: nn.Module, ctx: ObjectiveContext, loss: str = "ce"):
    """PGD as the defense wants it in training (its joint loss; eval or label-conditioned masks)."""
    spec = defense_spec(model)
    return spec.wrap_train_attack(
        PGD(ctx.eps, steps=ctx.steps, alpha=ctx.alpha, random_start=ctx.random_start,
            model_mode=ctx.attack_model_mode, extra_loss=spec.train_attack_extra_loss(), loss=loss,
            seed=None)
    )


def standard(model, x, y, ctx):
    logits = train_forward(model, x, y)
    return supervised_loss(model, logits, y), logits


def pgd_at(model, x, y, ctx):
    x_adv = training_attack(model, ctx)(model, x, y)
    logits = train_forward(model, x_adv, y)
    return supervised_loss(model, logits, y), logits


def fgsm_rs(model, x, y, ctx):
    """Wong et al. 2020: uniform start in the ε-ball, one step of 1.25ε, projected; train-mode attack."""
    spec = defense_spec(model)
    alpha = ctx.fgsm_alpha if ctx.fgsm_alpha is not None else 1.25 * ctx.eps
    attack = spec.wrap_train_attack(
        FGSM(ctx.eps, alpha=alpha, random_start=True, model_mode=ctx.attack_model_mode,
             extra_loss=spec.train_attack_extra_loss(), seed=None)
    )
    x_adv = attack(model, x, y)
    logits = train_forward(model, x_adv, y)
    return supervised_loss(model, logits, y), logits


def trades_adversary(model: nn.Module, x: torch.Tensor, ctx: ObjectiveContext) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) || f(x')) from x + 0.001·N(0, 1), model in eval mode."""
    with attack_mode(model, ctx.attack_model_mode), torch.enable_grad():
        with torch.no_grad():
            p_nat = F.softmax(model(x).float(), dim=1)
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
        for _ in range(ctx.steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv).float(), dim=1), p_nat, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = x_adv.detach() + ctx.alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - ctx.eps), x + ctx.eps).clamp(0, 1)
    return x_adv.detach()


def trades(model, x, y, ctx):
    """CE(f(x), y) + β·KL(f(x) ‖ f(x')), KL summed over classes and averaged over the batch."""
    x_adv = trades_adversary(model, x, ctx)
    logits_nat = train_forward(model, x, y)
    loss_nat = supervised_loss(model, logits_nat, y)
    logits_adv = train_forward(model, x_adv, y)
    kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_nat.float(), 1), reduction="batchmean")
    return loss_nat + ctx.trades_beta * kl, logits_adv


def mart_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020): BCE on x' + β·KL(p(x) ‖ p(x'))·(1 − p_y(x)), as in the MART code."""
    adv_probs = F.softmax(logits_adv.float(), dim=1)
    top2 = adv_probs.topk(2, dim=1).indices
    new_y = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    loss_adv = F.cross_entropy(logits_adv.float(), y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits_nat.float(), dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    return loss_adv + beta * (kl * (1.0000001 - true_probs)).mean()


def mart(model, x, y, ctx):
    x_adv = training_attack(model, ctx)(model, x, y)
    logits_nat = train_forward(model, x, y)
    logits_adv = train_forward(model, x_adv, y)
    loss = mart_loss(logits_adv, logits_nat, y, ctx.mart_beta)
    return defense_spec(model).compose_loss(model, loss, y), logits_adv


OBJECTIVES: dict[str, Callable] = {
    "standard": standard,
    "pgd_at": pgd_at,
    "trades": trades,
    "mart": mart,
    "fgsm_rs": fgsm_rs,
}


def get_objective(name: str) -> Callable:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
