"""One table from several eval reports (`robustact compare`). Reports of the same checkpoint on the same images
are merged into one row whose worst case is per example over every attack of every report — the honest
figure when a model met several suites (a paper protocol, an adaptive suite, AutoAttack) in separate runs.
With a baseline (`robustact compare --baseline REPORT_OR_LABEL`) every other row also gets the paired difference
of its per-example worst case from the baseline's (`robustact.evaluation.stats.paired_difference`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from robustact.checkpoints import checkpoint_label
from robustact.errors import RobustactError
from robustact.evaluation.stats import PairedDifference, paired_difference

BASELINE_COLUMN = "Δ worst vs baseline"


@dataclass
class Row:
    label: str
    n: int
    eps: float
    accuracy: dict[str, float] = field(default_factory=dict)
    worst: list[int] | None = None
    sources: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # reports without per-example worst cases
    images: str | None = None  # what the images are ("cifar10: first 200 test images"), when the reports say

    def add(self, report: dict, stem: str, path: Path | None = None) -> None:
        per_example = report.get("per_example", {})
        for name, value in report["accuracy"].items():
            if name == "worst_case":
                continue
            key = name if name not in self.accuracy or name == "clean" else f"{name}@{stem}"
            self.accuracy[key] = value
        worst = per_example.get("worst_case") or per_example.get("clean")
        if worst is not None:
            self.worst = list(worst) if self.worst is None else [a & b for a, b in zip(self.worst, worst)]
        if not per_example.get("worst_case"):
            self.missing.append(stem)
        meta = report.get("meta", {})
        if meta.get("images"):
            self.images = f"{meta.get('dataset', '?')}: {meta['images']}"
        self.sources.append(stem)
        if path is not None:
            self.paths.append(Path(path))

    @property
    def worst_case(self) -> float | None:
        return None if self.worst is None else sum(self.worst) / max(len(self.worst), 1)


def load_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RobustactError(f"no report {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RobustactError(f"{path} is not a JSON eval report") from None
    if not isinstance(report, dict) or "accuracy" not in report or "n" not in report:
        raise RobustactError(f"{path} is not a robustact eval report (no 'accuracy'/'n')")
    return report


def merge_reports(paths: list[Path], labels: dict[str, str] | None = None) -> list[Row]:
    """Rows in first-seen order; reports of one checkpoint with the same n and eps share a row."""
    rows: dict[tuple, Row] = {}
    for path in map(Path, paths):
        report = load_report(path)
        checkpoint = report.get("meta", {}).get("checkpoint", str(path))
        key = (checkpoint, report["n"], round(float(report["eps"]), 8))
        if key not in rows:
            label = (labels or {}).get(checkpoint) or checkpoint_label(checkpoint)
            rows[key] = Row(label=label, n=report["n"], eps=float(report["eps"]))
        rows[key].add(report, path.stem, path)
    return list(rows.values())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def merge_with_baseline(paths: list[Path], baseline: str | Path) -> tuple[list[Row], Row]:
    """The rows of `paths` and the baseline row: the row of `baseline` when it is one of the reports (or another
    report of a model already there), a row of its own when it is another report file, or the row whose label it
    is (`robustact compare --baseline REPORT_OR_LABEL`)."""
    paths = [Path(p) for p in paths]
    spec = Path(baseline)
    if spec.is_file():
        if not any(_same_file(spec, p) for p in paths):
            paths = [*paths, spec]
        rows = merge_reports(paths)
        return rows, next(r for r in rows if any(_same_file(spec, p) for p in r.paths))
    rows = merge_reports(paths)
    matches = [r for r in rows if r.label == str(baseline)]
    if not matches:
        raise RobustactError(f"--baseline {baseline}: neither a report file nor the label of a row; the rows are: "
                             f"{', '.join(r.label for r in rows)}")
    if len(matches) > 1:
        raise RobustactError(f"--baseline {baseline}: {len(matches)} rows have that label (other n or eps); give "
                             "the baseline's report file instead")
    return rows, matches[0]


def baseline_differences(rows: list[Row], base: Row, **kwargs) -> dict[int, PairedDifference]:
    """For each row but the baseline (by position), its paired worst-case difference from the baseline's:
    per-example worst cases on the same images are required, and anything else is refused in one line."""
    def check(row: Row) -> None:
        if row.missing:
            raise RobustactError(f"--baseline: report {row.missing[0]} ({row.label}) has no per-example worst case "
                                 "(per_example.worst_case); a paired difference needs per-example results")

    check(base)
    out = {}
    for i, row in enumerate(rows):
        if row is base:
            continue
        check(row)
        if row.n != base.n or len(row.worst or []) != len(base.worst or []):
            raise RobustactError(f"--baseline: {row.label} is on n = {row.n} images and the baseline {base.label} "
                                 f"on n = {base.n}; a paired difference needs the same test images")
        if row.images and base.images and row.images != base.images:
            raise RobustactError(f"--baseline: {row.label} is on {row.images} and the baseline {base.label} on "
                                 f"{base.images}; a paired difference needs the same test images")
        if abs(row.eps - base.eps) > 1e-9:
            raise RobustactError(f"--baseline: {row.label} is at eps {row.eps * 255:.4g}/255 and the baseline "
                                 f"{base.label} at {base.eps * 255:.4g}/255; compare them at the same radius")
        out[i] = paired_difference(row.worst, base.worst, **kwargs)
    return out


def format_comparison(rows: list[Row], columns: list[str] | None = None, baseline: Row | None = None) -> str:
    """Markdown: one row per model, accuracy in %, "—" where a model did not meet an attack; with a `baseline`
    row, a last column with each other row's paired worst-case difference from it (`baseline_differences`)."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row.accuracy if c not in columns]
    diffs = baseline_differences(rows, baseline) if baseline is not None else {}
    header = ["model", "n", *columns, "worst case", "reports"] + ([BASELINE_COLUMN] if baseline is not None else [])
    lines = ["| " + " | ".join(header) + " |",
             "|---|---:|" + "---:|" * (len(columns) + 1) + "---|" + ("---|" if baseline is not None else "")]
    for i, row in enumerate(rows):
        cells = [f"{100 * row.accuracy[c]:.1f}" if c in row.accuracy else "—" for c in columns]
        worst = "—" if row.worst_case is None else f"**{100 * row.worst_case:.1f}**"
        line = f"| {row.label} | {row.n} | " + " | ".join(cells) + f" | {worst} | {', '.join(row.sources)} |"
        if baseline is not None:
            line += " baseline |" if row is baseline else f" {diffs[i].format()} |"
        lines.append(line)
    return "\n".join(lines) + "\n"
