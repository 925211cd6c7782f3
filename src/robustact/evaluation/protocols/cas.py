"""CAS evaluation protocols: `paper` (the official `Trades/pgd_attack_cifar10_cas.py`) and `adaptive`.

paper — eval mode (predicted masks), ε = 0.031 (the code's value for 8/255), every loss the joint
`loss_final + β·mean_s loss_aux_s`, β = 2:
  fgsm : uniform random start, one step of 8/255 (the code's "FGSM": `_pgd_whitebox` with 1 step, ε = 8/255)
  pgd20: PGD-20, step 0.003, random start, CE on both heads
  cw20 : 20 steps of 0.003 on the CW margin (κ = 0) of the final head + β·mean margin of the aux heads
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

from robustact.attacks import FGSM, PGD
from robustact.attacks.adaptive import (
    Described,
    EnumerateMasks,
    SoftMaskPGD,
    aux_loss,
    aux_only_loss,
    joint_loss,
)
from robustact.attacks.registry import make_attack
from robustact.evaluation.suites import positive_int, read_options, register_suite

PAPER_BETA = 2.0
BETA_SWEEP = (0.0, 0.1, 1.0, 10.0, 100.0)
DEFAULT_OPTIONS = {"steps": "20", "aa": "standard", "square_queries": "5000",
                   "surrogate": "runs/pgd-at-small"}


def suite_options(options: dict | None) -> dict:
    """Options of the linear-mask adaptive suites (`robustact eval --suite-opt key=value`): steps (PGD steps of
    every adaptive attack, 20), aa ("standard" AutoAttack, or a "+"-joined custom list such as
    "apgd-ce+apgd-t"), square_queries (5000), surrogate (EWAS transfer: run dir or checkpoint of an undefended
    model; default runs/pgd-at-small, as made by `robustact train --preset pgd-at-small --out runs/pgd-at-small`)."""
    opts = read_options(options, DEFAULT_OPTIONS, "adaptive")
    for key in ("steps", "square_queries"):
        positive_int(opts, key)
    return opts


def autoattack(eps: float, seed: int, spec: str):
    from robustact.attacks import AutoAttack

    if spec == "standard":
        return Described(make_attack("aa", eps, seed=seed), f"AutoAttack standard, eps={eps:.5g}, final logits")
    return Described(AutoAttack(eps, version="custom", attacks=spec.split("+"), seed=seed),
                     f"AutoAttack custom {spec.split('+')}, eps={eps:.5g}, final logits")


def paper_eps(eps: float) -> float:
    """The papers' code writes 8/255 as 0.031; other radii are taken as given."""
    return 0.031 if abs(eps - 8 / 255) < 1e-9 else eps


def adaptive_linear_mask(model: nn.Module, eps: float, seed: int, opts: dict, betas=BETA_SWEEP,
                         aa: bool = True) -> dict:
    """The adaptive attacks shared by CAS and EWAS (the two linear-mask defenses); `opts` from `suite_options`."""
    steps = int(opts["steps"])
    attacks: dict = {}
    step = f"PGD-{steps}, eps={eps:.5g}, step 2.5eps/{steps}, random start, predicted masks"
    for beta in betas:
        attacks[f"pgd{steps}-b{beta:g}"] = Described(
            PGD(eps, steps=steps, extra_loss=joint_loss(beta), seed=seed),
            f"{step}; CE_final + {beta:g}*mean CE_aux")
    attacks[f"pgd{steps}-auxonly"] = Described(
        PGD(eps, steps=steps, loss=aux_only_loss, extra_loss=joint_loss(1.0, aux_only=True), seed=seed),
        f"{step}; mean CE_aux only")
    attacks["bpda-softmask"] = SoftMaskPGD(eps, steps=steps, t_start=10.0, t_end=0.1, seed=seed)
    attacks["kmask"] = EnumerateMasks(
        lambda k: PGD(eps, steps=steps, extra_loss=aux_loss(1.0, targets=k), seed=seed),
        name=f"EnumerateMasks(PGD-{steps}, eps={eps:.5g}, masks fixed to k, aux pulled toward k with weight 1)")
    if aa:
        attacks["aa"] = autoattack(eps, seed, opts["aa"])
    return attacks


@register_suite("paper", defense="cas")
def cas_paper(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    read_options(options, {}, "paper")
    e = paper_eps(eps)
    return {
        "fgsm": Described(FGSM(eps, alpha=eps, random_start=True, extra_loss=joint_loss(PAPER_BETA), seed=seed),
                          f"random start + one step of {eps:.5g}; CE_final + 2*mean CE_aux; predicted masks"),
        "pgd20": Described(
            PGD(e, steps=20, alpha=0.003, random_start=True, extra_loss=joint_loss(PAPER_BETA), seed=seed),
            f"PGD-20, eps={e:.5g}, step 0.003, random start; CE_final + 2*mean CE_aux; predicted masks"),
        "cw20": Described(
            PGD(e, steps=20, alpha=0.003, random_start=True, loss="margin", kappa=0.0,
                extra_loss=aux_loss(PAPER_BETA, "margin", kappa=0.0), seed=seed),
            f"20 steps of 0.003, eps={e:.5g}, random start; CW margin (kappa 0) final + 2*mean aux margins"),
    }


@register_suite("adaptive", defense="cas")
def cas_adaptive(model: nn.Module, eps: float, seed: int = 0, options: dict | None = None) -> dict:
    return adaptive_linear_mask(model, eps, seed, suite_options(options))


# -- sanity checks over saved reports ---------------------------------------------------------------------
def sanity_for_reports(target: str, reports: list[str], which: str = "best", data_root: str | None = None,
                       device: str | None = None, seed: int = 0) -> list:
    """Gradient-masking red flags (`robustact.evaluation.sanity`) for a run, from the per-example results of
    its `robustact eval` reports (paper and adaptive; the per-attack results must be independent runs, which
    `robustact eval` gives), on the test images all reports cover (0..min n - 1)."""
    import json

    import torch

    from robustact.errors import RobustactError
    from robustact.evaluation.sanity import run_sanity_checks
    from robustact.runs import load_model
    from robustact.training.data_setup import prepare_test_data
    from robustact.utils import get_device

    results: dict = {}
    loaded = [(path, json.loads(open(path).read())) for path in reports]
    if not loaded:
        raise RobustactError("no reports given")
    n = min(data["n"] for _, data in loaded)  # reports cover test images 0..n-1: compare on the shared prefix
    for path, data in loaded:
        stem = path.rsplit("/", 1)[-1].removesuffix(".json")
        for name, flags in data["per_example"].items():
            if name not in ("clean", "worst_case"):
                results[f"{name}" if name not in results else f"{stem}:{name}"] = torch.tensor(flags[:n]).bool()
    model, config, _ = load_model(target, which=which)
    dev = get_device(device)
    x_u8, y = prepare_test_data(config["data"], n, data_root)
    return run_sanity_checks(model.to(dev), x_u8.to(dev).float().div_(255), y.to(dev), results, seed=seed)


def _main(argv: list[str] | None = None) -> int:
    """`python -m robustact.evaluation.protocols.cas sanity RUN REPORT.json [...] [--out FLAGS.json]` (tables of
    several reports: `robustact compare`)."""
    import argparse
    import json

    from robustact.utils import atomic_write_text

    p = argparse.ArgumentParser(prog="python -m robustact.evaluation.protocols.cas")
    p.add_argument("command", choices=["sanity"])
    p.add_argument("target", nargs="?")
    p.add_argument("reports", nargs="*")
    p.add_argument("--which", default="best")
    p.add_argument("--out")
    args = p.parse_args(argv)
    flags = sanity_for_reports(args.target, args.reports, which=args.which)
    for f in flags:
        print(f)
    if args.out:
        atomic_write_text(args.out, json.dumps([f.to_dict() for f in flags], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
