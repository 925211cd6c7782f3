"""CAS evaluation protocols: `paper` (the official `Trades/pgd_attack_cifar10_cas.py`) and `adaptive`.

paper — eval mode (predicted masks), ε = 0.031 (the code's value for 8/255), every loss the joint
`loss_final + β·mean_s loss_aux_s`, β = 2:
  fgsm : uniform random start, one step of 8/255 (the code's "FGSM": `_pgd_whitebox` with 1 step, ε = 8/255)
  pgd20: PGD-20, step 0.003, random start, CE on both heads
  cw20 : 20 steps of 0.003 on the CW margin (κ = 0) of the final head + β·mean margin of the aux heads
  options (`--suite-opt`, the official script's behaviour behind each; docs/cas.md "Fidelity flags"):
    cw_hinge=batch    : CW's hinge on each head's batch-summed margin (default example: per example)
    clamp_start=false : random starts not clamped to [0, 1] (default true)
adaptive — the attacks the paper did not run (METHODS.md §6), each run on every clean-correct point:
  pgd20-b{0,0.1,1,10,100}: PGD-20 (step 2.5ε/20) on CE_final + β·mean CE_aux
  pgd20-auxonly          : PGD-20 on the mean aux CE alone
  bpda-softmask          : PGD-20 through the soft-mask surrogate (hard forward, softmax(a/T)·W backward,
                           T annealed 10 -> 0.1), CE on the final head
  kmask                  : worst case over the K masks: masks fixed to class k, PGD-20 on CE_final(y) pulling
                           the aux heads toward k (so the real model picks mask k), k in the aux heads' order
  aa                     : AutoAttack (standard) on the final logits
The report's worst case is per example over all of them.
"""

from __future__ import annotations

from torch import nn

from robustact.evaluation.protocols.linear_mask import adaptive_suite, paper_builder, suite_options
from robustact.evaluation.suites import register_suite

PAPER_BETA = 2.0

register_suite("paper", defense="cas")(
    paper_builder(PAPER_BETA, step=lambda e: 0.003, cw_steps=20, kappa=0.0, fgsm_at_paper_eps=False,
                  options=("cw_hinge", "clamp_start")))


@register_suite("adaptive", defense="cas")
def cas_adaptive(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    return adaptive_suite(model, eps, seed, suite_options(options))
