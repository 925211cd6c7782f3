"""EWAS evaluation protocols: `paper` (the official `white_box_robust_eval.py` / `attack_generator.py`) and
`adaptive`.

paper — eval mode (predicted masks), ε = 0.031, uniform random start; every loss adds λ = 0.01 × the same
loss on the aux head:
  fgsm : one step of ε
  pgd20: PGD-20, step ε/4, CE
  cw30 : "C&W" = PGD-30, step ε/4, on the CW margin with κ = 50 (final head + 0.01 × aux head)
adaptive — the shared linear-mask attacks (see `protocols/cas.py`) with aux weights ≥ 1, plus:
  twostage     : PGD-10 on the aux CE alone (flip the aux head, i.e. the mask), then PGD-20 on
                 CE_final + 1·CE_aux from there (same ε-ball)
  square       : Square alone (gradient-free; 5000 queries unless `square_queries` says otherwise)
  transfer     : PGD-20 crafted on an undefended surrogate (option `surrogate`, default
                 runs/pgd-at-small: the CPU-sized PGD-AT baseline), then applied to the EWAS model
Options: `robustact eval --suite-opt key=value` (`robustact.evaluation.protocols.cas.suite_options`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from robustact.attacks import FGSM, PGD
from robustact.attacks.adaptive import Described, StagedPGD, Transfer, aux_loss, aux_only_loss, joint_loss
from robustact.attacks.registry import make_attack
from robustact.evaluation.protocols.cas import adaptive_linear_mask, autoattack, paper_eps, suite_options
from robustact.evaluation.suites import read_options, register_suite

PAPER_LAMBDA = 0.01
ADAPTIVE_BETAS = (1.0, 10.0, 100.0)

@register_suite("paper", defense="ewas")
def ewas_paper(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    read_options(options, {}, "paper")
    e = paper_eps(eps)
    return {
        "fgsm": Described(FGSM(e, alpha=e, random_start=True, extra_loss=joint_loss(PAPER_LAMBDA), seed=seed),
                          f"random start + one step of {e:.5g}; CE_final + 0.01*CE_aux; predicted mask"),
        "pgd20": Described(
            PGD(e, steps=20, alpha=e / 4, random_start=True, extra_loss=joint_loss(PAPER_LAMBDA), seed=seed),
            f"PGD-20, eps={e:.5g}, step eps/4, random start; CE_final + 0.01*CE_aux; predicted mask"),
        "cw30": Described(
            PGD(e, steps=30, alpha=e / 4, random_start=True, loss="margin", kappa=50.0,
                extra_loss=aux_loss(PAPER_LAMBDA, "margin", kappa=50.0), seed=seed),
            f"PGD-30, eps={e:.5g}, step eps/4, random start; CW margin kappa 50, final + 0.01*aux"),
    }

@register_suite("adaptive", defense="ewas")
def ewas_adaptive(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    opts = suite_options(options)
    steps = int(opts["steps"])
    attacks = adaptive_linear_mask(model, eps, seed, opts, betas=ADAPTIVE_BETAS, aa=False)
    attacks["twostage"] = StagedPGD(eps, stages=[(10, aux_only_loss, joint_loss(1.0, aux_only=True)),
                                                 (steps, "ce", joint_loss(1.0))],
                                    alpha=2.5 * eps / steps, seed=seed)
    attacks["square"] = Described(make_attack("square", eps, seed=seed, n_queries=int(opts["square_queries"])),
                                  f"Square, eps={eps:.5g}, {opts['square_queries']} queries, final logits")
    surrogate = opts["surrogate"]
    if Path(surrogate).exists():
        attacks["transfer"] = Transfer(PGD(eps, steps=steps, seed=seed), surrogate,
                                       name=f"Transfer(PGD-{steps} CE, eps={eps:.5g}, surrogate={surrogate})")
    else:
        print(f"robustact: warning: transfer attack skipped: surrogate {surrogate} not found "
              "(--suite-opt surrogate=RUN)", file=sys.stderr)

    attacks["aa"] = autoattack(eps, seed, opts["aa"])
    return attacks
