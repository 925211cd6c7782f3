"""The official AutoAttack (Croce & Hein 2020, `pip install pyautoattack`) behind robustact's attack interface,
so that an evaluation can run it beside robustact's own AutoAttack on the same examples and report both, per
example (`robustact eval --official`): for anyone who must cite the official number.

`pyautoattack` is an optional dependency; it is imported when the attack first runs, and its absence is one line.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack
from robustact.errors import RobustactError

VERSIONS = ("standard", "plus", "rand")


def _official_autoattack():
    try:
        import pyautoattack
    except ImportError:
        raise RobustactError("the official AutoAttack is not installed: pip install pyautoattack (or "
                             "pip install 'robustact[official]')") from None
    return pyautoattack.AutoAttack


class OfficialAutoAttack(Attack):
    """`OfficialAutoAttack(eps, norm, version=...)(model, x, y) -> x_adv`, by the official implementation with
    its own settings for `version`; its log is silenced. `batch_size` is the official code's."""

    name = "autoattack-official"

    def __init__(self, eps: float, norm: str = "Linf", *, version: str = "standard", seed: int | None = 0,
                 batch_size: int = 500, model_mode: str = "eval") -> None:
        super().__init__(eps, norm, seed=seed, model_mode=model_mode)
        if version not in VERSIONS:
            raise RobustactError(f"unknown AutoAttack version {version!r}; known: {', '.join(VERSIONS)}")
        self.version = version
        self.batch_size = int(batch_size)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        official = _official_autoattack()
        log = logging.getLogger("auto-attack")
        level, propagate = log.level, log.propagate
        log.setLevel(logging.WARNING)
        log.propagate = False
        try:
            aa = official(model, eps=self.eps, norm=self.norm, version=self.version,
                          seed=0 if self.seed is None else int(self.seed), device=x.device)
            aa.verbose = False
            out = aa.run_standard_evaluation(x, y, batch_size=self.batch_size)
        finally:
            log.setLevel(level)
            log.propagate = propagate
        x_adv = out[0] if isinstance(out, tuple) else out
        return x_adv.to(x.dtype)

    def settings(self) -> dict[str, Any]:
        return {"eps": self.eps, "norm": self.norm, "version": self.version,
                "implementation": "pyautoattack (official)"}
