"""EWAS evaluation protocols: `paper` (the official `white_box_robust_eval.py` / `attack_generator.py`) and
`adaptive`.

paper — eval mode (predicted masks), ε = 0.031, uniform random start; every loss adds λ = 0.01 × the same
loss on the aux head:
  fgsm : one step of ε
  pgd20: PGD-20, step ε/4, CE
  cw30 : "C&W" = PGD-30, step ε/4, on the CW margin with κ = 50 (final head + 0.01 × aux head)
adaptive — the shared linear-mask attacks (`protocols/linear_mask.py`) with aux weights ≥ 1, plus:
  twostage     : PGD-10 on the aux CE alone (flip the aux head, i.e. the mask), then PGD-20 on
                 CE_final + 1·CE_aux from there (same ε-ball)
  square       : Square alone (gradient-free; 5000 queries unless `square_queries` says otherwise)
  transfer     : PGD-20 crafted on an undefended surrogate (option `surrogate`, default
                 runs/pgd-at-small-cifar10: the CPU-sized PGD-AT baseline), then applied to the EWAS model
Options: `robustact eval --suite-opt key=value` (`robustact.evaluation.protocols.linear_mask.suite_options`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from robustact.attacks import PGD, AuxTerm
from robustact.attacks.adaptive import StagedPGD
from robustact.attacks.registry import make_attack
from robustact.attacks.wrappers import Transfer
from robustact.checkpoints import load_source_model
from robustact.evaluation.protocols.linear_mask import adaptive_suite, autoattack, paper_builder, suite_options
from robustact.evaluation.suites import register_suite

PAPER_LAMBDA = 0.01
ADAPTIVE_BETAS = (1.0, 10.0, 100.0)

register_suite("paper", defense="ewas")(
    paper_builder(PAPER_LAMBDA, step=lambda e: e / 4, cw_steps=30, kappa=50.0, fgsm_at_paper_eps=True))


@register_suite("adaptive", defense="ewas")
def ewas_adaptive(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    opts = suite_options(options)
    steps = int(opts["steps"])
    attacks = adaptive_suite(model, eps, seed, opts, betas=ADAPTIVE_BETAS, aa=False)
    attacks["twostage"] = StagedPGD(eps, stages=[(10, "zero", AuxTerm(1.0)), (steps, "ce", AuxTerm(1.0))],
                                    alpha=2.5 * eps / steps, seed=seed)
    attacks["square"] = make_attack("square", eps, seed=seed, n_queries=int(opts["square_queries"]))
    surrogate = opts["surrogate"]
    if Path(surrogate).exists():
        attacks["transfer"] = Transfer(PGD(eps, steps=steps, seed=seed), load_source_model(surrogate),
                                       source=surrogate)
    else:
        print(f"robustact: warning: transfer attack skipped: surrogate {surrogate} not found "
              "(--suite-opt surrogate=RUN)", file=sys.stderr)
    attacks["aa"] = autoattack(eps, seed, opts["aa"])
    return attacks
