"""Base class of defense sites and the context API over them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

MASK_MODES = ("label", "pred", "soft")


class DefenseSite(nn.Module):
    """A module that transforms an activation `z` and may expose auxiliary logits.

    Subclasses implement `forward(z)`; they read `self.labels` when `self.mask_mode == "label"` and store
    their auxiliary logits of the current forward in `self.last_aux` (or leave it None). `compilable = False`
    marks a site torch.compile cannot compile (the trainer refuses `training.compile` for it).
    """

    compilable = True

    def __init__(self) -> None:
        super().__init__()
        self.mask_mode: str = "pred"
        self.labels: torch.Tensor | None = None
        self.last_aux: torch.Tensor | None = None

    def set_mask_mode(self, mode: str) -> None:
        if mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mode!r}")
        self.mask_mode = mode

    def mask_class(self, aux: torch.Tensor) -> torch.Tensor:
        """The class whose mask to use: the label under `conditioned`, else the aux head's prediction."""
        if self.mask_mode == "label":
            if self.labels is None:
                raise RuntimeError("mask_mode='label' needs labels: use `with conditioned(model, y):`")
            if self.labels.shape[0] != aux.shape[0]:
                raise RuntimeError(
                    f"conditioned labels have batch size {self.labels.shape[0]}, the input {aux.shape[0]}"
                )
            return self.labels
        return aux.argmax(dim=1)


def sites(model: nn.Module) -> list[DefenseSite]:
    """The defense sites of `model`, in module (= forward) order."""
    return [m for m in model.modules() if isinstance(m, DefenseSite)]


def aux_logits(model: nn.Module) -> list[torch.Tensor]:
    """The auxiliary logits of the last forward, in site order (sites without aux heads are skipped)."""
    return [s.last_aux for s in sites(model) if s.last_aux is not None]


@contextmanager
def mask_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Set every site's mask mode for the duration of the block, then restore each one."""
    found = sites(model)
    previous = [s.mask_mode for s in found]
    try:
        for s in found:
            s.set_mask_mode(mode)
        yield
    finally:
        for s, m in zip(found, previous):
            s.mask_mode = m


@contextmanager
def conditioned(model: nn.Module, y: torch.Tensor) -> Iterator[None]:
    """Label-conditioned masks (the training forward): every site uses the mask of class `y`."""
    found = sites(model)
    previous = [(s.mask_mode, s.labels) for s in found]
    try:
        for s in found:
            s.mask_mode = "label"
            s.labels = y
        yield
    finally:
        for s, (m, lab) in zip(found, previous):
            s.mask_mode, s.labels = m, lab
