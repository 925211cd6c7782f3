"""EWAS — Element-Wise Activation Scaling (Liu & Zhang, arXiv 2202.11898; github ieslab-ynu/EWAS @a51f473).

CAS without the pooling: one site, `a = Linear(C·H·W -> K)(flatten(z))`, mask = the raw weight row of the
label (training forward, and inside the training attack) or of `argmax(a)` (test), reshaped to (C, H, W) and
multiplied element-wise (no bias in the mask). Loss `CE + λ·CE_aux`, λ = 0.01; the TRADES and MART variants
apply their loss to both heads (β = 6). The official MART code's aux KL compares the adversarial aux
distribution with itself (≈ 0): `mart_aux_kl_bug=True` reproduces it (off by default).

Placement (`robustact.defenses.placement`, as the official `models/resnet.py`, `models/wrn.py`): ResNet — between
`layer4[0]` and `layer4[1]`; WideResNet — before the last three blocks of group 3. H and W come from the
build-time dry run at `input_size` (32), so the aux Linear's size is known when the optimiser is made and
checkpoints load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

from robustact.defenses.linear_mask import linear_mask_sites
from robustact.defenses.placement import DEFENSES, Defense, SiteOptions
from robustact.defenses.spec import DefenseSpec
from robustact.fields import option


@dataclass
class EWASOptions(SiteOptions):
    lam: float = option(0.01, min=0)                 # aux weight λ: CE + λ·CE_aux
    attack_lam: float | None = option(None, min=0)   # aux weight in the training attack (None: lam)
    predicted_mask_train_attack: bool = False        # False: true-label masks in the training attack (official)
    aux_in_objective: bool = True                    # TRADES/MART on both heads (the official *_with_loss.py)
    mart_aux_kl_bug: bool = False                    # the official MART aux KL of a distribution with itself


def ewas_spec(o: EWASOptions) -> DefenseSpec:
    return DefenseSpec(name="ewas", aux_weight=o.lam, main_weight=1.0, train_masks="label",
                       attack_masks="pred" if o.predicted_mask_train_attack else "label",
                       attack_aux_weight=o.lam if o.attack_lam is None else o.attack_lam,
                       aux_in_objective=o.aux_in_objective, mart_aux_kl_bug=o.mart_aux_kl_bug)


DEFENSES.register("ewas")(Defense("ewas", EWASOptions, linear_mask_sites("element"), ewas_spec))
