"""Run attacks over a test set in batches and keep per-example results: clean correctness, robustness per
attack, and the worst case per example (an example counts as robust only if every attack failed on it)."""

from __future__ import annotations

import time
from collections.abc import Collection

import torch
from torch import nn
from tqdm.auto import tqdm

from robustact import distributed
from robustact.attacks.base import Attack, check_labels
from robustact.attacks.predict import predict
from robustact.attacks.result import EvalResult
from robustact.errors import RobustactError
from robustact.evaluation.journal import EvalJournal
from robustact.utils import autocast_context, show_progress

_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Attack], *,
             eps: float, batch_size: int = 250, progress: bool = True, seed: int = 0,
             only_robust: bool | Collection[str] = False, journal: EvalJournal | None = None,
             amp: str = "none", norm: str = "Linf") -> EvalResult:
    """Clean accuracy, then each attack on every clean-correct example, so each attack's accuracy stands on
    its own (as papers report them). `only_robust=True` cascades like AutoAttack: each attack only on the
    examples still robust — the worst case is the same, it is faster, but per-attack figures become cumulative.
    A collection of names cascades only those attacks (e.g. the expensive ones, run last); their figures are
    then "robust to this and to everything before it", and `result.cascaded` lists them.
    With a `journal` the batches it already holds are skipped and every finished batch is recorded in it, so an
    interrupted evaluation resumes (see robustact.evaluation.journal). `amp="bf16"` runs the model under autocast
    (its agreement with fp32 is measured in docs/benchmarks.md). A batch that runs out of device memory is
    attacked in halves (noted in `result.meta["oom_splits"]`: seeded draws then differ from a whole batch's)."""
    y = check_labels(x, y)
    if batch_size < 1:
        raise RobustactError(f"batch_size must be >= 1, got {batch_size}")
    with autocast_context(amp, x.device):
        clean = predict(model, x, batch_size, labels=y) == y
    result = EvalResult(n=len(y), eps=eps, norm=norm, clean=clean.cpu(), seed=seed,
                        attacks={name: repr(a) for name, a in attacks.items()})
    cascaded = set(attacks) if only_robust is True else set(only_robust or ())
    unknown = cascaded - set(attacks)
    if unknown:
        raise ValueError(f"cascade names {sorted(unknown)} are not attacks of this evaluation ({list(attacks)})")
    result.cascaded = [name for name in attacks if name in cascaded]
    if journal is not None:  # rank 0's, in a job
        journal.check_clean(result.clean)
    worst = clean.clone()
    try:
        for name, attack in attacks.items():
            pool = worst if name in cascaded else clean
            with autocast_context(amp, x.device):
                robust, seconds = _run_attack(model, x, y, attack, name, pool, batch_size, progress, journal,
                                              result.meta)
            result.seconds[name] = seconds
            result.robust[name] = robust.cpu()
            worst &= robust
    finally:
        if journal is not None:
            journal.flush()
    return result


def _outcome(model, attack, x: torch.Tensor, y: torch.Tensor, batch_size: int, meta: dict) -> torch.Tensor:
    """Still correct after the attack? On out-of-memory the batch is attacked in halves (and that is noted)."""
    try:
        return predict(model, attack(model, x, y), batch_size) == y
    except _OUT_OF_MEMORY:
        if len(y) == 1:
            raise
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        meta["oom_splits"] = meta.get("oom_splits", 0) + 1
        half = len(y) // 2
        return torch.cat([_outcome(model, attack, x[:half], y[:half], batch_size, meta),
                          _outcome(model, attack, x[half:], y[half:], batch_size, meta)])


def _run_attack(model, x, y, attack, name, pool, batch_size, progress, journal, meta):
    """One attack on the examples of `pool`, batch by batch, resuming from and recording to the journal.

    In a multi-process job (torchrun) the batches are dealt out in rounds, batch k of a round to rank k, and
    every round's outcomes are combined on all ranks: each batch is attacked exactly as one process would
    attack it (same examples, same seeded draws), so the per-example result does not depend on the number of
    processes. Only rank 0 holds the journal; the others learn from it where to start."""
    job = distributed.current()
    idx = pool.nonzero().flatten()
    starts = range(0, len(idx), batch_size)
    done, saved, seconds = distributed.broadcast_object(
        journal.progress(name) if journal is not None else (0, None, 0.0))
    robust = pool.clone() if saved is None else saved.to(pool.device)
    t0 = time.perf_counter()
    bar = tqdm(total=len(starts), initial=done, desc=name, disable=not (show_progress(progress) and job.main),
               leave=False)
    for first in range(done, len(starts), job.world):
        outcome = torch.full_like(robust, -1, dtype=torch.int8)  # -1: not attacked in this round
        k = first + job.rank
        if k < len(starts):
            b = idx[starts[k]:starts[k] + batch_size]
            outcome[b] = _outcome(model, attack, x[b], y[b], batch_size, meta).to(torch.int8)
        outcome = distributed.all_reduce_max(outcome)
        robust = torch.where(outcome >= 0, outcome.bool(), robust)
        completed = min(first + job.world, len(starts))
        bar.update(completed - first)
        if journal is not None:  # kept by reference; copied to the host only when the journal writes
            journal.record(name, completed, len(starts), robust, seconds + time.perf_counter() - t0)
    bar.close()
    _sync(x.device)
    seconds += time.perf_counter() - t0
    if journal is not None:
        journal.record(name, len(starts), len(starts), robust, seconds)
        journal.flush()  # an attack's end is always on disk, with its synced time
    return robust, seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
