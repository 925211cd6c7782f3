"""Attacks: objects built from a threat model, called as `attack(model, x, y) -> x_adv`."""

from robustact.attacks.base import Attack, attack_mode, validate_eps
from robustact.attacks.fgsm import FGSM
from robustact.attacks.losses import ce_loss, dlr_loss, margin_loss
from robustact.attacks.pgd import PGD

__all__ = ["Attack", "FGSM", "PGD", "attack_mode", "ce_loss", "dlr_loss", "margin_loss", "validate_eps"]
