"""Run attacks over a test set in batches and keep per-example results: clean correctness, robustness per
attack, and the worst case per example (an example counts as robust only if every attack failed on it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks.base import Attack


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes in eval mode (restoring the model's mode)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def accuracy_under(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack,
                   batch_size: int = 500) -> tuple[float, float]:
    """(clean accuracy, robust accuracy) with the attack run on the clean-correct points only."""
    correct = predict(model, x, batch_size) == y
    robust = correct.clone()
    idx = correct.nonzero().flatten()
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        x_adv = attack(model, x[b], y[b])
        robust[b] = predict(model, x_adv, batch_size) == y[b]
    n = max(len(y), 1)
    return correct.sum().item() / n, robust.sum().item() / n


@dataclass
class EvalResult:
    """Per-example outcomes of an evaluation; `robust[name][i]` is True if example i survived attack `name`."""

    n: int
    eps: float
    clean: torch.Tensor
    robust: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    attacks: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    sanity: list[dict] = field(default_factory=list)  # flags of robustact.evaluation.sanity, as dicts

    @property
    def worst(self) -> torch.Tensor:
        out = self.clean.clone()
        for r in self.robust.values():
            out &= r
        return out

    def accuracy(self) -> dict[str, float]:
        acc = {"clean": self.clean.float().mean().item()}
        acc |= {name: r.float().mean().item() for name, r in self.robust.items()}
        if self.robust:
            acc["worst_case"] = self.worst.float().mean().item()
        return acc

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "eps": self.eps,
            "seed": self.seed,
            "accuracy": self.accuracy(),
            "attacks": self.attacks,
            "seconds": self.seconds,
            "sanity": self.sanity,
            "per_example": {"clean": self.clean.int().tolist(), "worst_case": self.worst.int().tolist()}
            | {name: r.int().tolist() for name, r in self.robust.items()},
        }


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], *,
             eps: float, batch_size: int = 250, progress: bool = True, seed: int = 0,
             only_robust: bool = False) -> EvalResult:
    """Clean accuracy, then each attack on every clean-correct example, so each attack's accuracy stands on
    its own (as papers report them). `only_robust=True` cascades like AutoAttack: each attack only on the
    examples still robust — the worst case is the same, it is faster, but per-attack figures become cumulative."""
    clean = predict(model, x, batch_size) == y
    result = EvalResult(n=len(y), eps=eps, clean=clean.cpu(), seed=seed,
                        attacks={name: repr(a) for name, a in attacks.items()})
    worst = clean.clone()
    for name, attack in attacks.items():
        pool = worst if only_robust else clean
        idx = pool.nonzero().flatten()
        robust = pool.clone()
        start = time.perf_counter()
        for i in tqdm(range(0, len(idx), batch_size), desc=name, disable=not progress, leave=False):
            b = idx[i:i + batch_size]
            x_adv = attack(model, x[b], y[b])
            robust[b] = predict(model, x_adv, batch_size) == y[b]
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        result.seconds[name] = time.perf_counter() - start
        result.robust[name] = robust.cpu()
        worst &= robust
    return result
