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

from robustact.attacks import FGSM, PGD, AuxTerm, attack_mode
from robustact.attacks.wrappers import WithMasks
from robustact.config import TrainingConfig
from robustact.defenses.base import aux_logits
from robustact.defenses.spec import defense_spec
from robustact.registry import Registry


@dataclass
class ObjectiveContext:
    """What an objective needs besides the batch: the training attack's settings and the objectives' weights."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    start: str = "uniform"          # the PGD training attack's start: uniform in the eps-ball, or normal
    start_sigma: float = 0.001      # the normal start's std (also TRADES' KL adversary's)
    clamp_start: bool = True        # random starts clamped to [0, 1] (False: the official CAS / TRADES / MART code)
    attack_model_mode: str = "eval"
    trades_beta: float = 6.0
    mart_beta: float = 6.0
    fgsm_alpha: float | None = None
    extras: dict = field(default_factory=dict)
    # distributed training: this process's (rank, world), and the module the attacks run on — the network inside
    # DistributedDataParallel (whose forward expects a backward of the parameters, which attacks never do)
    shard: tuple[int, int] | None = None
    attack_model: nn.Module | None = None

    @classmethod
    def from_config(cls, training: TrainingConfig, **distributed) -> ObjectiveContext:
        atk = training.attack
        return cls(eps=atk.eps, alpha=atk.alpha if atk.alpha is not None else 2.5 * atk.eps / atk.steps,
                   steps=atk.steps, random_start=atk.random_start, start=atk.start, start_sigma=atk.start_sigma,
                   clamp_start=atk.clamp_start, attack_model_mode=atk.model_mode,
                   trades_beta=training.trades_beta, mart_beta=training.mart_beta, fgsm_alpha=training.fgsm_alpha,
                   **distributed)

    def target(self, model: nn.Module) -> nn.Module:
        """What an attack inside this objective runs on."""
        return self.attack_model if self.attack_model is not None else model


def train_forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training forward: label-conditioned defense masks where the defense trains that way."""
    return defense_spec(model).train_forward(model, x, y)


def supervised_loss(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE on the final logits, composed with the defense's aux losses of the same forward."""
    return defense_spec(model).compose_loss(model, F.cross_entropy(logits.float(), y), y)


def with_training_masks(model: nn.Module, attack):
    """`attack` run with the defense's training-attack masks (predicted in eval mode for CAS and CIFS, the
    label's for EWAS); the attack itself on a plain model."""
    spec = defense_spec(model)
    return attack if spec.name == "none" else WithMasks(attack, spec.attack_masks)


def training_attack(model: nn.Module, ctx: ObjectiveContext, loss: str = "ce"):
    """PGD as the defense wants it in training: its joint loss (aux-only if the defense says so) and masks; the
    start from `ctx` (uniform in the ε-ball by default; `x + 0.001·N(0, 1)` with start="normal", the official
    MART code's)."""
    spec = defense_spec(model)
    extra = AuxTerm(spec.attack_aux_weight) if spec.attack_aux_weight else None
    return with_training_masks(model, PGD(
        ctx.eps, steps=ctx.steps, alpha=ctx.alpha, random_start=ctx.random_start, start=ctx.start,
        start_sigma=ctx.start_sigma, clamp_start=ctx.clamp_start, model_mode=ctx.attack_model_mode,
        loss="zero" if spec.aux_only_train_attack else loss, extra_loss=extra, seed=None, shard=ctx.shard,
        validate=False))


def standard(model, x, y, ctx):
    logits = train_forward(model, x, y)
    return supervised_loss(model, logits, y), logits


def pgd_at(model, x, y, ctx):
    x_adv = training_attack(model, ctx)(ctx.target(model), x, y)
    logits = train_forward(model, x_adv, y)
    return supervised_loss(model, logits, y), logits


def fgsm_rs(model, x, y, ctx):
    """Wong et al. 2020: uniform start in the ε-ball, one step of 1.25ε, projected; train-mode attack."""
    spec = defense_spec(model)
    alpha = ctx.fgsm_alpha if ctx.fgsm_alpha is not None else 1.25 * ctx.eps
    extra = AuxTerm(spec.attack_aux_weight) if spec.attack_aux_weight else None
    attack = with_training_masks(model, FGSM(ctx.eps, alpha=alpha, random_start=True, model_mode=ctx.attack_model_mode,
                                             extra_loss=extra, seed=None, shard=ctx.shard, validate=False,
                                             clamp_start=ctx.clamp_start))
    x_adv = attack(ctx.target(model), x, y)
    logits = train_forward(model, x_adv, y)
    return supervised_loss(model, logits, y), logits


def _kl_sum(logits_adv: torch.Tensor, logits_nat: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_nat.float(), 1), reduction="sum")


class KLFrom:
    """TRADES' adversarial loss per example: KL(f(x) ‖ f(x')) summed over classes, f(x) the fixed reference."""

    def __init__(self, logits_nat: torch.Tensor) -> None:
        self.p_nat = F.softmax(logits_nat.detach().float(), 1)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits.float(), 1), self.p_nat, reduction="none").sum(1)

    def __repr__(self) -> str:
        return "KL(f(x) || f(x'))"


def trades_adversary(model: nn.Module, x: torch.Tensor, ctx: ObjectiveContext, aux_weight: float = 0.0,
                     y: torch.Tensor | None = None) -> torch.Tensor:
    """TRADES' inner maximisation: PGD on KL(f(x) ‖ f(x')) from x + 0.001·N(0, 1) (σ = `ctx.start_sigma`, clamped
    to [0, 1] unless `ctx.clamp_start` is off), model in the attack mode;
    with `aux_weight`, plus that weight times the mean KL of the aux heads (CAS / EWAS code)."""
    with attack_mode(model, ctx.attack_model_mode), torch.no_grad():
        logits_nat = model(x)
        aux_nat = aux_logits(model)
    extra = AuxTerm(aux_weight, "kl", reference=aux_nat) if aux_weight and aux_nat else None
    attack = PGD(ctx.eps, steps=ctx.steps, alpha=ctx.alpha, random_start=True, start="normal",
                 start_sigma=ctx.start_sigma, clamp_start=ctx.clamp_start, loss=KLFrom(logits_nat), extra_loss=extra,
                 model_mode=ctx.attack_model_mode, seed=None, shard=ctx.shard, validate=False)
    return attack(model, x, torch.zeros(len(x), dtype=torch.long, device=x.device) if y is None else y)


def trades_adversary_two_heads(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                               ctx: ObjectiveContext) -> torch.Tensor:
    """`trades_adversary` on both heads with the defense's training-attack masks (predicted in eval mode for
    CAS, the label's for EWAS) and its aux weight."""
    weight = defense_spec(model).attack_aux_weight
    return with_training_masks(model, lambda m, x_, y_: trades_adversary(m, x_, ctx, weight, y_))(
        ctx.target(model), x, y)


def trades(model, x, y, ctx):
    """CE(f(x), y) + β·KL(f(x) ‖ f(x')), KL summed over classes and averaged over the batch.

    With a defense whose spec has `aux_in_objective`, both parts also act on every aux head (weight
    `aux_weight`, mean over sites), and the adversary maximises the KL of both heads (the CAS / EWAS code)."""
    if defense_spec(model).aux_in_objective:
        return _trades_two_heads(model, x, y, ctx)
    x_adv = trades_adversary(ctx.target(model), x, ctx)
    logits_nat = train_forward(model, x, y)
    loss_nat = supervised_loss(model, logits_nat, y)
    logits_adv = train_forward(model, x_adv, y)
    kl = F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_nat.float(), 1), reduction="batchmean")
    return loss_nat + ctx.trades_beta * kl, logits_adv


def mart_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020): BCE on x' + β·KL(p(x) ‖ p(x'))·(1 − p_y(x)), as in the MART code."""
    true_probs = F.softmax(logits_nat.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    loss_adv, kl = mart_parts(logits_adv, logits_nat, y, true_probs)
    return loss_adv + beta * kl


def mart_parts(logits_adv: torch.Tensor, logits_nat: torch.Tensor, y: torch.Tensor,
               true_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MART's two terms for one head: boosted CE on x', and KL(p(x) ‖ p(x'))·(1 − `true_probs`) (batch mean)."""
    adv_probs = F.softmax(logits_adv.float(), dim=1)
    top2 = adv_probs.topk(2, dim=1).indices
    new_y = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    loss_adv = F.cross_entropy(logits_adv.float(), y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits_nat.float(), dim=1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(dim=1)
    return loss_adv, (kl * (1.0000001 - true_probs)).mean()


def _trades_two_heads(model, x, y, ctx):
    spec = defense_spec(model)
    x_adv = trades_adversary_two_heads(model, x, y, ctx)
    logits_nat = train_forward(model, x, y)
    aux_nat = aux_logits(model)
    loss_nat = supervised_loss(model, logits_nat, y)
    logits_adv = train_forward(model, x_adv, y)
    n = y.shape[0]
    robust = _kl_sum(logits_adv, logits_nat) / n
    heads = aux_logits(model)
    if heads:
        robust = robust + spec.aux_weight * torch.stack([_kl_sum(a, b) / n for a, b in zip(heads, aux_nat)]).mean()
    return spec.main_weight * (loss_nat + ctx.trades_beta * robust), logits_adv


def _mart_two_heads(model, x, y, ctx):
    """MART on both heads (CAS / EWAS code): each aux head gets its own boosted CE and KL term, weighted by
    (1 − p_y) of the *final* head's natural prediction; `mart_aux_kl_bug` compares the adversarial aux
    distribution with itself, as the official EWAS code."""
    spec = defense_spec(model)
    x_adv = training_attack(model, ctx)(ctx.target(model), x, y)
    logits_nat = train_forward(model, x, y)
    aux_nat = aux_logits(model)
    logits_adv = train_forward(model, x_adv, y)
    aux_adv = aux_logits(model)
    true_probs = F.softmax(logits_nat.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    loss_adv, kl = mart_parts(logits_adv, logits_nat, y, true_probs)
    if aux_adv:
        parts = [mart_parts(a, (a if spec.mart_aux_kl_bug else b), y, true_probs) for a, b in zip(aux_adv, aux_nat)]
        loss_adv = loss_adv + spec.aux_weight * torch.stack([p[0] for p in parts]).mean()
        kl = kl + spec.aux_weight * torch.stack([p[1] for p in parts]).mean()
    return spec.main_weight * (loss_adv + ctx.mart_beta * kl), logits_adv


def mart(model, x, y, ctx):
    if defense_spec(model).aux_in_objective:
        return _mart_two_heads(model, x, y, ctx)
    x_adv = training_attack(model, ctx)(ctx.target(model), x, y)
    logits_nat = train_forward(model, x, y)
    logits_adv = train_forward(model, x_adv, y)
    loss = mart_loss(logits_adv, logits_nat, y, ctx.mart_beta)
    return defense_spec(model).compose_loss(model, loss, y), logits_adv


OBJECTIVES: Registry[Callable] = Registry("objective")
for _name, _fn in (("standard", standard), ("pgd_at", pgd_at), ("trades", trades), ("mart", mart),
                   ("fgsm_rs", fgsm_rs)):
    OBJECTIVES.register(_name)(_fn)


def get_objective(name: str) -> Callable:
    return OBJECTIVES.get(name)
