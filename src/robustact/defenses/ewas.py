"""EWAS — Element-Wise Activation Scaling (Liu & Zhang, arXiv 2202.11898; github ieslab-ynu/EWAS @a51f473).

CAS without the pooling: one site, `a = Linear(C·H·W -> K)(flatten(z))`, mask = the raw weight row of the
label (training forward, and inside the training attack) or of `argmax(a)` (test), reshaped to (C, H, W) and
multiplied element-wise (no bias in the mask). Loss `CE + λ·CE_aux`, λ = 0.01; the TRADES and MART variants
apply their loss to both heads (β = 6). The official MART code's aux KL compares the adversarial aux
distribution with itself (≈ 0): `mart_aux_kl_bug=True` reproduces it (off by default).

Placement (official `models/resnet.py`, `models/wrn.py`): ResNet — between `layer4[0]` and `layer4[1]`
(`layer4[0].site`; 512×4×4 on ResNet-18); WideResNet — before the last three blocks of group 3 (the code's
`block3.layer[:-3]`: after the 2nd of 5 blocks on WRN-34-10; after the first block where a group has fewer
than 4 blocks). H and W come from a build-time dry run at `input_size` (32), so the aux Linear's size is
known when the optimiser is made and checkpoints load strictly.
"""

from __future__ import annotations

from torch import nn

from robustact.defenses.cas import RESNETS, WRNS, check_options
from robustact.defenses.linear_mask import place_sites
from robustact.defenses.registry import no_placement, register_defense
from robustact.defenses.spec import DefenseSpec

EWAS_ARCHS = (*RESNETS, *WRNS)
EWAS_OPTIONS = ("lam", "attack_lam", "predicted_mask_train_attack", "aux_in_objective", "mart_aux_kl_bug",
                "input_size")


def ewas_slots(model: nn.Module, arch: str) -> list[str]:
    """Dotted path of the one slot EWAS occupies in `arch`."""
    if arch in RESNETS:
        return ["layer4.0.site"]
    if arch in WRNS:
        n = len(model.block3.layer)
        return [f"block3.layer.{max(n - 4, 0)}.site"]
    raise no_placement("ewas", arch, list(EWAS_ARCHS))


@register_defense("ewas")
def place_ewas(model: nn.Module, arch: str, **kwargs) -> nn.Module:
    """Put the EWAS site into `model` and set its `DefenseSpec`.

    Options: `lam` (aux weight, 0.01), `attack_lam` (aux weight in the training attack, default `lam`),
    `predicted_mask_train_attack` (False: the training attack sees the true label's mask, as the official
    code; True: CAS-style eval-mode predicted masks), `aux_in_objective` (True: TRADES/MART on both heads),
    `mart_aux_kl_bug` (False), `input_size` (32: the image size of the build-time dry run that sizes the
    aux head).
    """
    check_options("ewas", kwargs, EWAS_OPTIONS)
    lam = float(kwargs.get("lam", 0.01))
    paths = ewas_slots(model, arch)
    num_classes = model.classifier_layer().out_features
    place_sites(model, paths, num_classes, "element", kwargs.get("input_size", 32))
    model.defense_spec = DefenseSpec(
        name="ewas", aux_weight=lam, main_weight=1.0, train_masks="label",
        attack_masks="pred" if kwargs.get("predicted_mask_train_attack", False) else "label",
        attack_aux_weight=float(kwargs.get("attack_lam", lam)),
        aux_in_objective=bool(kwargs.get("aux_in_objective", True)),
        mart_aux_kl_bug=bool(kwargs.get("mart_aux_kl_bug", False)),
    )
    return model
