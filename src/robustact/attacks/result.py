"""The one result type of an evaluation, whether the engine ran a suite or AutoAttack ran its ensemble."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EvalResult:
    """Per-example outcomes: `clean[i]` example i is classified correctly; `robust[name][i]` it still is after
    attack `name`. Attacks listed in `cascaded` ran only on the examples robust to every attack before them, so
    their figures are cumulative; the others ran on every clean-correct example. `worst` is correct under every
    attack. `x_adv` (AutoAttack) holds, per example, the first point that fooled the model, else the input."""

    n: int
    eps: float
    clean: torch.Tensor
    robust: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    attacks: dict[str, str] = field(default_factory=dict)  # name -> the attack's repr (all its settings)
    seed: int = 0
    sanity: list[dict] = field(default_factory=list)  # flags of robustact.evaluation.sanity, as dicts
    cascaded: list[str] = field(default_factory=list)
    x_adv: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)  # what was evaluated (checkpoint, images, device), set by run_eval
    norm: str = "Linf"

    def threat_model(self) -> str:
        """ε as people write it: `8/255` for L∞ (pixel units), `L2 0.5`."""
        return f"{self.eps * 255:.4g}/255" if self.norm == "Linf" else f"{self.norm} {self.eps:.4g}"

    @property
    def worst(self) -> torch.Tensor:
        out = self.clean.clone()
        for r in self.robust.values():
            out &= r
        return out

    def accuracy(self) -> dict[str, float]:
        if not self.clean.numel():
            return {"clean": 0.0} | {name: 0.0 for name in self.robust} | ({"worst_case": 0.0} if self.robust else {})
        acc = {"clean": self.clean.float().mean().item()}
        acc |= {name: r.float().mean().item() for name, r in self.robust.items()}
        if self.robust:
            acc["worst_case"] = self.worst.float().mean().item()
        return acc

    def new_successes(self) -> dict[str, torch.Tensor]:
        """Examples each attack fooled that every earlier attack had missed."""
        out, alive = {}, self.clean.clone()
        for name, r in self.robust.items():
            out[name] = alive & ~r
            alive &= r
        return out

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "eps": self.eps,
            **({"norm": self.norm} if self.norm != "Linf" else {}),
            "seed": self.seed,
            "accuracy": self.accuracy(),
            "attacks": self.attacks,
            "seconds": self.seconds,
            "sanity": self.sanity,
            "cascaded": self.cascaded,
            "per_example": {"clean": self.clean.int().tolist(), "worst_case": self.worst.int().tolist()}
            | {name: r.int().tolist() for name, r in self.robust.items()},
        }
