"""Run attacks over a test set in batches and keep per-example results: clean correctness, robustness per
attack, and the worst case per example (an example counts as robust only if every attack failed on it)."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks.base import Attack
from robustact.evaluation.journal import EvalJournal


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
    cascaded: list[str] = field(default_factory=list)  # attacks run only on the examples robust so far

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
            "cascaded": self.cascaded,
            "per_example": {"clean": self.clean.int().tolist(), "worst_case": self.worst.int().tolist()}
            | {name: r.int().tolist() for name, r in self.robust.items()},
        }


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], *,
             eps: float, batch_size: int = 250, progress: bool = True, seed: int = 0,
             only_robust: bool | Collection[str] = False, journal: EvalJournal | None = None) -> EvalResult:
    """Clean accuracy, then each attack on every clean-correct example, so each attack's accuracy stands on
    its own (as papers report them). `only_robust=True` cascades like AutoAttack: each attack only on the
    examples still robust — the worst case is the same, it is faster, but per-attack figures become cumulative.
    A collection of names cascades only those attacks (e.g. the expensive ones, run last); their figures are
    then "robust to this and to everything before it", and `result.cascaded` lists them.
    With a `journal` the batches it already holds are skipped and every finished batch is recorded in it, so an
    interrupted evaluation resumes (see robustact.evaluation.journal)."""
    clean = predict(model, x, batch_size) == y
    result = EvalResult(n=len(y), eps=eps, clean=clean.cpu(), seed=seed,
                        attacks={name: repr(a) for name, a in attacks.items()})
    cascaded = set(attacks) if only_robust is True else set(only_robust or ())
    unknown = cascaded - set(attacks)
    if unknown:
        raise ValueError(f"cascade names {sorted(unknown)} are not attacks of this evaluation ({list(attacks)})")
    result.cascaded = [name for name in attacks if name in cascaded]
    if journal is not None:
        journal.check_clean(result.clean)
    worst = clean.clone()
    try:
        for name, attack in attacks.items():
            pool = worst if name in cascaded else clean
            robust, seconds = _run_attack(model, x, y, attack, name, pool, batch_size, progress, journal)
            result.seconds[name] = seconds
            result.robust[name] = robust.cpu()
            worst &= robust
    finally:
        if journal is not None:
            journal.flush()
    return result


def _run_attack(model, x, y, attack, name, pool, batch_size, progress, journal):
    """One attack on the examples of `pool`, batch by batch, resuming from and recording to the journal."""
    idx = pool.nonzero().flatten()
    starts = range(0, len(idx), batch_size)
    done, saved, seconds = journal.progress(name) if journal is not None else (0, None, 0.0)
    robust = pool.clone() if saved is None else saved.to(pool.device)
    t0 = time.perf_counter()
    for k, i in enumerate(tqdm(starts, desc=name, disable=not progress, leave=False)):
        if k < done:
            continue
        b = idx[i:i + batch_size]
        x_adv = attack(model, x[b], y[b])
        robust[b] = predict(model, x_adv, batch_size) == y[b]
        if journal is not None:  # kept by reference; copied to the host only when the journal writes
            journal.record(name, k + 1, len(starts), robust, seconds + time.perf_counter() - t0)
    _sync(x.device)
    seconds += time.perf_counter() - t0
    if journal is not None:
        journal.record(name, len(starts), len(starts), robust, seconds)
        journal.flush()  # an attack's end is always on disk, with its synced time
    return robust, seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
