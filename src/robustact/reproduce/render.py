"""A table from the reports on disk: per cell the mean ± std over the seeds measured, linked to its reports; per
row the paired per-example difference to its baseline with a 95% confidence interval (bootstrap over test images,
seeds kept together) and McNemar's test; the published value beside the measured one. Written as NAME/table.md
and NAME/table.json; what is not measured yet is shown as such, never filled in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustact.errors import RobustactError
from robustact.evaluation.stats import mean_std, paired_difference_over_seeds
from robustact.fileio import atomic_write_text, make_dirs
from robustact.reproduce.execute import check_existing_report
from robustact.reproduce.plan import Plan
from robustact.reproduce.tables import Column, Row

LEVEL = 0.95
N_BOOT = 10000


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)       # one per seed measured (fractions)
    seeds: list[int] = field(default_factory=list)
    vectors: list[list[int]] = field(default_factory=list)  # per-example robust (1) / not (0), one per seed
    reports: list[Path] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)        # evaluations of a worst case not done yet

    @property
    def mean(self) -> float | None:
        return mean_std(self.values)[0] if self.values else None

    @property
    def std(self) -> float | None:
        return mean_std(self.values)[1] if self.values else None


_LOADED: dict[Path, tuple[int, dict]] = {}  # report -> (mtime, content): every column and verdict reads it once


def _load(path: Path) -> dict | None:
    try:
        mtime = path.stat().st_mtime_ns
        if path not in _LOADED or _LOADED[path][0] != mtime:
            _LOADED[path] = (mtime, json.loads(path.read_text()))
        return _LOADED[path][1]
    except (OSError, ValueError):
        return None


def reports_of(plan: Plan, row: Row, seed: int) -> dict[str, tuple[Path, dict]]:
    """Evaluation name -> (report path, report) of one row and seed, for the reports that exist."""
    out = {}
    for job in plan.evals:
        if job.row.id == row.id and job.seed == seed:
            report = _load(job.report)
            if report is not None and check_existing_report(job, report):
                out[job.spec.name] = (job.report, report)
    return out


def _expected(plan: Plan, row: Row, seed: int) -> set[str]:
    return {j.spec.name for j in plan.evals if j.row.id == row.id and j.seed == seed}


def measure(plan: Plan, row: Row, column: Column) -> Cell:
    cell = Cell()
    for seed in plan.seeds:
        reports = reports_of(plan, row, seed)
        expected = _expected(plan, row, seed)
        if column.sources:
            for ev, attack in column.sources:
                if ev in reports and attack in reports[ev][1]["accuracy"]:
                    path, report = reports[ev]
                    cell.values.append(float(report["accuracy"][attack]))
                    vector = report.get("per_example", {}).get(attack)
                    cell.vectors.append([int(v) for v in vector] if vector is not None else [])
                    cell.seeds.append(seed)
                    cell.reports.append(path)
                    break
            continue
        wanted = [ev for ev in column.worst if ev in expected]
        have = [ev for ev in wanted if ev in reports]
        if not have:
            continue
        worst = None
        for ev in have:
            vector = np.asarray(reports[ev][1]["per_example"]["worst_case"], dtype=bool)
            worst = vector if worst is None else worst & vector
            cell.reports.append(reports[ev][0])
        cell.values.append(float(worst.mean()))
        cell.vectors.append(worst.astype(int).tolist())
        cell.seeds.append(seed)
        cell.partial += [f"{ev} (seed {seed})" for ev in wanted if ev not in reports]
    return cell


def paired_over_seeds(a: list[list[int]], b: list[list[int]], seed: int = 0) -> dict:
    """table.json's `paired` entry: the mean over seeds of (row − baseline) robust accuracy with a bootstrap CI
    over test images (each image's outcomes of every seed kept together), McNemar's exact test on seed 0's pairs."""
    pd = paired_difference_over_seeds(a, b, level=LEVEL, n_boot=N_BOOT, seed=seed)
    return {"diff": pd.diff, "low": pd.low, "high": pd.high, "p_mcnemar": pd.p_value, "seeds": pd.seeds,
            "text": pd.format()}


def _paired(plan: Plan, cells: dict, row: Row) -> dict | None:
    table = plan.table
    base_id = None if row.baseline == "none" else row.baseline or table.baseline
    if not table.compare or not base_id or base_id == row.id or base_id not in cells:
        return None
    mine, theirs = cells[row.id][table.compare], cells[base_id][table.compare]
    common = [s for s in mine.seeds if s in theirs.seeds]
    if not common:
        return None
    a = [mine.vectors[mine.seeds.index(s)] for s in common]
    b = [theirs.vectors[theirs.seeds.index(s)] for s in common]
    if any(len(x) != len(y) or not x for x, y in zip(a, b)):
        raise RobustactError(f"table {table.name}: {row.id} and {base_id} were evaluated on different images")
    return {"baseline": base_id, "column": table.compare} | paired_over_seeds(a, b)


def _fmt(cell: Cell, total_seeds: int) -> str:
    if cell.mean is None:
        return "—"
    text = f"{100 * cell.mean:.1f}"
    if cell.std is not None:
        text += f" ± {100 * cell.std:.1f}"
    if len(cell.values) < total_seeds:
        text += f" (seed{'s' if len(cell.seeds) > 1 else ''} {','.join(map(str, cell.seeds))})"
    if cell.partial:
        text += " (partial)"
    return text


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def build(plan: Plan, failed: dict[str, str] | None = None, verdicts: dict | None = None) -> dict:
    """table.json's content."""
    table = plan.table
    rows = [r for r in table.rows if r.show and r.id not in plan.skipped]
    cells = {r.id: {c.id: measure(plan, r, c) for c in table.columns} for r in rows}
    where = plan.out / table.name
    out_rows = []
    for row in rows:
        entry = {"id": row.id, "label": row.label, "cite": row.cite or None, "cells": {}}
        for column in table.columns:
            cell = cells[row.id][column.id]
            published = row.published.get(column.id)
            entry["cells"][column.id] = {
                "mean": cell.mean, "std": cell.std, "values": cell.values, "seeds": cell.seeds,
                "vectors": cell.vectors,
                "reports": sorted({_rel(p, where) for p in cell.reports}), "partial": cell.partial,
                "published": published,
                "difference": (None if published is None or cell.mean is None or plan.scale != "paper"
                               else 100 * cell.mean - published)}
        entry["paired"] = _paired(plan, cells, row)
        entry["verdict"] = (verdicts or {}).get(row.id)
        out_rows.append(entry)
    return {"table": table.name, "title": table.title, "description": table.description, "scale": plan.scale,
            "seeds": plan.seeds, "n": table.n[plan.scale], "baseline": table.baseline, "compare": table.compare,
            "columns": [{"id": c.id, "label": c.label, "kind": "worst" if c.worst else "attack"}
                        for c in table.columns], "rows": out_rows,
            "skipped": plan.skipped, "failed": failed or {}, "notes": table.notes}


def _link(text: str, target: str | None, base: str) -> str:
    return text if not target or text == "—" else f"[{text}]({Path(os.path.normpath(Path(base, target))).as_posix()})"


def table_rows(data: dict, link_base: str = ".") -> list[str]:
    """The main table as Markdown lines. Each measured cell links to what it comes from: an attack's column to the
    report of its first seed (table.json and the Reports section list every seed's), a worst-case column to the
    row's audit page when it has one; the verdict to that page. `link_base`: the table directory (OUT/NAME) as
    seen from where the lines are written."""
    cols = data["columns"]
    seeds = len(data["seeds"])
    has_verdict = any(r["verdict"] for r in data["rows"])
    header = ["model", *[c["label"] for c in cols], "Δ vs baseline [95% CI]"] + (["verdict"] if has_verdict else [])
    lines = ["| " + " | ".join(header) + " |",
             "|---|" + "---:|" * len(cols) + "---|" + ("---|" if has_verdict else "")]
    for r in data["rows"]:
        page = r["verdict"]["page"] if r["verdict"] else None
        cells = []
        for col in cols:
            c = r["cells"][col["id"]]
            target = page if col.get("kind") == "worst" and page else (c["reports"] or [None])[0]
            cells.append(_link(_fmt(Cell(values=c["values"], seeds=c["seeds"], partial=c["partial"]), seeds),
                               target, link_base))
        p = r["paired"]
        paired = "baseline" if r["id"] == data["baseline"] else (p["text"] + f" vs {p['baseline']}" if p else "—")
        extra = [_link(r["verdict"]["verdict"], page, link_base) if r["verdict"] else "—"] if has_verdict else []
        lines.append("| " + " | ".join([r["label"], *cells, paired, *extra]) + " |")
    return lines


def update_block(document: Path, data: dict, table_dir: Path) -> None:
    """Replace the block between `<!-- reproduce NAME -->` and `<!-- /reproduce NAME -->` in `document` (a
    README) with the table's main rows, linked relative to the document, and a link to the full table."""
    start, end = f"<!-- reproduce {data['table']} -->", f"<!-- /reproduce {data['table']} -->"
    try:
        text = document.read_text()
    except OSError as exc:
        raise RobustactError(f"--readme: cannot read {document}: {exc.strerror or exc}") from None
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise RobustactError(f"--readme: {document} needs one '{start}' line and, after it, one '{end}' line "
                             "around the place for the table")
    base = _rel(table_dir, document.parent)
    block = [start, *table_rows(data, link_base=base), "",
             f"Full table, seeds and statistics: [{Path(base, 'table.md').as_posix()}]"
             f"({Path(base, 'table.md').as_posix()}).", end]
    head, rest = text.split(start, 1)
    atomic_write_text(document, head + "\n".join(block) + rest.split(end, 1)[1])


def markdown(data: dict, command: str) -> str:
    cols = data["columns"]
    lines = [f"# {data['title']}", "", data["description"], "",
             f"- command: `{command}`",
             f"- scale: {data['scale']}; seeds: {', '.join(map(str, data['seeds']))}; "
             f"test images 0–{data['n'] - 1}; robust accuracy in %, mean ± std over seeds",
             f"- paired difference: the `{data['compare']}` column, row − its baseline, per test image; 95% CI by "
             "bootstrap over test images (seeds kept together); McNemar's exact test" if data["compare"] else "",
             ""]
    lines += table_rows(data, link_base=".")
    published = [(r, c, r["cells"][c["id"]]) for r in data["rows"] for c in cols
                 if r["cells"][c["id"]]["published"] is not None]
    if published:
        lines += ["", "## Published vs measured", ""]
        if data["scale"] != "paper":
            lines.append("The published values are the papers' full-size runs (ResNet-18, 50,000 images, all test "
                         "images); the measured ones are this table's scale, so no difference is computed.")
            lines.append("")
        sources = list(dict.fromkeys(r["cite"] for r, _, _ in published))   # each source once, numbered
        lines += ["| model | column | published | measured | difference | source |", "|---|---|---:|---:|---:|---|"]
        for r, c, cell in published:
            measured = "—" if cell["mean"] is None else f"{100 * cell['mean']:.1f}"
            diff = "—" if cell["difference"] is None else f"{cell['difference']:+.1f}"
            lines.append(f"| {r['label']} | {c['label']} | {cell['published']:.2f} | {measured} | {diff} | "
                         f"[{sources.index(r['cite']) + 1}] |")
        lines += ["", "Sources:", ""] + [f"- [{i}] {source}" for i, source in enumerate(sources, 1)]
    verdicts = [r for r in data["rows"] if r["verdict"]]
    if verdicts:
        lines += ["", "## Verdicts", ""]
        lines += [f"- **{r['label']}: {r['verdict']['verdict']}** — {r['verdict']['reason']}" for r in verdicts]
    lines += ["", "## Reports", ""]
    for r in data["rows"]:
        reports = sorted({p for c in r["cells"].values() for p in c["reports"]})
        lines.append(f"- {r['label']}: " + (", ".join(f"[{Path(p).parent.parent.parent.name}/"
                                                      f"{Path(p).parent.parent.name}/{Path(p).name}]({p})"
                                                      for p in reports) or "none yet"))
    if data["skipped"]:
        lines += ["", "## Not run", ""] + [f"- {k}: {v}" for k, v in data["skipped"].items()]
    if data["failed"]:
        lines += ["", "## Failed (the other rows went on)", ""] + [f"- {k}: {v}" for k, v in data["failed"].items()]
    if data["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(line for line in lines if line is not None) + "\n"


def write(plan: Plan, command: str, failed: dict[str, str] | None = None, verdicts: dict | None = None,
          readme: Path | None = None) -> Path:
    """OUT/NAME/table.json and table.md; with `readme`, that document's block of this table too."""
    data = build(plan, failed, verdicts)
    where = plan.out / plan.table.name
    make_dirs(where)
    atomic_write_text(where / "table.json", json.dumps(data, indent=1))
    atomic_write_text(where / "table.md", markdown(data, command))
    if readme is not None:
        update_block(Path(readme), data, where)
    return where / "table.md"
