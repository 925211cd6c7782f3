"""CIFS — Channel-wise Importance-based Feature Selection (Yan et al., ICML 2021, arXiv 2102.05311).

A reconstruction from the official code (github HanshuYAN/CIFS @2e68025 `models/nets/resnet_CIFS.py`; the
first code commit 2d8217c for the WRN placement and `mask_scale=2`); see docs/cifs.md and METHODS.md §2.

Per site, on an activation z (N, C, H, W):

    P        probe: linear  W·GAP(z) + b,  or nonlinear  W2·softplus_5(W1·GAP(z) + b1) + b2
    zd       = z.detach().requires_grad_()       (detach_for_mask=True, the official code)
    s        = P(zd)                              (N, K)
    t        = top-k of s ("pred"), or t1 = y and t2..tk = ranks 2..k of s ("label", the training forward)
    g        = Σ_{h,w} ∂(Σ_n Σ_j s[n, t_j]) / ∂zd          (N, C) — the channels' relevance
    m        = mask_scale · softmax_C(g / T)
    z'       = z · m;   aux logits = P(z)         (the probe CE also trains the backbone)

`g` is computed with `create_graph=True` whenever a parameter needs gradients, so the main loss trains the
probe through the mask (double backprop). With a linear probe `g = W[t1] + W[t2]` exactly.

Mask modes (`DefenseSite.mask_mode`): "label" (t1 = the conditioned label), "pred" (top-k of the probe),
and "soft" = "pred" with the relevance differentiated with respect to the input (as `detach_for_mask=False`):
the mask is already a smooth function, so the differentiable surrogate an adaptive attack needs is the
non-detached relevance itself, not another relaxation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.defenses.base import DefenseSite, sites
from robustact.defenses.registry import no_placement, register_defense
from robustact.defenses.spec import DefenseSpec
from robustact.errors import ConfigError

PROBES = ("linear", "nonlinear")
ARCHS = ("resnet18", "resnet34", "resnet_small", "wideresnet", "wrn34_10", "wrn28_10")


class _GAPFlatten(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.mean(dim=(2, 3))


class _Hidden(nn.Module):
    """Linear(C -> hidden) then Softplus(β) — the official `nlBlock` (GAP included)."""

    def __init__(self, channels: int, hidden: int, softplus_beta: float) -> None:
        super().__init__()
        self.gap = _GAPFlatten()
        self.fc = nn.Linear(channels, hidden)
        self.softplus = nn.Softplus(beta=softplus_beta)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.softplus(self.fc(self.gap(z)))


class CIFSSite(DefenseSite):
    """One CIFS site: a probe, its gradient-based channel relevance, and the soft channel mask.

    Args:
        channels, num_classes: C and K.
        probe: "linear" or "nonlinear" (GAP → Linear(C→hidden) → Softplus(β=5) → Linear(→K)).
        hidden: width of the nonlinear probe (128 for ResNets, 240 for WRN in the official code).
        k: how many of the probe's top logits define the relevance (2 in the paper).
        T: softmax temperature over channels (1 in the paper).
        mask_scale: the mask sums to this (1 = official HEAD; 2 = the first code commit's ResNet).
        detach_for_mask: True (official) computes the relevance on a detached copy of z, so no gradient
            reaches the input through the mask; False differentiates through it (adaptive attacks).
    """

    def __init__(self, channels: int, num_classes: int, probe: str = "linear", hidden: int = 128, k: int = 2,
                 T: float = 1.0, mask_scale: float = 1.0, detach_for_mask: bool = True,
                 softplus_beta: float = 5.0) -> None:
        super().__init__()
        if probe not in PROBES:
            raise ConfigError(f"CIFS probe must be one of {', '.join(PROBES)}, got {probe!r}")
        if not 1 <= int(k) <= num_classes:
            raise ConfigError(f"CIFS k must be between 1 and num_classes={num_classes}, got {k}")
        if not float(T) > 0:
            raise ConfigError(f"CIFS temperature T must be > 0, got {T}")
        if not float(mask_scale) > 0:
            raise ConfigError(f"CIFS mask_scale must be > 0, got {mask_scale}")
        self.kind = probe
        self.k, self.T, self.mask_scale = int(k), float(T), float(mask_scale)
        self.detach_for_mask = bool(detach_for_mask)
        if probe == "linear":
            self.probe = nn.Sequential(_GAPFlatten(), nn.Linear(channels, num_classes))
        else:
            self.probe = nn.Sequential(_Hidden(channels, int(hidden), float(softplus_beta)),
                                       nn.Linear(int(hidden), num_classes))
        self.last_mask: torch.Tensor | None = None   # (N, C) mask of the last forward, detached
        self.last_targets: torch.Tensor | None = None  # (N, k) classes whose logits defined it

    # -- the pieces --------------------------------------------------------------------------------
    def targets(self, s: torch.Tensor) -> torch.Tensor:
        """(N, k) classes whose probe logits define the relevance (see the module docstring)."""
        top = s.detach().topk(self.k, dim=1).indices
        if self.mask_mode != "label":
            return top
        y = self.mask_class(s)  # the conditioned labels, with the framework's checks
        # official: t2 = the 2nd-highest predicted class, even when that is y itself
        return torch.cat([y[:, None].to(top.device), top[:, 1:]], dim=1)

    def relevance_closed_form(self, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Σ_{h,w} ∂(Σ_j s[t_j])/∂z without autograd (used under `torch.inference_mode`, where autograd is
        off); equal to the autograd relevance (the GAP's 1/HW cancels against the sum over space)."""
        last = self.probe[-1]
        w_t = last.weight[targets]  # (N, k, K_in)
        if self.kind == "linear":
            return w_t.sum(1)
        hidden = self.probe[0]
        u = hidden.fc(z.mean(dim=(2, 3)))
        beta = hidden.softplus.beta
        slope = torch.where(u * beta > hidden.softplus.threshold, torch.ones_like(u), torch.sigmoid(beta * u))
        return (w_t.sum(1) * slope) @ hidden.fc.weight

    def mask(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask (N, C) summing to mask_scale, targets (N, k)); differentiable where it has to be."""
        if torch.is_inference_mode_enabled():
            s = self.probe(z)
            t = self.targets(s)
            g = self.relevance_closed_form(z, t)
        else:
            outer_grad = torch.is_grad_enabled()
            through = (not self.detach_for_mask or self.mask_mode == "soft") and z.requires_grad
            need_graph = outer_grad and (through or any(p.requires_grad for p in self.probe.parameters()))
            with torch.enable_grad():
                src = z if through else z.detach().requires_grad_(True)
                s = self.probe(src)
                t = self.targets(s)
                (grad,) = torch.autograd.grad(s.gather(1, t).sum(), src, create_graph=need_graph)
            g = grad.sum(dim=(2, 3))
            if not need_graph:
                g = g.detach()
        return self.mask_scale * F.softmax(g.float() / self.T, dim=1), t

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        m, t = self.mask(z)
        self.last_mask, self.last_targets = m.detach(), t
        self.last_aux = self.probe(z)
        return z * m.to(z.dtype)[:, :, None, None]

    def extra_repr(self) -> str:
        return (f"probe={self.kind}, k={self.k}, T={self.T:g}, mask_scale={self.mask_scale:g}, "
                f"detach_for_mask={self.detach_for_mask}")


def cifs_sites(model: nn.Module) -> list[CIFSSite]:
    return [s for s in sites(model) if isinstance(s, CIFSSite)]


class relevance_gradients:
    """Context: every CIFS site differentiates through its relevance (`detach_for_mask=False`); restores
    each site's own setting after the block. The adaptive suite runs attacks in it."""

    def __init__(self, model: nn.Module, detach: bool = False) -> None:
        self.model, self.detach = model, detach

    def __enter__(self) -> None:
        self._saved = [(s, s.detach_for_mask) for s in cifs_sites(self.model)]
        for s, _ in self._saved:
            s.detach_for_mask = self.detach

    def __exit__(self, *exc: Any) -> None:
        for s, flag in self._saved:
            s.detach_for_mask = flag


# -- placement ---------------------------------------------------------------------------------------
def _load_init(model: nn.Module, path: str) -> None:
    """`init_from` as a defense option (kept for configs that use it; `model.init_from` is the trainer-level
    form, for any defense): a run directory gives its last checkpoint; probe keys are optional."""
    from robustact.training.checkpoint import init_weights_from

    init_weights_from(model, path, optional=lambda key: ".probe." in key, which="last")


def _probe_kinds(probes: Any, n: int) -> list[str]:
    if probes is None:
        return ["nonlinear", "linear"][-n:] if n <= 2 else ["linear"] * n
    kinds = [probes] * n if isinstance(probes, str) else list(probes)
    if len(kinds) != n or any(p not in PROBES for p in kinds):
        raise ConfigError(f"CIFS probes must be {n} of {', '.join(PROBES)} (one per site), got {probes!r}")
    return kinds


@register_defense("cifs")
def place_cifs(model: nn.Module, arch: str, *, beta: float = 2.0, attack_beta: float | None = None,
               k: int = 2, T: float = 1.0, mask_scale: float = 1.0, detach_for_mask: bool = True,
               probes: Any = None, hidden: int | None = None, softplus_beta: float = 5.0,
               init_from: str | None = None, **unknown: Any) -> nn.Module:
    """Put CIFS sites where the paper does and set the loss: 3/(β+1)·[CE + (β/L)·Σ_l CE(P_l)].

    ResNet-18 (and resnet_small): layer4[0] (nonlinear probe, hidden 128) and layer4[1] (linear probe),
    on post-ReLU block outputs; ResNet-34: the last two layer4 blocks [recon]. WRN (official: WRN-28-10):
    the BN-ReLU pre-activated input of the last block of group 3, feeding only its residual branch
    (nonlinear, hidden 240), and the final BN-ReLU output before pooling (linear).
    `attack_beta` (default β) weights the mean probe CE in the training attack.
    """
    if unknown:
        raise ConfigError(
            f"defense 'cifs' does not take {', '.join(sorted(unknown))}; it takes: beta, attack_beta, k, T, "
            "mask_scale, detach_for_mask, probes, hidden, softplus_beta, init_from"
        )
    if arch in ("resnet18", "resnet34", "resnet_small"):
        slots = [(blk, "site") for blk in list(model.layer4)[-2:]]
        default_hidden = 128
    elif arch in ("wideresnet", "wrn34_10", "wrn28_10"):
        slots = [(model.block3.layer[-1], "pre_site"), (model, "final_site")]
        default_hidden = 240
    else:
        raise no_placement("cifs", arch, list(ARCHS))
    num_classes = model.classifier_layer().out_features
    kinds = _probe_kinds(probes, len(slots))
    for (owner, attr), kind in zip(slots, kinds):
        channels = _site_channels(owner, attr)
        setattr(owner, attr, CIFSSite(channels, num_classes, kind, int(hidden or default_hidden), k, T, mask_scale,
                                      detach_for_mask, softplus_beta))
    beta = float(beta)
    if beta < 0:
        raise ConfigError(f"CIFS beta must be >= 0, got {beta}")
    model.defense_spec = DefenseSpec(
        name="cifs", aux_weight=beta, main_weight=3.0 / (beta + 1.0), train_masks="label", attack_masks="pred",
        attack_aux_weight=float(beta if attack_beta is None else attack_beta),
    )
    if init_from:
        _load_init(model, str(init_from))
    return model


def _site_channels(owner: nn.Module, attr: str) -> int:
    """Channels of the activation at a slot: from the block's last BN (ResNet site), the block's first BN
    (WRN pre_site), or the final BN (WRN final_site)."""
    if attr == "site":
        return owner.bn2.num_features
    if attr == "pre_site":
        return owner.bn1.num_features
    return owner.bn1.num_features  # WideResNet.bn1 is the final BN

