"""`robustact audit` / `robustact.audit`: one page that says whether a model's robustness is real.

Two sides meet the same test images:
  claimed  — what the model's authors would report: for a defense with a paper protocol its `paper` suite,
             otherwise FGSM, PGD-20, CW-30 and standard AutoAttack (the accepted reference);
  adaptive — what a reviewer adds: the defense's `adaptive` suite when it has one, and for any model the generic
             checks: standard AutoAttack (when the claimed side lacks it), EOT (`aa-rand`) when two forward
             passes differ, BPDA (PGD through a copy where each leaf module without useful gradients is
             straight-through) and a transfer attack from a surrogate (`--surrogate`, else the BPDA copy).
The per-example worst cases of the two sides, their paired difference with a bootstrap CI (`stats.py`), the
sanity checks (`sanity.py`) and, optionally, a matched baseline decide the verdict — `holds`, `partly` or
`masking` — by the first rule of `RULES` that applies. Each side runs as a normal eval (journal, resume, JSON and
Markdown report beside the audit's); a finished side of the same settings is read back, not run again.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact import distributed
from robustact.attacks.autoattack import AutoAttack, build_component
from robustact.attacks.base import check_batch, validate_eps
from robustact.attacks.bpda import BPDA, find_gradient_blockers, straight_through
from robustact.attacks.pgd import PGD
from robustact.attacks.registry import make_attack
from robustact.attacks.result import EvalResult
from robustact.attacks.wrappers import Transfer
from robustact.checkpoints import load_model, load_source_model, run_of
from robustact.defenses import defense_spec
from robustact.errors import RobustactError
from robustact.evaluation.engine import evaluate
from robustact.evaluation.journal import file_digest
from robustact.evaluation.runner import EvalOptions, _check, _with_test_images, default_eps, evaluate_model
from robustact.evaluation.sanity import check_randomness, run_sanity_checks
from robustact.evaluation.stats import PairedDifference, paired_difference
from robustact.evaluation.suites import SUITES, build_suite, positive_int, read_options
from robustact.fields import parse_number
from robustact.fileio import WriterLock, atomic_write_text
from robustact.utils import seed_everything

VERDICTS = ("holds", "partly", "masking")
MASKING_DROP = 0.05  # the adaptive attacks lower the worst case by at least this much (5 points): masking
MASKING_FLAGS = ("large_eps_accuracy", "fgsm_beats_pgd", "more_steps_raise_accuracy")
GENERIC_OPTIONS = {"aa": "standard", "steps": "50", "square_queries": "5000"}
LEVEL = 0.95  # of the paired bootstrap intervals
BEARING = {"zero_or_nan_gradients": "answered by BPDA on the adaptive side",
           "randomized_forward": "answered by EOT on the adaptive side",
           "square_beats_gradient": "information: Square's successes count in the worst cases"}


@dataclass(frozen=True)
class Rule:
    key: str
    verdict: str
    text: str


RULES = (
    Rule("adaptive-drop", "masking",
         f"the final worst case (per example over the claimed and the adaptive attacks) is significantly below the "
         f"claimed worst case (the paired {LEVEL:.0%} bootstrap CI of the difference excludes 0) and by at least "
         f"{100 * MASKING_DROP:g} points"),
    Rule("sanity", "masking",
         "a sanity check that signals masking fired: accuracy at a large ε stays above 5% (large_eps_accuracy), "
         "one-step FGSM significantly beats an iterative attack on the same objective (fgsm_beats_pgd), or more "
         "steps or restarts significantly raise accuracy (more_steps_raise_accuracy)"),
    Rule("small-drop", "partly",
         f"the final worst case is significantly below the claimed worst case, by less than {100 * MASKING_DROP:g} "
         "points"),
    Rule("below-baseline", "partly",
         "the final worst case is significantly below the matched baseline's worst case (--baseline: standard "
         "evaluation of an undefended model on the same images)"),
    Rule("holds", "holds", "none of the above: the claimed worst case stands"),
)


def rules_table(applies: dict[str, bool] | None = None) -> str:
    """The rule table as Markdown (docs/audit.md prints exactly this); with `applies`, a column saying which hold."""
    head = "| # | verdict | rule |" + (" applies here |" if applies is not None else "")
    lines = [head, "| ---: | --- | --- |" + (" --- |" if applies is not None else "")]
    for i, rule in enumerate(RULES, 1):
        line = f"| {i} | {rule.verdict} | {rule.text} |"
        if applies is not None:
            line += f" {'**yes**' if applies[rule.key] else 'no'} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def decide(drop: PairedDifference, sanity: list[dict],
           vs_baseline: PairedDifference | None = None) -> tuple[str, str, dict[str, bool]]:
    """(verdict, key of the deciding rule, every rule -> whether it applies): the first rule of `RULES` that
    applies decides. `drop` is final − claimed worst case, `vs_baseline` final − the baseline's."""
    fired = {f["name"] for f in sanity if f.get("fired")}
    applies = {
        "adaptive-drop": drop.significant and -drop.diff >= MASKING_DROP - 1e-12,
        "sanity": bool(fired & set(MASKING_FLAGS)),
        "small-drop": drop.significant and 0 < -drop.diff < MASKING_DROP - 1e-12,
        "below-baseline": vs_baseline is not None and vs_baseline.significant and vs_baseline.diff < 0,
        "holds": True,
    }
    rule = next(r for r in RULES if applies[r.key])
    return rule.verdict, rule.key, applies


# ---------------------------------------------------------------- the sides
@dataclass
class Side:
    """One side of the audit: its attacks (name -> attack), why each is there, notes on what was checked or
    left out, and once run its per-example result and report path."""

    name: str
    description: str
    attacks: dict = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    result: EvalResult | None = None
    report: str | None = None
    model: str | None = None

    @property
    def worst(self) -> torch.Tensor | None:
        return None if self.result is None else self.result.worst

    def to_json(self) -> dict:
        acc = self.result.accuracy() if self.result is not None else {}
        return {"description": self.description, "model": self.model,
                "attacks": {name: repr(a) for name, a in self.attacks.items()}, "why": self.why,
                "notes": self.notes, "accuracy": acc, "worst_case": acc.get("worst_case"), "report": self.report}


def _split(options: dict | None) -> tuple[dict, dict]:
    """--suite-opt: `paper.KEY=V` goes to the paper suite, every other key to the adaptive side."""
    options = dict(options or {})
    paper = {k.removeprefix("paper."): v for k, v in options.items() if k.startswith("paper.")}
    return paper, {k: v for k, v in options.items() if not k.startswith("paper.")}


def _generic(options: dict, strict: bool) -> dict:
    """The generic sides' options: aa (standard, or "+"-joined AutoAttack components, e.g. apgd-ce+square),
    steps (PGD steps of BPDA and transfer, 50), square_queries (of a custom AutoAttack's Square, 5000)."""
    if strict:
        opts = read_options(options, GENERIC_OPTIONS, "audit")
    else:  # a defense's adaptive suite checks its own options; the generic extras take what they know
        opts = GENERIC_OPTIONS | {k: v for k, v in options.items() if k in GENERIC_OPTIONS}
    for key in ("steps", "square_queries"):
        positive_int(opts, key)
    return opts


def autoattack(eps: float, norm: str, seed: int, spec: str, square_queries: int = 5000):
    """Standard AutoAttack, or a custom one of the "+"-joined components (`aa=apgd-ce+square`)."""
    if spec == "standard":
        return make_attack("aa", eps, norm, seed=seed)
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise RobustactError(f"suite option aa={spec!r}: expected standard or components joined by +")
    attacks = {name: make_attack("square", eps, norm, seed=seed, n_queries=square_queries, p_init=0.8)
               if name == "square" else build_component(name, eps, norm, seed=seed) for name in parts}
    return AutoAttack(eps, norm, version="custom", attacks=attacks, seed=seed)


def protocol_of(model: nn.Module) -> str | None:
    """The model's defense when it has a paper protocol (`suites.PROTOCOLS`), else None."""
    name = defense_spec(model).name
    return name if f"paper/{name}" in SUITES else None


def reported_attacks(eps: float, norm: str, seed: int, opts: dict) -> tuple[dict, dict]:
    """FGSM, PGD-20, CW-30 (what an author would report) and AutoAttack (the accepted reference)."""
    attacks = {name: make_attack(name, eps, norm, seed=seed) for name in ("fgsm", "pgd20", "cw30")}
    attacks["aa"] = autoattack(eps, norm, seed, opts["aa"], int(opts["square_queries"]))
    why = {name: "what an author would report" for name in ("fgsm", "pgd20", "cw30")}
    why["aa"] = "AutoAttack" + (" (standard)" if opts["aa"] == "standard" else f" ({opts['aa']})") + \
                ": the accepted reference"
    return attacks, why


def claimed_side(model: nn.Module, eps: float, norm: str = "Linf", seed: int = 0,
                 options: dict | None = None) -> Side:
    """The paper suite of the model's defense, else the attacks an author would report plus AutoAttack."""
    paper, rest = _split(options)
    defense = protocol_of(model)
    if defense is not None:
        attacks = build_suite("paper", model, eps, seed, paper, norm=norm)
        return Side("claimed", f"the {defense} paper's protocol (suite paper)", attacks,
                    {name: f"the {defense} paper's evaluation" for name in attacks})
    if paper:
        raise RobustactError(f"--suite-opt paper.{next(iter(paper))}: this model has no paper protocol (its defense: "
                             f"{defense_spec(model).name})")
    opts = _generic(rest, strict=f"adaptive/{defense_spec(model).name}" not in SUITES)
    attacks, why = reported_attacks(eps, norm, seed, opts)
    return Side("claimed", "the attacks an author would report (FGSM, PGD-20, CW-30) and AutoAttack, the accepted "
                "reference", attacks, why)


def _free(attacks: dict, name: str) -> str:
    while name in attacks:
        name += "-audit"
    return name


def adaptive_side(model: nn.Module, x: torch.Tensor, eps: float, norm: str = "Linf", seed: int = 0,
                  options: dict | None = None, claimed: Side | None = None, surrogate: nn.Module | None = None,
                  surrogate_name: str | None = None) -> Side:
    """The defense's adaptive suite (when it has one) and the generic checks on `x` (a few images): AutoAttack
    when the claimed side lacks it, EOT for a random forward pass, BPDA through layers without useful
    gradients, transfer from `surrogate` (else from the BPDA copy)."""
    _, rest = _split(options)
    defense = defense_spec(model).name
    side = Side("adaptive", "generic adaptive attacks, chosen by what the model does")
    if f"adaptive/{defense}" in SUITES:
        suite = build_suite("adaptive", model, eps, seed, rest, norm=norm)
        side.attacks.update(suite)
        side.why.update({name: f"the {defense} adaptive suite" for name in suite})
        side.description = f"the {defense} adaptive suite (suite adaptive) and the generic checks"
        opts = _generic(rest, strict=False)
    else:
        opts = _generic(rest, strict=True)
    steps = int(opts["steps"])
    if "aa" not in (claimed.attacks if claimed else {}) and "aa" not in side.attacks:
        side.attacks["aa"] = autoattack(eps, norm, seed, opts["aa"], int(opts["square_queries"]))
        side.why["aa"] = "AutoAttack, which the claimed side does not run"

    probe = x[:64]
    if check_randomness(model, probe).fired:
        name = _free(side.attacks, "aa-rand")
        side.attacks[name] = make_attack("aa-rand", eps, norm, seed=seed)
        side.why[name] = "two eval-mode forward passes of the same images differ: EOT (AutoAttack rand, gradients " \
                         "averaged over 20 passes)"
    else:
        side.notes.append("the forward pass is deterministic (two eval-mode passes agree): no EOT needed")

    blockers = find_gradient_blockers(model, probe, seed=seed)
    usable = [b for b in blockers if b.straight_through]
    for b in blockers:
        if not b.straight_through:
            side.notes.append(f"{b.describe()}: its output's shape or dtype differs from its input's, so it cannot "
                              "pass the gradient straight through; left as it is")
    names = [b.name for b in usable]
    if usable:
        name = _free(side.attacks, f"bpda-pgd{steps}")
        side.attacks[name] = BPDA(PGD(eps, norm, steps=steps, seed=seed), names)
        side.why[name] = "no useful input gradient through " + "; ".join(b.describe() for b in usable) + \
                         f": PGD-{steps} on a copy where they are straight-through (identity) in the backward pass"
    elif not blockers:
        side.notes.append("every leaf module passes a useful gradient: no BPDA needed")

    if surrogate is not None:
        name = _free(side.attacks, "transfer")
        label = surrogate_name or type(surrogate).__name__
        side.attacks[name] = Transfer(PGD(eps, norm, steps=steps, seed=seed), surrogate, source=label)
        side.why[name] = f"PGD-{steps} crafted on the surrogate {label} (--surrogate)"
    elif usable:
        name = _free(side.attacks, "transfer")
        side.attacks[name] = Transfer(PGD(eps, norm, steps=steps, loss="margin", seed=seed),
                                      straight_through(model, names), source="the model's BPDA copy")
        side.why[name] = f"PGD-{steps} on the CW margin crafted on the model's BPDA copy (no --surrogate given)"
    else:
        side.notes.append("transfer skipped: no --surrogate given, and the BPDA copy would be the model itself")
    return side


def baseline_side(eps: float, norm: str, seed: int, options: dict | None, label: str) -> Side:
    """The matched baseline meets the standard evaluation: FGSM, PGD-20, CW-30 and AutoAttack."""
    _, rest = _split(options)
    attacks, why = reported_attacks(eps, norm, seed, _generic(rest, strict=False))
    return Side("baseline", "the standard evaluation of the matched baseline (FGSM, PGD-20, CW-30, AutoAttack)",
                attacks, why, model=label)


# ---------------------------------------------------------------- the verdict and the page
@dataclass
class AuditResult:
    """What `audit` found: the verdict, the rule that decided it (and which rules apply), both sides (and the
    baseline) with their per-example results, the paired differences and the sanity flags."""

    verdict: str
    rule: str
    applies: dict[str, bool]
    claimed: Side
    adaptive: Side
    baseline: Side | None
    clean: torch.Tensor
    final: torch.Tensor
    drop: PairedDifference
    vs_baseline: PairedDifference | None
    sanity: list[dict]
    meta: dict

    @property
    def deciding_rule(self) -> Rule:
        return next(r for r in RULES if r.key == self.rule)

    def worst_cases(self) -> dict[str, float | None]:
        def acc(t):
            return None if t is None else t.float().mean().item()
        return {"claimed": acc(self.claimed.worst), "adaptive": acc(self.adaptive.worst), "final": acc(self.final),
                "baseline": acc(self.baseline.worst) if self.baseline else None}

    def to_json(self) -> dict:
        worst = self.worst_cases()
        accuracy = {"clean": self.clean.float().mean().item()}
        for side in (self.claimed, self.adaptive):
            if side.result is not None:
                for name, value in side.result.accuracy().items():
                    if name not in ("clean", "worst_case"):
                        accuracy[name if name not in accuracy else f"{name}@{side.name}"] = value
        accuracy["worst_case"] = worst["final"]
        per_example = {"clean": self.clean.int().tolist(), "worst_case": self.final.int().tolist(),
                       "claimed_worst": self.claimed.worst.int().tolist()}
        if self.adaptive.worst is not None:
            per_example["adaptive_worst"] = self.adaptive.worst.int().tolist()
        if self.baseline is not None:
            per_example["baseline_worst"] = self.baseline.worst.int().tolist()
        return {
            "verdict": self.verdict, "rule": self.rule, "rule_text": self.deciding_rule.text,
            "rules": [{"key": r.key, "verdict": r.verdict, "text": r.text, "applies": self.applies[r.key]}
                      for r in RULES],
            **{k: self.meta[k] for k in ("n", "eps", "norm", "seed", "threat_model", "model", "images")},
            "claimed": self.claimed.to_json(), "adaptive": self.adaptive.to_json(),
            "baseline": self.baseline.to_json() if self.baseline else None,
            "worst_case": worst,
            "differences": {"final_vs_claimed": self.drop.to_dict(),
                            "final_vs_baseline": self.vs_baseline.to_dict() if self.vs_baseline else None},
            "sanity": self.sanity,
            # what `robustact compare` reads: the final worst case per example, beside the side reports
            "accuracy": accuracy, "meta": self.meta.get("report_meta", {}), "per_example": per_example,
        }

    def to_markdown(self) -> str:
        m, worst = self.meta, self.worst_cases()
        rule_no = [r.key for r in RULES].index(self.rule) + 1
        out = [f"# Audit of {m['model']}: **{self.verdict}**", "",
               f"Rule {rule_no} decided ({self.verdict}): {self.deciding_rule.text}. Final − claimed worst case: "
               f"{self.drop.format()}" + (f"; final − baseline: {self.vs_baseline.format()}" if self.vs_baseline
                                           else "") + ".", "",
               f"- model: {m['model']}" + (f" ({m['describe']})" if m.get("describe") else ""),
               f"- images: {m['images']} (n = {m['n']}); clean accuracy {100 * self.clean.float().mean().item():.1f}%",
               f"- threat model: ε = {m['threat_model']}, seed {m['seed']}"]
        for side in (self.claimed, self.adaptive, self.baseline):
            if side is None:
                continue
            out += ["", f"## {side.name.capitalize()}: {side.description}"]
            if side.model:
                out.append(f"\nmodel: {side.model}")
            if side.result is None:
                out += ["", "no attack applies here beyond the claimed side's; its worst case is the claimed one"]
            else:
                acc = side.result.accuracy()
                out += ["", "| attack | robust accuracy (%) | why |", "| --- | ---: | --- |"]
                out += [f"| {name} | {100 * acc[name]:.1f} | {side.why.get(name, '')} |" for name in side.attacks]
                out.append(f"| **worst case** | **{100 * acc['worst_case']:.1f}** | per example over the above |")
                if side.report:
                    out.append(f"\nreport: {side.report}")
            out += [""] * bool(side.notes) + [f"- {note}" for note in side.notes]
        out += ["", f"## Worst cases and paired differences ({self.drop.level:.0%} bootstrap CI over the images, "
                    "McNemar)", "", "| worst case | robust accuracy (%) |", "| --- | ---: |",
                f"| claimed | {100 * worst['claimed']:.1f} |"]
        if worst["adaptive"] is not None:
            out.append(f"| adaptive side alone | {100 * worst['adaptive']:.1f} |")
        out.append(f"| final (claimed + adaptive, per example) | **{100 * worst['final']:.1f}** |")
        if worst["baseline"] is not None:
            out.append(f"| baseline | {100 * worst['baseline']:.1f} |")
        out += ["", f"- final − claimed: {self.drop.format()} ({self.drop.only_b} images fall only to the adaptive "
                    "attacks)"]
        if self.vs_baseline is not None:
            out.append(f"- final − baseline: {self.vs_baseline.format()}")
        out += ["", "## Sanity checks" + (f" (first {self.sanity[0].get('n', m['n'])} images)" if self.sanity else "")]
        if self.sanity:
            groups = sanity_groups(self.sanity)
            by_report = any(reports for _, reports in groups)
            out += ["", "| check | fired | value | " + "reports | " * by_report + "bearing |",
                    "| --- | --- | ---: | " + "--- | " * by_report + "--- |"]
            out += [f"| {f['name']} | {'**yes**' if f['fired'] else 'no'} | {f['value']:.3g} | "
                    + f"{', '.join(reports)} | " * by_report
                    + f"{'signals masking (rule 2)' if f['name'] in MASKING_FLAGS else BEARING.get(f['name'], '')} |"
                    for f, reports in groups]
            fired = [f"- {f['name']}" + f" ({', '.join(reports)})" * bool(reports) + f": {f['message']}"
                     for f, reports in groups if f["fired"]]
            out += [""] * bool(fired) + fired
        else:
            out += ["", "skipped (--sanity-n 0)"]
        out += ["", "## Rules (the first that applies decides)", "", rules_table(self.applies).rstrip("\n")]
        return "\n".join(out) + "\n"


def sanity_groups(sanity: list[dict]) -> list[tuple[dict, list[str]]]:
    """Flags that came out the same in several reports (the model-level checks each evaluation repeats) shown
    once, with the reports that found them; a flag whose value differs between reports keeps a row per value."""
    groups: dict[tuple, tuple[dict, list[str]]] = {}
    for flag in sanity:
        key = (flag["name"], bool(flag["fired"]), f"{flag['value']:.3g}", flag.get("message", ""))
        _, reports = groups.setdefault(key, (flag, []))
        if flag.get("report") and flag["report"] not in reports:
            reports.append(flag["report"])
    return list(groups.values())


def conclude(model: nn.Module, x: torch.Tensor, y: torch.Tensor, claimed: Side, adaptive: Side,
             baseline: Side | None, *, eps: float, norm: str, seed: int, batch_size: int, sanity_n: int,
             meta: dict) -> AuditResult:
    """Worst cases, paired differences, sanity checks (on the first `sanity_n` images, with the sides' per-example
    results) and the verdict."""
    claimed_worst = claimed.worst
    final = claimed_worst & adaptive.worst if adaptive.worst is not None else claimed_worst.clone()
    drop = paired_difference(final, claimed_worst, level=LEVEL, seed=seed)
    vs_baseline = paired_difference(final, baseline.worst, level=LEVEL, seed=seed) if baseline else None
    m = min(sanity_n, len(y))
    sanity: list[dict] = []
    if m:
        results = dict(claimed.result.robust)
        if adaptive.result is not None:
            for name, r in adaptive.result.robust.items():
                results[name if name not in results else f"adaptive:{name}"] = r
        flags = run_sanity_checks(model, x[:m], y[:m], {k: r[:m] for k, r in results.items()}, eps=eps, norm=norm,
                                  large_eps=64 / 255 if norm == "Linf" else 8 * eps, seed=seed,
                                  batch_size=batch_size)
        sanity = [f.to_dict() | {"n": m} for f in flags]
    verdict, rule, applies = decide(drop, sanity, vs_baseline)
    return AuditResult(verdict, rule, applies, claimed, adaptive, baseline, claimed.result.clean.clone(), final,
                       drop, vs_baseline, sanity, meta)


def write_audit(result: AuditResult, base: Path) -> tuple[Path, Path]:
    """`BASE.md` (the page) and `BASE.json` (the same, with the per-example worst cases)."""
    md, js = base.parent / f"{base.name}.md", base.parent / f"{base.name}.json"
    atomic_write_text(js, json.dumps(result.to_json(), indent=1))
    atomic_write_text(md, result.to_markdown())
    return md, js


def _threat(eps: float, norm: str) -> str:
    return f"{eps * 255:.4g}/255 (Linf)" if norm == "Linf" else f"{eps:.4g} ({norm})"


def _describe(model: nn.Module) -> str:
    arch = getattr(model, "arch", None)
    return (f"{arch}, " if arch else "") + f"defense {defense_spec(model).name}"


def _out_base(out: str | Path) -> Path:
    p = Path(out)
    return p.with_suffix("") if p.suffix in (".md", ".json") else p


# ---------------------------------------------------------------- the two entry points
def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | str = 8 / 255, norm: str = "Linf",
          baseline: nn.Module | None = None, surrogate: nn.Module | None = None, suite_options: dict | None = None,
          batch_size: int = 250, seed: int = 0, sanity_n: int = 200, out: str | Path | None = None,
          progress: bool = False) -> AuditResult:
    """Audit any `nn.Module` (images in [0, 1] -> logits) on the images `x` with labels `y`: the claimed and the
    adaptive side, sanity checks, and the verdict (`RULES`). `baseline`: a matched undefended model, evaluated on
    the same images; `surrogate`: the model transfer attacks are crafted on; `suite_options`: as
    `robustact audit --suite-opt` (`paper.KEY` for the paper suite, other keys for the adaptive side). With
    `out`, writes `OUT.md` and `OUT.json`. The model is put in eval mode, the images on its device."""
    for what, value in (("model", model), ("baseline", baseline), ("surrogate", surrogate)):
        if value is not None and not isinstance(value, nn.Module):
            raise RobustactError(f"audit: the {what} must be an nn.Module mapping images in [0, 1] to logits, got "
                                 f"{type(value).__name__}")
    if norm not in ("Linf", "L2"):
        raise RobustactError(f"norm must be Linf or L2, got {norm!r}")
    eps = validate_eps(parse_number(eps), norm)
    for key, value, low in (("batch_size", batch_size, 1), ("sanity_n", sanity_n, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RobustactError(f"{key} must be an integer >= {low}, got {value!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else (x.device if isinstance(x, torch.Tensor) else "cpu")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise RobustactError("audit: images and labels must be torch tensors")
    x, y = x.to(device), y.to(device)
    y = check_batch(x, y)
    if len(y) == 0:
        raise RobustactError("audit: no images given")
    model.eval()
    seed_everything(seed)
    claimed = claimed_side(model, eps, norm, seed, suite_options)
    adaptive = adaptive_side(model, x, eps, norm, seed, suite_options, claimed, surrogate,
                             f"{type(surrogate).__name__} (given)" if surrogate is not None else None)
    common = {"eps": eps, "batch_size": batch_size, "progress": progress, "seed": seed, "norm": norm}
    claimed.result = evaluate(model, x, y, claimed.attacks, **common)
    if adaptive.attacks:
        adaptive.result = evaluate(model, x, y, adaptive.attacks, **common)
    base = None
    if baseline is not None:
        base = baseline_side(eps, norm, seed, suite_options, f"{type(baseline).__name__} (given)")
        base.result = evaluate(baseline.to(device).eval(), x, y, base.attacks, **common)
    meta = {"model": f"{type(model).__name__} (in memory)", "describe": _describe(model),
            "images": f"{len(y)} given images", "n": len(y), "eps": eps, "norm": norm, "seed": seed,
            "threat_model": _threat(eps, norm)}
    result = conclude(model, x, y, claimed, adaptive, base, eps=eps, norm=norm, seed=seed, batch_size=batch_size,
                      sanity_n=sanity_n, meta=meta)
    if out is not None:
        write_audit(result, _out_base(out))
    return result


@dataclass
class AuditOptions:
    """What `audit_run` (`robustact audit`) runs; unset values come from the run's config, as for eval."""

    n: int | None = None                     # the first n test images (default: the config's, 1000)
    eps: float | str | None = None           # radius (default: the run's, 8/255; L2: 0.5)
    norm: str = "Linf"
    which: str = "best"
    arch: str | None = None                  # a foreign checkpoint's architecture, or "auto"
    arch_options: dict = field(default_factory=dict)
    num_classes: int | None = None
    normalize: Any = None
    batch_size: int | None = None
    seed: int = 0
    sanity_n: int = 200
    out: str | Path | None = None            # OUT.md + OUT.json (default RUN/eval/audit; none for a bare file)
    baseline: str | Path | None = None       # a matched undefended run or checkpoint
    surrogate: str | Path | None = None      # the model transfer attacks are crafted on
    suite_options: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False                  # replace side reports of another evaluation
    restart: bool = False                    # discard the journals of interrupted sides
    progress: bool = True
    data_root: str | None = None
    device: str | None = None
    download: bool = False


def audit_base(options: AuditOptions, run_dir: Path | None) -> Path | None:
    """Where the page goes, without its suffix: --out, else RUN/eval/audit (audit-last for --which last)."""
    if options.out:
        return _out_base(options.out)
    if run_dir is None:
        return None
    return run_dir / "eval" / ("audit-last" if options.which == "last" else "audit")


def audit_run(target: str | Path, options: AuditOptions | None = None) -> AuditResult:
    """Audit a run directory or checkpoint: each side is a resumable eval report beside the page
    (`BASE-claimed.json`, `BASE-adaptive.json`, `BASE-baseline.json`), then `BASE.md` and `BASE.json`."""
    options = options or AuditOptions()
    eval_options = EvalOptions(n=options.n, eps=options.eps, norm=options.norm, which=options.which,
                               arch=options.arch, arch_options=options.arch_options, num_classes=options.num_classes,
                               normalize=options.normalize, batch_size=options.batch_size, seed=options.seed,
                               sanity_n=0, progress=options.progress, data_root=options.data_root,
                               device=options.device, download=options.download, overwrite=options.overwrite,
                               restart=options.restart)
    _check(eval_options)
    if isinstance(options.sanity_n, bool) or not isinstance(options.sanity_n, int) or options.sanity_n < 0:
        raise RobustactError(f"--sanity-n must be an integer >= 0, got {options.sanity_n!r}")
    _, device = distributed.setup(options.device)
    if distributed.current().world > 1:
        raise RobustactError("robustact audit runs in one process; run it without torchrun")
    model, config, weights = load_model(target, which=options.which, arch=options.arch,
                                        num_classes=options.num_classes, normalize=options.normalize,
                                        **options.arch_options)
    foreign = {k: v for k, v in (("arch", options.arch), ("arch_options", options.arch_options),
                                 ("normalize", options.normalize)) if v}
    eps = default_eps(eval_options, config)
    seed_everything(options.seed)
    run = _with_test_images(model, config, weights, options.n or config.eval.n, device, options.data_root,
                            options.download)
    eval_options = replace(eval_options, eps=eps, n=run.n)
    base = audit_base(options, run_of(weights))
    batch_size = options.batch_size or config.eval.batch_size

    base_model = None
    if options.baseline:
        base_model, base_config, base_weights = load_model(options.baseline, which=options.which)
        ours = (config.data.dataset, config.data.classes)
        theirs = (base_config.data.dataset, base_config.data.classes)
        if ours != theirs:
            raise RobustactError(f"--baseline {options.baseline} is a model of {_data(*theirs)} but the audited one "
                                 f"of {_data(*ours)}; a matched baseline is evaluated on the same test images")
    surrogate = load_source_model(options.surrogate) if options.surrogate else None

    claimed = claimed_side(run.model, eps, options.norm, options.seed, options.suite_options)
    adaptive = adaptive_side(run.model, run.x, eps, options.norm, options.seed, options.suite_options, claimed,
                             surrogate.to(run.device).eval() if surrogate is not None else None,
                             str(options.surrogate) if options.surrogate else None)
    lock = WriterLock(base.with_name(f".{base.name}.lock"), f"audit {base}") if base is not None else None
    if lock is not None:
        lock.__enter__()
    try:
        def side_report(side: Side, model_: nn.Module, source: Path, settings: dict | None) -> None:
            out = base.with_name(f"{base.name}-{side.name}.json") if base is not None else None
            side.result = evaluate_model(model_, config, replace(eval_options, suite=f"audit-{side.name}"),
                                         source=str(source), digest=file_digest(source), out=out, device=device,
                                         model_settings=settings, attacks=side.attacks, reuse=True)
            side.report = side.result.meta.get("report")
            if side.result.meta.get("reused"):
                print(f"robustact: audit: the {side.name} side is done already ({side.report}); reusing it",
                      file=sys.stderr)

        side_report(claimed, run.model, weights, foreign or None)
        if adaptive.attacks:
            side_report(adaptive, run.model, weights, foreign or None)
        baseline = None
        if base_model is not None:
            baseline = baseline_side(eps, options.norm, options.seed, options.suite_options, str(base_weights))
            side_report(baseline, base_model, base_weights, None)
        meta = {"model": str(weights), "describe": _describe(run.model), "images": f"{config.data.dataset}, "
                f"{run.images}", "n": run.n, "eps": eps, "norm": options.norm, "seed": options.seed,
                "threat_model": _threat(eps, options.norm),
                "report_meta": {"checkpoint": str(weights), "dataset": config.data.dataset, "images": run.images}}
        result = conclude(run.model, run.x, run.y, claimed, adaptive, baseline, eps=eps, norm=options.norm,
                          seed=options.seed, batch_size=batch_size, sanity_n=options.sanity_n, meta=meta)
        if base is not None:
            md, js = write_audit(result, base)
            result.meta["report"] = str(md)
            result.meta["report_json"] = str(js)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return result


def _data(dataset: str, classes) -> str:
    return dataset + (f" (classes {classes})" if classes else "")
