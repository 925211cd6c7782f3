"""CIFS evaluation protocols: `paper` (the authors' attacks, METHODS.md §2) and `adaptive` (attacks that know
the defense). Both also work on a model without CIFS sites (the joint terms are then zero), so a plain PGD-AT
baseline can be run under exactly the same attacks (`robustact eval RUN --suite paper --protocol cifs`).

paper (official `CIFAR10_Res18_CIFS_test.py` and the first commit's reduced AutoAttack): every loss is the
joint loss `L(final) + β_atk·mean_l L(probe_l)` with β_atk = 2, sites with their official detached relevance
and predicted (top-2) masks, model in eval mode:
    fgsm      one ε step, no random start (advertorch FGSM)
    pgd20     20 steps of ε/10, no random start
    pgd100    100 steps of ε/10, no random start
    cw30      30 steps of ε/10 on the CW margin with κ = 50 (on the final and the probe logits)
    aa-cifs   the authors' reduced AutoAttack: APGD-CE (joint CE, 100 steps) then Square (5000 queries,
              p_init 0.8, minimising the joint CE; success judged on the final logits), in cascade

adaptive: every gradient attack differentiates through the relevance (`detach_for_mask=False` on each site
for the duration of the attack, restored after): random start, 50 steps of 2.5ε/50 unless said otherwise.
    ce-thru             CE on the final logits
    joint-b2-thru       + 2·mean CE(probe)            (the β_atk sweep: 0, 2, 10)
    joint-b10-thru      + 10·mean CE(probe)
    probe-only-thru     mean CE(probe) alone (the final logits play no part)
    cw-thru             CW margin (κ = 0) on the final logits
    top2-switch-thru    CE(final) + 2·mean over probes of the margin that pushes y out of the probe's top-2
                        (the mask then stops selecting the channels relevant to y)
    ce-detached         the control: ce-thru with the official detached relevance
    aa                  standard AutoAttack on the final logits (official detached masks), as RobustBench runs it
The per-example worst case over the suite is the report's `worst_case`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks import APGD, FGSM, PGD, AutoAttack, AuxTerm
from robustact.attacks.losses import other_max
from robustact.attacks.registry import make_attack
from robustact.attacks.square import Square
from robustact.defenses.cifs import relevance_gradients
from robustact.evaluation.suites import positive_int, read_options, register_suite

PAPER_BETA = 2.0
PAPER_KAPPA = 50.0


class ThroughRelevance:
    """Run `attack` with every CIFS site differentiating through its relevance (`detach_for_mask=False`),
    restoring each site's setting afterwards."""

    def __init__(self, attack) -> None:
        self.attack = attack

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with relevance_gradients(model):
            return self.attack(model, x, y)

    def __repr__(self) -> str:
        return f"{self.attack!r} through the relevance"


class JointSquare(Square):
    """Square minimising −[CE(final) + β·mean CE(probe)] (the authors' reduced AutoAttack); success and the
    margin bookkeeping stay on the final logits. The probe logits are those of the forward that produced
    `logits` (Square calls the model, then this loss)."""

    def __init__(self, eps: float, *, beta: float, **kwargs) -> None:
        super().__init__(eps, loss="ce", **kwargs)
        self.aux = AuxTerm(beta)
        self._model: nn.Module | None = None

    def perturb(self, model, x, y):
        self._model = model
        try:
            return super().perturb(model, x, y)
        finally:
            self._model = None

    def _margin_loss(self, logits, y):
        logits = logits.float()
        margin = logits.gather(1, y[:, None]).squeeze(1) - other_max(logits, y)
        loss = F.cross_entropy(logits, y, reduction="none")
        if self._model is not None:
            loss = loss + self.aux(self._model, logits, y)
        return margin, -loss

    def settings(self):
        return super().settings() | {"extra": self.aux}


def reduced_autoattack(eps: float, seed: int = 0, beta: float = PAPER_BETA, n_queries: int = 5000):
    """APGD-CE (joint CE, 100 steps, 1 restart) then Square (joint CE, `n_queries`), in cascade."""
    apgd = APGD(eps, loss="ce", steps=100, restarts=1, extra_loss=AuxTerm(beta), seed=seed)
    square = JointSquare(eps, beta=beta, n_queries=n_queries, p_init=0.8, seed=seed)
    return AutoAttack(eps, version="custom", attacks={"apgd-ce": apgd, "square": square}, seed=seed)


def build_paper(model: nn.Module, eps: float, seed: int = 0, *, beta: float = PAPER_BETA,
                include_aa: bool = True) -> dict:
    """The authors' evaluation (see the module docstring)."""
    step = eps / 10
    joint = AuxTerm(beta)
    attacks = {
        "fgsm": FGSM(eps, extra_loss=joint, seed=seed),
        "pgd20": PGD(eps, steps=20, alpha=step, random_start=False, extra_loss=joint, seed=seed),
        "pgd100": PGD(eps, steps=100, alpha=step, random_start=False, extra_loss=joint, seed=seed),
        "cw30": PGD(eps, steps=30, alpha=step, random_start=False, loss="margin", kappa=PAPER_KAPPA,
                    extra_loss=AuxTerm(beta, "margin", kappa=PAPER_KAPPA), seed=seed),
    }
    if include_aa:
        attacks["aa-cifs"] = reduced_autoattack(eps, seed, beta)
    return attacks


def build_adaptive(model: nn.Module, eps: float, seed: int = 0, *, steps: int = 50,
                   include_aa: bool = True) -> dict:
    """Defense-aware attacks (see the module docstring)."""

    def pgd(**kw):
        return PGD(eps, steps=steps, random_start=True, seed=seed, **kw)

    attacks = {
        "ce-thru": pgd(),
        "joint-b2-thru": pgd(extra_loss=AuxTerm(2.0)),
        "joint-b10-thru": pgd(extra_loss=AuxTerm(10.0)),
        "probe-only-thru": pgd(loss="zero", extra_loss=AuxTerm(1.0)),
        "cw-thru": pgd(loss="margin"),
        "top2-switch-thru": pgd(extra_loss=AuxTerm(2.0, "top2-switch")),
    }
    attacks = {name: ThroughRelevance(a) for name, a in attacks.items()}
    attacks["ce-detached"] = pgd()  # the control: same attack, official detached relevance
    if include_aa:
        attacks["aa"] = make_attack("aa", eps, seed=seed)
    return attacks


@register_suite("paper", defense="cifs")
def cifs_paper(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    opts = read_options(options, {"square_queries": "5000"}, "paper")
    attacks = build_paper(model, eps, seed, include_aa=False)
    attacks["aa-cifs"] = reduced_autoattack(eps, seed, n_queries=positive_int(opts, "square_queries"))
    return attacks


@register_suite("adaptive", defense="cifs")
def cifs_adaptive(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    opts = read_options(options, {"steps": "50"}, "adaptive")
    return build_adaptive(model, eps, seed, steps=positive_int(opts, "steps"))
