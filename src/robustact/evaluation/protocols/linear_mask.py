"""What the CAS and EWAS protocols share (the two linear-mask defenses): the paper suite's three attacks with a
joint aux-head loss, and the adaptive attacks (aux-weighted and aux-only PGD, soft-mask BPDA, the K masks,
AutoAttack). Each defense's module (`cas.py`, `ewas.py`) fixes the settings of its official evaluation script.
"""

from __future__ import annotations

from torch import nn

from robustact.attacks import FGSM, PGD, AutoAttack, AuxTerm
from robustact.attacks.adaptive import SoftMaskPGD
from robustact.attacks.registry import make_attack
from robustact.attacks.wrappers import EnumerateMasks
from robustact.evaluation.suites import bool_option, choice_option, positive_int, read_options

BETA_SWEEP = (0.0, 0.1, 1.0, 10.0, 100.0)
ADAPTIVE_OPTIONS = {"steps": "20", "aa": "standard", "square_queries": "5000", "surrogate": "runs/pgd-at-small-cifar10"}
# the official-code fidelity options a paper suite may offer (`robustact eval --suite paper --suite-opt key=value`):
# cw_hinge (example: CW's per-example hinge; batch: the hinge on the batch-summed margin) and clamp_start (true:
# random starts clamped to [0, 1]; false: only to the eps-ball, as the official script)
FIDELITY_OPTIONS = {"cw_hinge": "example", "clamp_start": "true"}


def suite_options(options: dict | None) -> dict:
    """Options of the linear-mask adaptive suites (`robustact eval --suite-opt key=value`): steps (PGD steps of
    every adaptive attack, 20), aa ("standard" AutoAttack, or a "+"-joined custom list such as
    "apgd-ce+apgd-t"), square_queries (5000), surrogate (EWAS transfer: run dir or checkpoint of an undefended
    model; default runs/pgd-at-small-cifar10, as made by `robustact train --preset pgd-at-small-cifar10 --out
    runs/pgd-at-small-cifar10`)."""
    opts = read_options(options, ADAPTIVE_OPTIONS, "adaptive")
    for key in ("steps", "square_queries"):
        positive_int(opts, key)
    return opts


def autoattack(eps: float, seed: int, spec: str):
    """AutoAttack on the final logits: "standard", or a custom "+"-joined list of its attacks."""
    if spec == "standard":
        return make_attack("aa", eps, seed=seed)
    return AutoAttack(eps, version="custom", attacks=spec.split("+"), seed=seed)


def paper_eps(eps: float) -> float:
    """The papers' code writes 8/255 as 0.031; other radii are taken as given."""
    return 0.031 if abs(eps - 8 / 255) < 1e-9 else eps


def paper_suite(eps: float, seed: int, *, weight: float, fgsm_eps: float, step: float, cw_steps: int,
                kappa: float, cw_hinge: str = "example", clamp_start: bool = True) -> dict:
    """The official evaluation of a linear-mask defense: eval mode (predicted masks), random starts, every loss
    `loss_final + weight·mean_s loss_aux_s`: FGSM (one step of `fgsm_eps`), PGD-20 on CE and CW-`cw_steps` on
    the margin (κ), both at the code's ε (`paper_eps`) with step `step`. `cw_hinge="batch"` puts the CW hinge on
    each head's batch-summed margin and `clamp_start=False` leaves the random starts unclamped (the official CAS
    script; robustact's defaults are the per-example hinge and clamped starts)."""
    e = paper_eps(eps)
    start = {"random_start": True, "clamp_start": clamp_start, "seed": seed}
    return {
        "fgsm": FGSM(fgsm_eps, alpha=fgsm_eps, extra_loss=AuxTerm(weight), **start),
        "pgd20": PGD(e, steps=20, alpha=step, extra_loss=AuxTerm(weight), **start),
        f"cw{cw_steps}": PGD(e, steps=cw_steps, alpha=step, loss="margin", kappa=kappa, hinge=cw_hinge,
                             extra_loss=AuxTerm(weight, "margin", kappa=kappa, hinge=cw_hinge), **start),
    }


def paper_builder(weight: float, step, cw_steps: int, kappa: float, fgsm_at_paper_eps: bool,
                  options: tuple[str, ...] = ()):
    """The `paper` suite builder of one linear-mask defense (`step` maps the code's ε to its step size);
    `options` names the `FIDELITY_OPTIONS` this defense's paper suite takes (`--suite-opt`)."""
    defaults = {key: FIDELITY_OPTIONS[key] for key in options}

    def build(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
        opts = read_options(options, defaults, "paper")
        fidelity = {}
        if "cw_hinge" in opts:
            fidelity["cw_hinge"] = choice_option(opts, "cw_hinge", ("example", "batch"))
        if "clamp_start" in opts:
            fidelity["clamp_start"] = bool_option(opts, "clamp_start")
        return paper_suite(eps, seed, weight=weight, fgsm_eps=paper_eps(eps) if fgsm_at_paper_eps else eps,
                           step=step(paper_eps(eps)), cw_steps=cw_steps, kappa=kappa, **fidelity)

    return build


def adaptive_suite(model: nn.Module, eps: float, seed: int, opts: dict, betas=BETA_SWEEP, aa: bool = True) -> dict:
    """The adaptive attacks shared by CAS and EWAS; `opts` from `suite_options`. Every attack sees the predicted
    masks (the model's own mode) unless it says otherwise."""
    steps = int(opts["steps"])
    attacks: dict = {}
    for beta in betas:
        attacks[f"pgd{steps}-b{beta:g}"] = PGD(eps, steps=steps, extra_loss=AuxTerm(beta), seed=seed)
    attacks[f"pgd{steps}-auxonly"] = PGD(eps, steps=steps, loss="zero", extra_loss=AuxTerm(1.0), seed=seed)
    attacks["bpda-softmask"] = SoftMaskPGD(eps, steps=steps, t_start=10.0, t_end=0.1, seed=seed)
    attacks["kmask"] = EnumerateMasks(lambda k: PGD(eps, steps=steps, extra_loss=AuxTerm(1.0, toward=k), seed=seed))
    if aa:
        attacks["aa"] = autoattack(eps, seed, opts["aa"])
    return attacks
