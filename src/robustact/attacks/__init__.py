"""Attacks: objects built from a threat model, called as `attack(model, x, y) -> x_adv`."""

from robustact.attacks.apgd import APGD, APGDT
from robustact.attacks.autoattack import AutoAttack, AutoAttackResult
from robustact.attacks.base import Attack, attack_mode, validate_eps
from robustact.attacks.fab import FAB
from robustact.attacks.fgsm import FGSM
from robustact.attacks.losses import ce_loss, dlr_loss, dlr_targeted_loss, margin_loss
from robustact.attacks.pgd import PGD
from robustact.attacks.square import Square

__all__ = [
    "APGD", "APGDT", "Attack", "AutoAttack", "AutoAttackResult", "FAB", "FGSM", "PGD", "Square",
    "attack_mode", "ce_loss", "dlr_loss", "dlr_targeted_loss", "margin_loss", "validate_eps",
]
