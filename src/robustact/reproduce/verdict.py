"""Per-row verdicts of a reproduction table (holds / partly / masking) by `robustact audit`'s rules
(`evaluation.audit.decide`, docs/audit.md), and each row's audit page, from the table's own reports on the first
seed (the one every evaluation ran on): the claimed side is the evaluations of the table's `verdict.claimed` column
(a row without them — no paper protocol — claims all its evaluations), the adaptive side the other evaluations of
its `verdict.adaptive` column, the matched baseline the baseline row's `verdict.baseline_column`; the sanity flags
are those of the row's reports. Once more seeds of the row and its baseline are complete, the comparison with the
baseline (rule 4) is over all of them, as the table's Δ column: one seed's interval covers the test images, not
the training seed, and a seed-0 gap of 2 points that the next seeds do not repeat is no evidence."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from robustact.attacks.result import EvalResult
from robustact.evaluation.audit import LEVEL, RULES, AuditResult, Side, decide, write_audit
from robustact.evaluation.report import result_from_report
from robustact.evaluation.stats import PairedDifference, paired_difference, paired_difference_over_seeds
from robustact.fileio import make_dirs
from robustact.reproduce.plan import Plan
from robustact.reproduce.render import measure, reports_of
from robustact.reproduce.tables import Row

SEED = 0


class _Settings(str):
    """An attack's settings as its report printed them (the page shows `repr`)."""

    def __repr__(self) -> str:
        return str(self)


def _reports(plan: Plan, row: Row, evals: list[str]) -> dict[str, tuple[Path, dict]]:
    return {name: r for name, r in reports_of(plan, row, SEED).items() if name in evals}


def _side(name: str, description: str, reports: dict[str, tuple[Path, dict]], where: Path) -> Side | None:
    """One side from reports: their attacks side by side (a name two reports share gets `@EVAL`)."""
    if not reports:
        return None
    side = Side(name, description)
    merged = None
    for ev, (_, data) in reports.items():
        result = result_from_report(data)
        merged = merged or EvalResult(n=result.n, eps=result.eps, clean=result.clean.clone(), norm=result.norm,
                                      seed=result.seed)
        for attack, robust in result.robust.items():
            key = attack if attack not in merged.robust else f"{attack}@{ev}"
            merged.robust[key] = robust
            merged.attacks[key] = result.attacks.get(attack, "")
            side.attacks[key] = _Settings(result.attacks.get(attack, ""))
            side.why[key] = f"report {ev}"
    side.result = merged
    side.report = ", ".join(os.path.relpath(p, where) for p, _ in reports.values())
    return side


def _evals_of(plan: Plan, row: Row, column_id: str | None) -> list[str]:
    if not column_id:
        return []
    return [ev for ev in plan.table.column(column_id).worst if ev in row.evals]


def _vs_baseline_over_seeds(plan: Plan, row: Row, base_row: Row, final: torch.Tensor) -> PairedDifference | None:
    """Final − baseline worst case over every seed on which both are complete, seed 0 among them (None: only seed
    0 is, or the table's columns do not give seed 0's final worst case exactly)."""
    spec = plan.table.verdict
    mine = measure(plan, row, plan.table.column(spec["adaptive"]))
    theirs = measure(plan, base_row, plan.table.column(spec.get("baseline_column") or spec["adaptive"]))

    def complete(cell) -> dict[int, list[int]]:
        unfinished = {s for s in cell.seeds if any(p.endswith(f"(seed {s})") for p in cell.partial)}
        return {s: v for s, v in zip(cell.seeds, cell.vectors) if s not in unfinished}

    a, b = complete(mine), complete(theirs)
    seeds = [s for s in plan.seeds if s in a and s in b]
    if len(seeds) < 2 or seeds[0] != SEED or a[SEED] != final.to(torch.int64).tolist():
        return None
    return paired_difference_over_seeds([a[s] for s in seeds], [b[s] for s in seeds], level=LEVEL, seed=SEED)


def row_audit(plan: Plan, row: Row, where: Path) -> AuditResult | None:
    """The row's audit from its first seed's reports (None before any of them exists)."""
    spec = plan.table.verdict
    final_evals = _evals_of(plan, row, spec.get("adaptive"))
    claimed_evals = [e for e in _evals_of(plan, row, spec.get("claimed")) if e in final_evals] or final_evals
    claimed_reports = _reports(plan, row, claimed_evals)
    if not claimed_reports:
        return None
    missing = [e for e in final_evals if e not in _reports(plan, row, final_evals)
               and not (plan.table.evals[e].later_seeds_only)]
    claimed = _side("claimed", f"{'the paper protocol' if claimed_evals != final_evals else 'every evaluation'} "
                               f"of the table ({', '.join(claimed_evals)})", claimed_reports, where)
    adaptive_evals = [e for e in final_evals if e not in claimed_evals]
    adaptive = _side("adaptive", f"the table's other evaluations ({', '.join(adaptive_evals)})",
                     _reports(plan, row, adaptive_evals), where) \
        or Side("adaptive", "no evaluation beyond the claimed side's")
    base_id = None if row.baseline == "none" else row.baseline or plan.table.baseline
    baseline = None
    if base_id and base_id != row.id:
        base_row = plan.table.row(base_id)
        baseline = _side("baseline", f"{base_row.label}: its {spec.get('baseline_column') or 'final'} evaluations",
                         _reports(plan, base_row, _evals_of(plan, base_row, spec.get("baseline_column")
                                                             or spec.get("adaptive"))), where)
    claimed_worst = claimed.worst
    final = claimed_worst & adaptive.worst if adaptive.worst is not None else claimed_worst.clone()
    drop = paired_difference(final, claimed_worst, level=LEVEL, seed=SEED)
    vs_baseline = (paired_difference(final, baseline.worst, level=LEVEL, seed=SEED)
                   if baseline is not None and len(baseline.worst) == len(final) else None)
    if vs_baseline is not None:
        vs_baseline = _vs_baseline_over_seeds(plan, row, plan.table.row(base_id), final) or vs_baseline
    sanity = []
    for ev, (_, data) in _reports(plan, row, final_evals).items():
        sanity += [f | {"name": f["name"], "report": ev} for f in data.get("sanity", [])]
    verdict, rule, applies = decide(drop, sanity, vs_baseline)
    first = next(iter(claimed_reports.values()))[1]
    meta = {"n": first["n"], "eps": first["eps"], "norm": first.get("norm", "Linf"), "seed": SEED,
            "threat_model": claimed.result.threat_model(), "model": f"{row.label} ({row.runs[plan.scale].id}, "
            f"seed {SEED})", "images": f"first {first['n']} test images", "missing": missing,
            "report_meta": first.get("meta", {})}
    return AuditResult(verdict, rule, applies, claimed, adaptive, baseline, claimed.result.clean.clone(),
                       final.to(torch.bool), drop, vs_baseline, sanity, meta)


def row_verdicts(plan: Plan) -> dict:
    """row id -> {verdict, rule, reason, ...}; each row's audit page written to OUT/NAME/audit/ROW.md (+ .json)."""
    if not plan.table.verdict.get("adaptive"):
        return {}
    where = plan.out / plan.table.name / "audit"
    out = {}
    for row in plan.table.rows:
        if not row.show or row.id in plan.skipped:
            continue
        audit = row_audit(plan, row, where)
        if audit is None:
            continue
        missing = audit.meta["missing"]
        make_dirs(where)
        page, _ = write_audit(audit, where / row.id)
        if missing:
            page.write_text(f"**Provisional: not yet run on seed {SEED}: {', '.join(missing)}.**\n\n"
                            + page.read_text())
        rule = audit.deciding_rule
        fired = sorted({f"{f['name']} ({f['report']})" for f in audit.sanity if f.get("fired")})
        reason = (f"rule {RULES.index(rule) + 1} ({rule.key}): final − claimed worst case {audit.drop.format()}"
                  + (f"; vs the baseline: {audit.vs_baseline.format()}" if audit.vs_baseline else "")
                  + (f"; sanity flags: {', '.join(fired)}" if fired else "")
                  + (f" (seed {SEED}; the baseline comparison over {audit.vs_baseline.seeds} seeds)"
                     if audit.vs_baseline and audit.vs_baseline.seeds > 1 else f" (seed {SEED})")
                  + (f"; PROVISIONAL, not yet run: {', '.join(missing)}" if missing else ""))
        out[row.id] = {"verdict": audit.verdict + (" (provisional)" if missing else ""), "rule": rule.key,
                       "reason": reason, "missing": missing, "sanity_fired": fired, "page": f"audit/{page.name}",
                       "drop": audit.drop.to_dict(),
                       "vs_baseline": audit.vs_baseline.to_dict() if audit.vs_baseline else None}
    return out
