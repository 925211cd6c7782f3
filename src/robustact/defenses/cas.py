"""CAS — Channel-wise Activation Suppressing (Bai et al., ICLR 2021; github bymavis/CAS_ICLR2021 @057fc63).

Each site: `a = Linear(C -> K)(GAP(z))`; mask = the raw weight row of the label (training forward) or of
`argmax(a)` (otherwise); `z' = z * m[:, :, None, None]` (see `robustact.defenses.linear_mask`).

Loss `CE + (β/S)·Σ_s CE(a_s, y)`, β = 2; the training attack (PGD-10) runs in eval mode — predicted masks —
and ascends the same joint loss. `aux_only_train_attack=True` reproduces the released code before July 2022,
whose attack dropped the main CE term. Placement: `robustact.defenses.placement` (every block of ResNet's last
stage; WRN's group-3 pre-activation and final BN-ReLU; VGG-16's last three convs).
"""

from __future__ import annotations

from dataclasses import dataclass

from robustact.defenses.linear_mask import linear_mask_sites
from robustact.defenses.placement import DEFENSES, Defense, SiteOptions
from robustact.defenses.spec import DefenseSpec
from robustact.fields import option


@dataclass
class CASOptions(SiteOptions):
    beta: float = option(2.0, min=0)                 # aux weight in the loss: CE + β·mean_s CE(aux_s)
    attack_beta: float | None = option(None, min=0)  # aux weight in the training attack (None: beta)
    aux_only_train_attack: bool = False              # the attack ascends the aux CE alone (code before July 2022)
    aux_in_objective: bool = True                    # TRADES/MART also on the aux heads (the official Trades/, MART/)


def cas_spec(o: CASOptions) -> DefenseSpec:
    return DefenseSpec(name="cas", aux_weight=o.beta, main_weight=1.0, train_masks="label", attack_masks="pred",
                       attack_aux_weight=o.beta if o.attack_beta is None else o.attack_beta,
                       aux_only_train_attack=o.aux_only_train_attack, aux_in_objective=o.aux_in_objective)


DEFENSES.register("cas")(Defense("cas", CASOptions, linear_mask_sites("channel"), cas_spec))
