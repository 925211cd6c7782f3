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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustact.defenses.base import DefenseSite, sites
from robustact.defenses.placement import DEFENSES, Defense, SiteOptions
from robustact.defenses.spec import DefenseSpec
from robustact.errors import ConfigError
from robustact.fields import option

PROBES = ("linear", "nonlinear")


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
    """One CIFS site: a probe, its gradient-based channel relevance, and the soft channel mask. Not compilable:
    the relevance is a gradient taken inside the forward with create_graph (a double backward).

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

    compilable = False

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


# -- options, sites, spec ---------------------------------------------------------------------------------
@dataclass
class CIFSOptions(SiteOptions):
    beta: float = option(2.0, min=0)                  # loss 3/(β+1)·[CE + β·mean_l CE(probe_l)]
    attack_beta: float | None = option(None, min=0)   # probe weight in the training attack (None: beta)
    k: int = option(2, min=1)                         # top-k probe logits that define the relevance
    T: float = option(1.0, above=0)                   # softmax temperature over channels
    mask_scale: float = option(1.0, above=0)          # the mask sums to this (1: HEAD; 2: the first commit's ResNet)
    detach_for_mask: bool = True                      # relevance on a detached copy of z (official)
    probes: Any = option(None, parse=lambda v, where: _parse_probes(v, where))  # per site, default: the placement's
    hidden: int | None = option(None, min=1)          # nonlinear probe width (default: the placement's, 128 / 240)
    softplus_beta: float = option(5.0, above=0)       # of the nonlinear probe's Softplus


def _parse_probes(value: Any, where: str) -> str | list[str] | None:
    """One probe kind for every site, or a list with one per site."""
    if value is None:
        return None
    kinds = [value] if isinstance(value, str) else value
    if not isinstance(kinds, (list, tuple)) or any(p not in PROBES for p in kinds):
        raise ConfigError(f"{where}: CIFS probes must be one or a list of {', '.join(PROBES)}, got {value!r}")
    return value if isinstance(value, str) else list(value)


def make_cifs_sites(o: CIFSOptions, slots: list, num_classes: int) -> list[CIFSSite]:
    """One site per slot; probe kind and width from the options if given, else from the placement."""
    kinds = [s.settings["probe"] for s in slots] if o.probes is None else o.probes
    if isinstance(kinds, str):
        kinds = [kinds] * len(slots)
    if len(kinds) != len(slots):
        raise ConfigError(f"CIFS probes must be {len(slots)} of {', '.join(PROBES)} (one per site), got {o.probes!r}")
    if o.k > num_classes:
        raise ConfigError(f"CIFS k must be between 1 and num_classes={num_classes}, got {o.k}")
    return [CIFSSite(s.shape[0], num_classes, kind, o.hidden or s.settings["hidden"], o.k, o.T, o.mask_scale,
                     o.detach_for_mask, o.softplus_beta) for s, kind in zip(slots, kinds)]


def cifs_spec(o: CIFSOptions) -> DefenseSpec:
    return DefenseSpec(name="cifs", aux_weight=o.beta, main_weight=3.0 / (o.beta + 1.0), train_masks="label",
                       attack_masks="pred", attack_aux_weight=o.beta if o.attack_beta is None else o.attack_beta)


DEFENSES.register("cifs")(Defense("cifs", CIFSOptions, make_cifs_sites, cifs_spec))
