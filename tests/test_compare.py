"""`robustact compare`: reports of one model merge into one row whose worst case is per example over all."""

from __future__ import annotations

import json

from test_cli import assert_one_line_error, run_cli

from robustact.evaluation.compare import format_comparison, merge_reports


def _report(path, checkpoint, acc, per_example, n=4):
    path.write_text(json.dumps({"n": n, "eps": 8 / 255, "accuracy": acc, "per_example": per_example,
                                "meta": {"checkpoint": checkpoint}}))
    return path


def test_reports_of_one_model_share_a_row_and_a_joint_worst_case(tmp_path):
    a = _report(tmp_path / "paper.json", "runs/m/checkpoints/best.safetensors",
                {"clean": 0.75, "pgd20": 0.5, "worst_case": 0.5},
                {"clean": [1, 1, 1, 0], "pgd20": [1, 1, 0, 0], "worst_case": [1, 1, 0, 0]})
    b = _report(tmp_path / "adaptive.json", "runs/m/checkpoints/best.safetensors",
                {"clean": 0.75, "pgd20": 0.75, "aa": 0.5, "worst_case": 0.5},
                {"clean": [1, 1, 1, 0], "aa": [0, 1, 1, 0], "worst_case": [0, 1, 1, 0]})
    c = _report(tmp_path / "base.json", "runs/base/checkpoints/best.safetensors",
                {"clean": 1.0, "aa": 0.25, "worst_case": 0.25}, {"clean": [1] * 4, "worst_case": [0, 0, 0, 1]})
    rows = merge_reports([a, b, c])
    assert [r.label for r in rows] == ["m", "base"]
    m = rows[0]
    assert m.worst == [0, 1, 0, 0] and m.worst_case == 0.25  # neither report alone says 25%
    assert m.accuracy == {"clean": 0.75, "pgd20": 0.5, "pgd20@adaptive": 0.75, "aa": 0.5}
    table = format_comparison(rows, ["clean", "aa"])
    assert "| m | 4 | 75.0 | 50.0 | **25.0** | paper, adaptive |" in table
    assert "| base | 4 | 100.0 | 25.0 | **25.0** | base |" in table


def test_compare_cli(tmp_path):
    a = _report(tmp_path / "r.json", "x.safetensors", {"clean": 1.0, "worst_case": 1.0},
                {"clean": [1] * 4, "worst_case": [1] * 4})
    out = tmp_path / "t.md"
    proc = run_cli("compare", str(a), "--out", str(out))
    assert proc.returncode == 0 and out.read_text() == proc.stdout and "| x | 4 | 100.0 |" in proc.stdout
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert_one_line_error(run_cli("compare", str(tmp_path / "bad.json")), "not a robustact eval report")
    assert_one_line_error(run_cli("compare", str(tmp_path / "missing.json")), "no report")
