"""Per-example attack losses on logits. Attacks ascend them (descend when targeted)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HINGES = ("example", "batch")  # where the CW margin's hinge acts: on each example, or on the batch's sum


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def other_max(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The largest logit among the classes other than y."""
    return logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0, hinge: str = "example") -> torch.Tensor:
    """Carlini-Wagner margin on logits, `m_i = z_y - max_{j!=y} z_j + kappa`.

    hinge="example" (the CW loss): `-max(m_i, 0)`, 0 once an example's margin is below -kappa.
    hinge="batch" (the official CAS evaluation, `pgd_attack_cifar10_cas.py`): the hinge acts on the batch's sum,
    `-max(sum_i m_i, 0)`; returned as per-example shares `-m_i·[sum_j m_j > 0]` whose sum is that loss and whose
    gradient is its gradient, so once the summed margin is <= 0 no example of the batch moves. The result then
    depends on which examples share a batch.
    """
    if hinge not in HINGES:
        raise ValueError(f"hinge must be one of {', '.join(HINGES)}, got {hinge!r}")
    logits = logits.float()
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    margin = z_y - other_max(logits, y) + kappa
    if hinge == "batch":
        return -margin * (margin.sum() > 0).to(margin.dtype)
    return -margin.clamp(min=0)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020), untargeted; invariant to shift and scale of logits."""
    logits = logits.float()
    srt = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return -(z_y - other_max(logits, y)) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020), ascended toward `target`: -(z_y - z_t) / (z_π1 - (z_π3 + z_π4)/2).

    The denominator skips z_π2 because the target itself is usually the runner-up; needs >= 4 classes.
    """
    logits = logits.float()
    srt = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


def zero_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """No main term: the attack ascends only its extra (e.g. aux-head) loss."""
    return torch.zeros(y.shape[0], device=y.device)


def resolve_loss(loss: str | LossFn, kappa: float = 0.0, hinge: str = "example") -> LossFn:
    """A loss by name (`ce`, `margin`/`cw`, `dlr`, `zero`) or a callable `(logits, y) -> (N,)`; `hinge` is the
    margin's (`margin_loss`), and only the margin takes a batch hinge."""
    if hinge not in HINGES:
        raise ValueError(f"hinge must be one of {', '.join(HINGES)}, got {hinge!r}")
    if hinge != "example" and loss not in ("margin", "cw"):
        raise ValueError(f"hinge={hinge!r} applies to the margin (cw) loss only, not {loss_label(loss)!r}")
    if callable(loss):
        return loss
    if loss == "ce":
        return ce_loss
    if loss in ("margin", "cw"):
        return lambda logits, y: margin_loss(logits, y, kappa, hinge)
    if loss == "dlr":
        return dlr_loss
    if loss == "zero":
        return zero_loss
    raise ValueError(f"unknown attack loss {loss!r}; known: ce, margin (cw), dlr, zero, or a callable")


def loss_label(loss: str | LossFn) -> str:
    """How a report names a loss: its name, a function's `__name__`, or an object's repr."""
    if isinstance(loss, str):
        return loss
    if loss is zero_loss:
        return "zero"
    if type(loss).__repr__ is not object.__repr__:
        return repr(loss)
    return getattr(loss, "__name__", "custom")
