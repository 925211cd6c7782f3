"""`robustact compare`: reports of one model merge into one row whose worst case is per example over all."""

from __future__ import annotations

import json

import pytest
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


# -- --baseline: the paired worst-case difference of every other row from the baseline row ----------------------
def _vector(n, robust, seed):
    import random

    rng = random.Random(seed)
    return [1 if rng.random() < robust else 0 for _ in range(n)]


def _full_report(path, checkpoint, worst, images="first 60 test images", per_example=True):
    n = len(worst)
    report = {"n": n, "eps": 8 / 255, "accuracy": {"clean": 1.0, "aa": sum(worst) / n, "worst_case": sum(worst) / n},
              "meta": {"checkpoint": checkpoint, "dataset": "cifar10", "images": images}}
    if per_example:
        report["per_example"] = {"clean": [1] * n, "aa": worst, "worst_case": worst}
    path.write_text(json.dumps(report))
    return path


def _delta_cells(out: str) -> dict[str, str]:
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in rows[0]]
    assert header[-1] == "Δ worst vs baseline"
    return {cells[0].strip(): cells[-1].strip() for cells in rows[1:]}


def test_compare_with_a_baseline_prints_paired_differences(tmp_path, capsys):
    from robustact.cli import main
    from robustact.evaluation.stats import paired_difference

    n = 60
    base_w, cas_w, ewas_w = _vector(n, 0.45, 1), _vector(n, 0.5, 2), _vector(n, 0.3, 3)
    base = _full_report(tmp_path / "base.json", "runs/at/checkpoints/best/model.safetensors", base_w)
    cas = _full_report(tmp_path / "cas.json", "runs/cas/checkpoints/best/model.safetensors", cas_w)
    ewas = _full_report(tmp_path / "ewas.json", "runs/ewas/checkpoints/best/model.safetensors", ewas_w)
    expected = {"cas": paired_difference(cas_w, base_w).format(), "ewas": paired_difference(ewas_w, base_w).format()}

    for baseline, reports in ((str(base), [cas, base, ewas]),   # one of the reports: its row
                              ("at", [cas, base, ewas]),         # a row's label
                              (str(base), [cas, ewas])):         # another report: a row of its own
        assert main(["compare", *map(str, reports), "--baseline", baseline]) == 0
        cells = _delta_cells(capsys.readouterr().out)
        assert cells == {"cas": expected["cas"], "at": "baseline", "ewas": expected["ewas"]}, cells
    assert "\u2212" in expected["ewas"] and "McNemar p = " in expected["ewas"]  # EWAS is ~15 points below


@pytest.mark.parametrize("make, fragments", [
    (lambda d: _full_report(d / "x.json", "runs/x/m.safetensors", [1, 0] * 20, images="first 40 test images"),
     ["n = 40", "n = 60", "same test images"]),
    (lambda d: _full_report(d / "x.json", "runs/x/m.safetensors", [1, 0] * 30, per_example=False),
     ["no per-example worst case"]),
    (lambda d: _full_report(d / "x.json", "runs/x/m.safetensors", [1, 0] * 30, images="first 60 test images of "
                            "classes [0, 1]"), ["classes [0, 1]", "same test images"]),
])
def test_compare_baseline_refusals_are_one_line(tmp_path, capsys, make, fragments):
    from robustact.cli import main

    base = _full_report(tmp_path / "base.json", "runs/at/m.safetensors", [1, 1, 0] * 20)
    other = make(tmp_path)
    assert main(["compare", str(other), str(base), "--baseline", str(base)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and all(f in err[0] for f in fragments), err


def test_compare_baseline_that_is_neither_a_file_nor_a_label(tmp_path, capsys):
    from robustact.cli import main

    base = _full_report(tmp_path / "base.json", "runs/at/m.safetensors", [1, 1, 0] * 20)
    assert main(["compare", str(base), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a report file nor the label of a row" in err[0] and "rows are: m" in err[0]
