"""Attacks: objects built from a threat model, called as `attack(model, x, y) -> x_adv` (one attack per module
over the tiny `base.Attack`), plus `predict` / `robust_under` (the one way to ask a model for its predictions),
`EvalResult` (the one result type), `AuxTerm` (aux-head loss terms) and the wrappers of adaptive protocols."""

from robustact.attacks.apgd import APGD, APGDT
from robustact.attacks.autoattack import AutoAttack
from robustact.attacks.aux import AuxTerm
from robustact.attacks.base import Attack, attack_mode, model_forward, validate_eps
from robustact.attacks.fab import FAB
from robustact.attacks.fgsm import FGSM
from robustact.attacks.losses import ce_loss, dlr_loss, dlr_targeted_loss, margin_loss, zero_loss
from robustact.attacks.pgd import PGD
from robustact.attacks.predict import accuracy_under, predict, robust_under
from robustact.attacks.result import EvalResult
from robustact.attacks.square import Square

__all__ = [
    "APGD", "APGDT", "Attack", "AutoAttack", "AuxTerm", "EvalResult", "FAB", "FGSM", "PGD", "Square",
    "accuracy_under", "attack_mode", "ce_loss", "dlr_loss", "dlr_targeted_loss", "margin_loss", "model_forward",
    "predict", "robust_under", "validate_eps", "zero_loss",
]
