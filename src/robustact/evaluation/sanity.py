"""Red flags of an unreliable robustness evaluation (Athalye et al. 2018; Carlini et al. 2019; Croce et al.).

Each check returns a `SanityFlag`: whether it fired, the number behind it, and what it suggests. A fired
flag does not prove a defense broken, it says the reported robust accuracy is not trustworthy yet:
  (a) zero or non-finite input gradients on a share of inputs — gradient masking (shattered gradients);
  (b) two eval-mode forward passes disagree — a randomised model (needs EOT);
  (c) gradient-free Square fools points every gradient attack missed — masked or misleading gradients;
  (d) accuracy not near zero at a large ε — the attack is not working at all;
  (e) more steps or restarts raise accuracy — the optimisation is misled;
  (f) one-step FGSM beats multi-step PGD — iterating makes things worse, typical of masking.
(c), (e) and (f) compare attacks; they take per-example results (attack name -> bool tensor, True =
correct under that attack). Those must come from attacks run independently on the same points (not a
cascade, where a later attack only sees what the earlier ones missed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from robustact.attacks.base import attack_mode
from robustact.attacks.fgsm import FGSM
from robustact.attacks.losses import other_max
from robustact.attacks.pgd import PGD
from robustact.attacks.predict import robust_under
from robustact.evaluation.stats import mcnemar_p

Results = Mapping[str, torch.Tensor]

_GRADIENT_PREFIXES = ("pgd", "apgd", "fgsm", "cw", "fab", "bpda", "eot")
_PGD_NAME = re.compile(r"^(pgd|cw)[-_]?(\d+)?(?:x(\d+))?$")


@dataclass
class SanityFlag:
    """One check: `fired` says whether the red flag is up, `value` is the statistic, `message` the reading."""

    name: str
    fired: bool
    value: float
    message: str

    def __str__(self) -> str:
        return f"[{'FIRED' if self.fired else 'ok'}] {self.name}: {self.message}"

    def to_dict(self) -> dict:
        return {"name": self.name, "fired": self.fired, "value": self.value, "message": self.message}


def _batches(n: int, batch_size: int):
    return ((i, min(i + batch_size, n)) for i in range(0, n, batch_size))


def _flag(name: str, fired: bool, value: float, alarm: str, fine: str) -> SanityFlag:
    return SanityFlag(name, bool(fired), float(value), alarm if fired else fine)


def _gap(weaker: torch.Tensor, stronger: torch.Tensor) -> tuple[float, float, int, float, float]:
    """(accuracy under the weaker attack, under the stronger, examples only the weaker fooled, the gap, the exact
    McNemar p of the paired difference). A flag needs both a gap above its tolerance and p < ALPHA: on the 200
    images the checks use, a handful of discordant examples is noise, not masking."""
    a_weak, a_strong = weaker.float().mean().item(), stronger.float().mean().item()
    w, st = weaker.bool().cpu(), stronger.bool().cpu()
    only_weak, only_strong = int((~w & st).sum()), int((w & ~st).sum())
    return a_weak, a_strong, only_weak, a_strong - a_weak, mcnemar_p(only_weak, only_strong)


ALPHA = 0.05


# -- (a) -------------------------------------------------------------------------------------------
def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, threshold: float = 0.01,
                    batch_size: int = 256) -> SanityFlag:
    """(a) Share of inputs whose input gradient of the logit margin is all zero or has NaN/inf.

    The margin `z_y - max_{j≠y} z_j` is used rather than CE: CE's gradient underflows to zero on very
    confident points of a perfectly normal network, the margin's does not.
    """
    bad = 0
    with attack_mode(model, "eval"), torch.enable_grad():
        for i, j in _batches(len(y), batch_size):
            xb = x[i:j].detach().clone().requires_grad_(True)
            logits = model(xb)
            margin = logits.gather(1, y[i:j, None]).squeeze(1) - other_max(logits, y[i:j])
            (g,) = torch.autograd.grad(margin.sum(), xb, allow_unused=True)
            if g is None:  # the output does not depend on x through autograd at all
                bad += j - i
                continue
            g = g.flatten(1)
            bad += int(((g == 0).all(1) | ~torch.isfinite(g).all(1) | ~torch.isfinite(logits).all(1)).sum())
    share = bad / max(len(y), 1)
    return _flag("zero_or_nan_gradients", share > threshold, share,
                 f"{share:.1%} of inputs have zero or non-finite input gradients: gradient masking (a "
                 "non-differentiable or saturating layer). Gradient attacks cannot move these points; use "
                 "BPDA / a differentiable surrogate and trust gradient-free attacks (Square) over PGD here.",
                 f"input gradients are non-zero and finite ({share:.1%} bad, threshold {threshold:.1%})")


# -- (b) -------------------------------------------------------------------------------------------
def check_randomness(model: nn.Module, x: torch.Tensor, *, n_calls: int = 2, tol: float = 1e-4,
                     batch_size: int = 256) -> SanityFlag:
    """(b) Whether repeated eval-mode forward passes give different logits (normalised L2 difference)."""
    worst, changed = 0.0, 0
    with attack_mode(model, "eval"), torch.no_grad():
        for i, j in _batches(len(x), batch_size):
            outs = [model(x[i:j]).float() for _ in range(max(n_calls, 2))]
            unit = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
            for o, u in zip(outs[1:], unit[1:]):
                worst = max(worst, float((u - unit[0]).norm(dim=1).max()))
                changed += int((o.argmax(1) != outs[0].argmax(1)).sum())
    return _flag("randomized_forward", worst > tol or changed > 0, worst,
                 f"eval-mode forward passes disagree (max normalised logit difference {worst:.3g}, "
                 f"{changed} predictions changed): the model is randomised. Attack it with EOT — AutoAttack's "
                 "rand version, `--attacks aa-rand` (APGD-CE and APGD-DLR, gradients averaged over 20 passes) — "
                 "and report accuracy over several draws; single-draw gradients are noise.",
                 f"the forward pass is deterministic in eval mode (max difference {worst:.2g})")


# -- (c) -------------------------------------------------------------------------------------------
def _is_gradient_attack(name: str) -> bool:
    return name.lower().startswith(_GRADIENT_PREFIXES)


def check_square(results: Results, *, square: str | None = None, gradient: list[str] | None = None,
                 tol: float = 0.002) -> SanityFlag:
    """(c) Share of all examples that Square fooled but every gradient attack missed (the official
    AutoAttack check uses the same 0.2% tolerance)."""
    square = square or next((k for k in results if "square" in k.lower()), None)
    gradient = gradient if gradient is not None else [k for k in results if _is_gradient_attack(k)]
    if square is None or square not in results or not gradient:
        return SanityFlag("square_beats_gradient", False, 0.0,
                          "skipped: needs per-example results of Square and of at least one gradient attack")
    grad_robust = torch.stack([results[k].bool().cpu() for k in gradient]).all(0)
    extra = grad_robust & ~results[square].bool().cpu()
    n = max(grad_robust.numel(), 1)
    share = int(extra.sum()) / n
    return _flag("square_beats_gradient", share > tol, share,
                 f"Square (gradient-free) fooled {int(extra.sum())} examples ({share:.1%}) that every gradient "
                 f"attack ({', '.join(gradient)}) missed: the gradients are masked or misleading, so the gradient "
                 "attacks overstate robustness. Use an adaptive attack (BPDA, surrogate, aux-aware loss).",
                 f"Square found {int(extra.sum())} examples the gradient attacks missed ({share:.1%} <= {tol:.1%})")


# -- (d) -------------------------------------------------------------------------------------------
def check_large_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 64 / 255,
                    norm: str = "Linf", steps: int = 50, threshold: float = 0.05, seed: int = 0,
                    batch_size: int = 256) -> SanityFlag:
    """(d) Accuracy under PGD (margin loss, `steps` steps) at a large ε, where nothing should survive."""
    acc = robust_under(model, PGD(eps, norm, steps=steps, loss="margin", seed=seed), x, y, batch_size)
    value = acc.float().mean().item()
    return _flag("large_eps_accuracy", value > threshold, value,
                 f"accuracy under PGD-{steps} at ε={eps:.4g} is {value:.1%} (expected ~0): the attack does not "
                 "work at all — masked gradients, a randomised or non-differentiable model, or a bug in the "
                 "attack pipeline (inputs not in [0, 1], normalisation applied twice).",
                 f"accuracy at ε={eps:.4g} drops to {value:.1%}")


# -- (e) -------------------------------------------------------------------------------------------
def _pgd_budget(name: str) -> tuple[str, int] | None:
    """(loss kind, steps x restarts) of a PGD/CW result named as the attack registry does (`pgd20`,
    `pgd100x5`, `cw30`); None for other attacks."""
    m = _PGD_NAME.match(name.lower())
    if not m:
        return None
    steps = int(m.group(2)) if m.group(2) else (30 if m.group(1) == "cw" else 20)
    return m.group(1), steps * int(m.group(3) or 1)


def _iterative_ce(name: str) -> bool:
    """A multi-step attack on the cross-entropy, as the registry names them (`pgd20`, `pgd100x5`, `apgd-ce`)."""
    kind = _pgd_budget(name)
    return (kind is not None and kind[0] == "pgd") or name.lower() in ("apgd", "apgd-ce")


def compare_more_steps(fewer: torch.Tensor, more: torch.Tensor, *, tol: float = 0.01,
                       fewer_name: str = "fewer steps", more_name: str = "more steps") -> SanityFlag:
    """(e) From per-example results: does the bigger attack budget leave *more* examples correct?"""
    a_few, a_more, only_few, gap, p = _gap(fewer, more)
    return _flag("more_steps_raise_accuracy", gap > tol and p < ALPHA, gap,
                 f"{more_name} leaves accuracy at {a_more:.1%}, higher than {fewer_name} ({a_few:.1%}; "
                 f"{only_few} examples fooled only by the weaker attack, McNemar p={p:.2g}): more steps or "
                 "restarts must never help the model — the loss landscape misleads the attack (masking) or the "
                 "model is randomised.",
                 f"{more_name} ({a_more:.1%}) is at least as strong as {fewer_name} ({a_few:.1%})" if gap <= tol
                 else f"{more_name} ({a_more:.1%}) is above {fewer_name} ({a_few:.1%}) only within noise "
                      f"({only_few} examples fooled only by the weaker attack, McNemar p={p:.2g})")


def check_more_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
                     norm: str = "Linf", steps: tuple[int, int] = (10, 50), restarts: tuple[int, int] = (1, 2),
                     tol: float = 0.01, seed: int = 0, batch_size: int = 256) -> SanityFlag:
    """(e) Runs PGD-steps[0] (restarts[0]) and PGD-steps[1] (restarts[1]) and compares them."""
    few = robust_under(model, PGD(eps, norm, steps=steps[0], restarts=restarts[0], seed=seed), x, y, batch_size)
    more = robust_under(model, PGD(eps, norm, steps=steps[1], restarts=restarts[1], seed=seed), x, y, batch_size)
    return compare_more_steps(few, more, tol=tol, fewer_name=f"PGD-{steps[0]}x{restarts[0]}",
                              more_name=f"PGD-{steps[1]}x{restarts[1]}")


# -- (f) -------------------------------------------------------------------------------------------
def compare_fgsm_pgd(fgsm: torch.Tensor, pgd: torch.Tensor, *, tol: float = 0.01,
                     pgd_name: str = "PGD") -> SanityFlag:
    """(f) From per-example results: does one-step FGSM leave fewer examples correct than multi-step PGD?"""
    a_f, a_p, only_fgsm, gap, p = _gap(fgsm, pgd)
    return _flag("fgsm_beats_pgd", gap > tol and p < ALPHA, gap,
                 f"one-step FGSM ({a_f:.1%}) beats {pgd_name} ({a_p:.1%}); {only_fgsm} examples fall to FGSM "
                 f"only (McNemar p={p:.2g}): iterating makes the attack weaker, the hallmark of gradient masking "
                 "(the first, large step escapes a local trap that small steps cannot).",
                 f"{pgd_name} ({a_p:.1%}) is at least as strong as FGSM ({a_f:.1%}; {only_fgsm} FGSM-only examples)"
                 if gap <= tol else f"FGSM ({a_f:.1%}) is below {pgd_name} ({a_p:.1%}) only within noise "
                                    f"({only_fgsm} FGSM-only examples, McNemar p={p:.2g})")


def check_fgsm_vs_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
                      norm: str = "Linf", steps: int = 50, tol: float = 0.01, seed: int = 0,
                      batch_size: int = 256) -> SanityFlag:
    """(f) Runs FGSM and PGD-`steps` and compares them."""
    f = robust_under(model, FGSM(eps, norm, seed=seed), x, y, batch_size)
    p = robust_under(model, PGD(eps, norm, steps=steps, seed=seed), x, y, batch_size)
    return compare_fgsm_pgd(f, p, tol=tol, pgd_name=f"PGD-{steps}")


# -- all of them -----------------------------------------------------------------------------------
def run_sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, results: Results | None = None, *,
                      eps: float = 8 / 255, norm: str = "Linf", large_eps: float = 64 / 255,
                      steps: tuple[int, int] = (10, 50), restarts: tuple[int, int] = (1, 2),
                      seed: int = 0, batch_size: int = 256) -> list[SanityFlag]:
    """All checks. (a), (b), (d) always run (cheap). (c), (e), (f) use `results` (per-example, independent
    runs) where they hold the attacks needed — Square and gradient attacks; two PGD/CW budgets
    (`pgd20`, `pgd100x5`); `fgsm` and a PGD — and otherwise (e), (f) run PGD/FGSM themselves."""
    results = dict(results or {})
    flags = [check_gradients(model, x, y, batch_size=batch_size), check_randomness(model, x, batch_size=batch_size),
             check_square(results) if results else SanityFlag(
                 "square_beats_gradient", False, 0.0, "skipped: no per-example results of Square given"),
             check_large_eps(model, x, y, eps=large_eps, norm=norm, steps=steps[1], seed=seed,
                             batch_size=batch_size)]

    # the same loss with two budgets (pgd20 vs pgd100x5, or cw30 vs cw100)
    budgets: dict[str, list[tuple[int, str]]] = {}
    for k in results:
        if (kb := _pgd_budget(k)) is not None:
            budgets.setdefault(kb[0], []).append((kb[1], k))
    pair = next((sorted(v) for v in budgets.values() if len({b for b, _ in v}) >= 2), None)
    if pair is not None:
        (_, k_few), (_, k_more) = pair[0], pair[-1]
        few_r, more_r = results[k_few], results[k_more]
        flags.append(compare_more_steps(few_r, more_r, fewer_name=k_few, more_name=k_more))
    else:
        k_few, k_more = f"pgd{steps[0]}x{restarts[0]}", f"pgd{steps[1]}x{restarts[1]}"
        few_r = robust_under(model, PGD(eps, norm, steps=steps[0], restarts=restarts[0], seed=seed), x, y, batch_size)
        more_r = robust_under(model, PGD(eps, norm, steps=steps[1], restarts=restarts[1], seed=seed), x, y,
                              batch_size)
        flags.append(compare_more_steps(few_r, more_r, fewer_name=k_few, more_name=k_more))

    # (f) FGSM against the weakest multi-step attack on the *same objective*: the report's own FGSM and its
    # cross-entropy PGD/APGD-CE (one suite, one objective, e.g. a paper's joint loss), else both run here on the
    # plain cross-entropy. FGSM beating a CW margin or a targeted attack, or a joint-loss FGSM beating a plain PGD,
    # only says the objectives differ.
    fgsm_key = next((k for k in results if k.lower().startswith("fgsm")), None)
    multi = {k: r for k, r in results.items() if _iterative_ce(k)}
    if fgsm_key and multi:
        fgsm_r = results[fgsm_key]
    else:
        fgsm_r = robust_under(model, FGSM(eps, norm, seed=seed), x, y, batch_size)
        multi = {k: r for k, r in {k_few: few_r, k_more: more_r}.items() if pair is None} or {
            f"pgd{steps[0]}": robust_under(model, PGD(eps, norm, steps=steps[0], seed=seed), x, y, batch_size)}
    weakest = max(multi, key=lambda k: multi[k].float().mean().item())
    flags.append(compare_fgsm_pgd(fgsm_r, multi[weakest], pgd_name=weakest))
    return flags
