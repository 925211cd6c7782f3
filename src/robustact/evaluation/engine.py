"""Run attacks over a test set in batches and keep per-example results: clean correctness, robustness per
attack, and the worst case per example (an example counts as robust only if every attack failed on it)."""

from __future__ import annotations

import time
from collections.abc import Collection

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact.attacks.base import Attack, check_labels
from robustact.attacks.predict import predict
from robustact.attacks.result import EvalResult
from robustact.errors import RobustactError
from robustact.evaluation.journal import EvalJournal
from robustact.utils import show_progress


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
    y = check_labels(x, y)
    if batch_size < 1:
        raise RobustactError(f"batch_size must be >= 1, got {batch_size}")
    clean = predict(model, x, batch_size, labels=y) == y
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
    for k, i in enumerate(tqdm(starts, desc=name, disable=not show_progress(progress), leave=False)):
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
