"""CAS — Channel-wise Activation Suppressing (Bai et al., ICLR 2021; github bymavis/CAS_ICLR2021 @057fc63).

Each site: `a = Linear(C -> K)(GAP(z))`; mask = the raw weight row of the label (training forward) or of
`argmax(a)` (otherwise); `z' = z * m[:, :, None, None]` (see `robustact.defenses.linear_mask`).

Loss `CE + (β/S)·Σ_s CE(a_s, y)`, β = 2; the training attack (PGD-10) runs in eval mode — predicted masks —
and ascends the same joint loss. `aux_only_train_attack=True` reproduces the released code before July 2022,
whose attack dropped the main CE term.

Placement (as the official models): ResNet-18/34 and `resnet_small` — the post-ReLU output of every block
of the last stage (`layer4[i].site`; S = 2 for ResNet-18); WideResNet — (a) the BN-ReLU pre-activated input of
the last block of group 3, feeding only its residual branch (`block3.layer[-1].pre_site`), and (b) the final
BN-ReLU output before pooling (`final_site`); VGG-16 — the three convs of the last stage (`slots[-1]`).
"""

from __future__ import annotations

from torch import nn

from robustact.defenses.linear_mask import place_sites
from robustact.defenses.registry import no_placement, register_defense
from robustact.defenses.spec import DefenseSpec
from robustact.errors import ConfigError

RESNETS = ("resnet18", "resnet34", "resnet_small")
WRNS = ("wrn34_10", "wrn28_10", "wideresnet")
VGGS = ("vgg16",)
CAS_ARCHS = (*RESNETS, *WRNS, *VGGS)
CAS_OPTIONS = ("beta", "attack_beta", "aux_only_train_attack", "aux_in_objective", "input_size")


def cas_slots(model: nn.Module, arch: str) -> list[str]:
    """Dotted paths of the slots CAS occupies in `arch`, in forward order."""
    if arch in RESNETS:
        return [f"layer4.{i}.site" for i in range(len(model.layer4))]
    if arch in WRNS:
        return [f"block3.layer.{len(model.block3.layer) - 1}.pre_site", "final_site"]
    if arch in VGGS:
        return [f"slots.{len(model.slots) - 1}.{i}" for i in range(len(model.slots[-1]))]
    raise no_placement("cas", arch, list(CAS_ARCHS))


def check_options(defense: str, kwargs: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(f"defense {defense!r} does not take {', '.join(unknown)}; it takes: {', '.join(known)}")


@register_defense("cas")
def place_cas(model: nn.Module, arch: str, **kwargs) -> nn.Module:
    """Put CAS sites into `model` and set its `DefenseSpec`.

    Options: `beta` (aux weight in the loss, 2), `attack_beta` (aux weight in the training attack, default
    `beta`), `aux_only_train_attack` (False), `aux_in_objective` (True: TRADES/MART also on the aux heads, as
    the official Trades/ and MART/ code), `input_size` (32; only used for the build-time dry run).
    """
    check_options("cas", kwargs, CAS_OPTIONS)
    beta = float(kwargs.get("beta", 2.0))
    attack_beta = float(kwargs.get("attack_beta", beta))
    paths = cas_slots(model, arch)
    num_classes = model.classifier_layer().out_features
    place_sites(model, paths, num_classes, "channel", kwargs.get("input_size", 32))
    model.defense_spec = DefenseSpec(
        name="cas", aux_weight=beta, main_weight=1.0, train_masks="label", attack_masks="pred",
        attack_aux_weight=attack_beta, aux_only_train_attack=bool(kwargs.get("aux_only_train_attack", False)),
        aux_in_objective=bool(kwargs.get("aux_in_objective", True)),
    )
    return model
