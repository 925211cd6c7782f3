"""The one builder of aux-head loss terms: what a defense-aware attack adds to its loss.

`AuxTerm(weight, loss, reduce=...)` is an extra loss `(model, logits, y) -> (N,)` (see `Attack.extra_loss`):
`weight · (mean or sum over the defense sites) of loss(aux logits of the last forward)`, where the loss is
- "ce": CE(aux, y) — the papers' joint losses (CAS β = 2, EWAS λ = 0.01, CIFS β = 2) and the β sweeps;
- "margin": the CW margin with κ (the CAS / EWAS / CIFS "CW" attacks on the aux heads); `hinge="batch"` puts the
  hinge on each head's batch-summed margin, as the official CAS evaluation (`losses.margin_loss`);
- "top2-switch": `2nd-largest other logit − aux_y`, which pushes y out of the probe's top-2 (CIFS adaptive);
- "kl": KL(softmax(reference_s) ‖ softmax(aux_s)) with the heads' natural logits as `reference` (TRADES' adversary
  on both heads, the CAS / EWAS code);
- with `toward=k`: −CE(aux, k), pulling every aux head toward class k (the mask-enumeration attack).
Its `repr` says all of that, so reports describe the attack without hand-written text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustact.attacks.losses import HINGES, margin_loss
from robustact.defenses.base import aux_logits

AUX_LOSSES = ("ce", "margin", "top2-switch", "kl")


def _top2_switch(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    others = a.masked_fill(F.one_hot(y, a.shape[1]).bool(), float("-inf"))
    return others.topk(2, dim=1).values[:, 1] - a.gather(1, y[:, None]).squeeze(1)


class AuxTerm:
    """`weight · reduce_sites loss(aux_s)` for the aux heads of the model's last forward (0 without heads)."""

    def __init__(self, weight: float, loss: str = "ce", *, reduce: str = "mean", kappa: float = 0.0,
                 toward: torch.Tensor | None = None, reference: list[torch.Tensor] | None = None,
                 hinge: str = "example") -> None:
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be mean or sum, got {reduce!r}")
        if loss not in AUX_LOSSES:
            raise ValueError(f"aux loss must be one of {', '.join(AUX_LOSSES)}, got {loss!r}")
        if hinge not in HINGES or (hinge != "example" and loss != "margin"):
            raise ValueError(f"hinge must be one of {', '.join(HINGES)} (batch: for the margin loss only), got "
                             f"{hinge!r} with loss {loss!r}")
        if (loss == "kl") != (reference is not None):
            raise ValueError("the aux KL term needs the heads' reference logits, and only it takes them")
        self.weight, self.loss, self.reduce, self.kappa, self.toward = float(weight), loss, reduce, float(kappa), toward
        self.hinge = hinge
        self.reference = None if reference is None else [F.softmax(r.detach().float(), 1) for r in reference]

    def per_head(self, a: torch.Tensor, y: torch.Tensor, i: int = 0) -> torch.Tensor:
        a = a.float()
        if self.reference is not None:
            return F.kl_div(F.log_softmax(a, 1), self.reference[i], reduction="none").sum(1)
        if self.toward is not None:
            return -F.cross_entropy(a, self.toward, reduction="none")
        if self.loss == "margin":
            return margin_loss(a, y, self.kappa, self.hinge)
        if self.loss == "top2-switch":
            return _top2_switch(a, y)
        return F.cross_entropy(a, y, reduction="none")

    def __call__(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        heads = aux_logits(model)
        if not heads or self.weight == 0:
            return torch.zeros(y.shape[0], device=y.device)
        values = torch.stack([self.per_head(a, y, i) for i, a in enumerate(heads)])
        return self.weight * (values.mean(0) if self.reduce == "mean" else values.sum(0))

    def __repr__(self) -> str:
        loss = "CE toward k" if self.toward is not None else {
            "ce": "CE", "margin": f"CW margin(kappa {self.kappa:g}"
                                  f"{', batch hinge' if self.hinge == 'batch' else ''})", "top2-switch": "top2-switch",
            "kl": "KL from the natural"}[self.loss]
        return f"{self.weight:g}*{self.reduce} {loss}(aux)"
