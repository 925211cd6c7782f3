"""One table from several eval reports (`robustact compare`). Reports of the same checkpoint on the same images
are merged into one row whose worst case is per example over every attack of every report — the honest
figure when a model met several suites (a paper protocol, an adaptive suite, AutoAttack) in separate runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from robustact.checkpoints import checkpoint_label
from robustact.errors import RobustactError


@dataclass
class Row:
    label: str
    n: int
    eps: float
    accuracy: dict[str, float] = field(default_factory=dict)
    worst: list[int] | None = None
    sources: list[str] = field(default_factory=list)

    def add(self, report: dict, stem: str) -> None:
        per_example = report.get("per_example", {})
        for name, value in report["accuracy"].items():
            if name == "worst_case":
                continue
            key = name if name not in self.accuracy or name == "clean" else f"{name}@{stem}"
            self.accuracy[key] = value
        worst = per_example.get("worst_case") or per_example.get("clean")
        if worst is not None:
            self.worst = list(worst) if self.worst is None else [a & b for a, b in zip(self.worst, worst)]
        self.sources.append(stem)

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
        rows[key].add(report, path.stem)
    return list(rows.values())


def format_comparison(rows: list[Row], columns: list[str] | None = None) -> str:
    """Markdown: one row per model, accuracy in %, "—" where a model did not meet an attack."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row.accuracy if c not in columns]
    header = ["model", "n", *columns, "worst case", "reports"]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(columns) + 1) + "---|"]
    for row in rows:
        cells = [f"{100 * row.accuracy[c]:.1f}" if c in row.accuracy else "—" for c in columns]
        worst = "—" if row.worst_case is None else f"**{100 * row.worst_case:.1f}**"
        lines.append(f"| {row.label} | {row.n} | " + " | ".join(cells) + f" | {worst} | {', '.join(row.sources)} |")
    return "\n".join(lines) + "\n"
