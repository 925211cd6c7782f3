"""`robustact reproduce`: tables as data, plans, resumable execution, one failed row not losing the others, and
the statistics of the written table checked against the reports it was made from."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cli import assert_one_line_error, run_cli

from robustact.errors import ConfigError, RobustactError
from robustact.evaluation.stats import paired_difference
from robustact.reproduce import list_tables, load_table, make_plan
from robustact.reproduce.command import reproduce
from robustact.reproduce.plan import TrainJob
from robustact.reproduce.render import paired_over_seeds
from robustact.reproduce.tables import parse_table

TINY = {"data.train_subset": None, "data.val_size": 20, "data.batch_size": 40, "training.epochs": 1,
        "training.attack.steps": 1, "training.val_n": 10, "training.val_attack_steps": 1}


def tiny_table(**changes) -> dict:
    table = {
        "title": "tiny", "description": "two rows on tiny data",
        "baseline": "at", "compare": "worst", "n": {"cpu": 40},
        "verdict": {"claimed": "claimed", "adaptive": "worst", "baseline_column": "worst"},
        "evals": {"paper": {"suite": "paper"}, "paper-base": {"suite": "paper", "protocol": "cas"},
                  "extra": {"attacks": ["pgd20"], "seeds": "first"}},
        "columns": [{"id": "clean", "from": ["paper:clean", "paper-base:clean"]},
                    {"id": "pgd20", "label": "PGD-20", "from": ["paper:pgd20", "paper-base:pgd20"]},
                    {"id": "claimed", "worst": ["paper", "paper-base"]},
                    {"id": "worst", "worst": ["paper", "paper-base", "extra"]}],
        "rows": [
            {"id": "at", "label": "AT", "run": {"cpu": {"id": "at-tiny", "preset": "demo", "set": TINY}},
             "evals": ["paper-base", "extra"], "published": {"pgd20": 44.33}, "cite": "a paper, Table 1"},
            {"id": "cas", "label": "AT + CAS",
             "run": {"cpu": {"id": "cas-tiny", "preset": "demo",
                             "set": TINY | {"model.defense": "cas", "model.defense_kwargs": {"beta": 2.0}}}},
             "evals": ["paper", "extra"]},
        ],
    }
    table.update(changes)
    return table


def write_table(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_cifar):
    """The tiny table with 2 seeds, run once for the module."""
    where = tmp_path_factory.mktemp("reproduce")
    name = write_table(where / "tiny.yaml", tiny_table())
    out = where / "out"
    path = reproduce(name, seeds=2, out=out, data_root=str(tiny_cifar), progress=False, log=lambda *a: None)
    return name, out, path, tiny_cifar


# ---------------------------------------------------------------- the built-in tables
def test_builtin_tables_parse_and_plan_at_both_scales():
    assert {"cas", "ewas", "cifs", "sparta", "verdict"} <= set(list_tables())
    for name in list_tables():
        table = load_table(name)
        for scale in ("cpu", "paper"):
            plan = make_plan(table, scale, 2, Path("/tmp/none"), available={"cifar10"})
            for job in plan.trains:
                job.config()  # every recipe resolves to a checked RunConfig
            for job in plan.jobs():  # what a job needs comes before it
                done = [j.run_dir for j in plan.jobs()[:plan.jobs().index(job)] if hasattr(j, "recipe")]
                assert all(p in done for p in job.needs), job.key


def test_published_values_carry_a_source():
    for name in list_tables():
        for row in load_table(name).rows:
            if row.published:
                assert row.cite, (name, row.id)
    sparta = load_table("sparta")
    assert not any(r.published for r in sparta.rows)  # a reconstruction: no paper number is claimed


def test_svhn_rows_say_what_is_missing():
    plan = make_plan(load_table("sparta"), "paper", 1, Path("/tmp/none"), available={"cifar10"})
    assert "needs SVHN" in plan.skipped["sparta-svhn"] and "--download" in plan.skipped["sparta-svhn"]
    plan = make_plan(load_table("sparta"), "paper", 1, Path("/tmp/none"), available={"cifar10", "svhn"})
    assert "sparta-svhn" not in plan.skipped


def test_recipes_shared_between_tables_share_a_run_directory():
    out = Path("/tmp/none")
    verdict = make_plan(load_table("verdict"), "cpu", 1, out)
    cas = make_plan(load_table("cas"), "cpu", 1, out)
    shared = {t.run_dir for t in verdict.trains if t.row.id == "at"}
    assert shared == {t.run_dir for t in cas.trains if t.row.id == "at"}


def test_an_evaluation_name_means_one_evaluation_on_a_run_across_tables():
    """Tables share run directories, and a report file is named after its evaluation: the same name on the same
    run must be the same evaluation, or one table would show another's numbers (cas and ewas once both named
    their own baselines' paper protocol `paper-base`)."""
    out = Path("/tmp/none")
    seen: dict[Path, tuple] = {}
    for scale in ("cpu", "paper"):
        for name in list_tables():
            for job in make_plan(load_table(name), scale, 2, out).evals:
                s = job.spec
                what = (s.suite, s.protocol, s.attacks, s.only, s.skip, s.cascade, sorted(job.options), job.n)
                assert seen.setdefault(job.report, what) == what, f"{job.report}: {name} differs"


def test_a_report_of_another_evaluation_is_refused(reproduced, tmp_path):
    """A report under the job's name but of another protocol, attack list or image count: one line, not reused."""
    name, out, _, data_root = reproduced
    data = tiny_table()
    data["evals"]["paper-base"]["protocol"] = "ewas"
    other = write_table(tmp_path / "tiny.yaml", data)
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    with pytest.raises(RobustactError, match=r"paper-base.json holds another evaluation.*protocol 'cas', not 'ewas'"):
        reproduce(other, seeds=1, out=copy, dry_run=True, estimate=False, log=lambda *a: None)
    with pytest.raises(RobustactError, match="holds another evaluation"):
        reproduce(other, seeds=1, out=copy, render_only=True, log=lambda *a: None)
    data = tiny_table(n={"cpu": 20})
    fewer = write_table(tmp_path / "tiny.yaml", data)
    proc = run_cli("reproduce", fewer, "--out", str(copy), "--data-dir", str(data_root), "--no-progress")
    assert proc.returncode != 0 and "test images 40, not 20" in proc.stderr and "Traceback" not in proc.stderr


def test_cifs_follows_the_official_recipe():
    plan = make_plan(load_table("verdict"), "cpu", 1, Path("/tmp/none"))
    cifs = next(t for t in plan.trains if t.row.id == "cifs")
    clean = next(t for t in plan.trains if t.row.id == "cifs-clean")
    config = cifs.config()
    assert config.model.init_from == str(clean.run_dir) and clean.config().training.objective == "standard"
    assert config.model.defense_kwargs["mask_scale"] == 2
    assert clean.run_dir in cifs.needs


# ---------------------------------------------------------------- table files: one line per mistake
@pytest.mark.parametrize("change, fragment", [
    ({"rows": [{"id": "a", "run": {"cpu": "demo"}, "published": {"clean": 50}}]}, "need `cite`"),
    ({"rows": [{"id": "a", "run": {"cpu": "demo"}, "evals": ["nope"]}]}, "unknown evaluation 'nope'"),
    ({"rows": [{"id": "a", "run": {"gpu": "demo"}}]}, "unknown key 'gpu'"),
    ({"rows": [{"id": "a", "run": {"cpu": "demo"}, "published": {"nope": 1}}]}, "no column 'nope'"),
    ({"rows": [{"id": "a", "run": {"cpu": "demo"}, "published": {"clean": "high"}, "cite": "x"}]}, "expected a number"),
    ({"baseline": "ghost"}, "refers to no row 'ghost'"),
    ({"columns": [{"id": "c", "from": ["nowhere:pgd20"]}]}, "should be EVAL:ATTACK"),
    ({"rows": [{"id": "a", "run": {"cpu": {"preset": "demo", "set": {"seed": 1}}}}]}, "needs its own `id`"),
])
def test_table_mistakes_are_one_line(change, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        parse_table("t", tiny_table(**change))


def test_bad_cli_input_is_one_line(tmp_path):
    assert_one_line_error(run_cli("reproduce", "nosuch", "--dry-run"), "unknown table 'nosuch'")
    assert_one_line_error(run_cli("reproduce", "verdict", "--seeds", "0", "--dry-run"), "--seeds must be")
    assert_one_line_error(run_cli("reproduce", "verdict", "--rows", "ghost", "--dry-run", "--no-estimate",
                                  "--out", str(tmp_path)), "no row 'ghost'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: [unclosed\n")
    assert_one_line_error(run_cli("reproduce", str(bad)), "not valid YAML")


def test_listing_and_dry_run(tmp_path):
    proc = run_cli("reproduce")
    assert proc.returncode == 0 and "verdict" in proc.stdout and "cas" in proc.stdout
    proc = run_cli("reproduce", "verdict", "--seeds", "3", "--dry-run", "--no-estimate", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "21 training runs (0 done)" in proc.stdout
    assert "robustact train --preset cas-pgd-at-small-cifar10" in proc.stdout
    assert "--set model.defense_kwargs.mask_scale=2" in proc.stdout
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing


def test_estimates_scale_the_bench_rates(tmp_path):
    """The estimate of a run is epochs × training images / the cached bench rate of its setting."""
    from robustact.reproduce.estimate import estimate, eval_steps

    plan = make_plan(load_table("verdict"), "cpu", 1, tmp_path, available={"cifar10"})
    rates = {"standard_train": 1000.0, "pgd5_train": 100.0, "pgd5_attack": 50.0}
    cache = {}
    for job in plan.trains:
        c = job.config()
        from robustact.bench import Setting

        key = (f"cpu|{c.model.arch}|{json.dumps(c.model.activation)}|"
               f"{Setting(c.training.amp, c.training.channels_last)}|{c.training.attack.steps}|128")
        cache[key] = rates
    (tmp_path / "bench.json").write_text(json.dumps(cache))
    seconds = {k: e.seconds for k, e in estimate(plan, "cpu").items()}
    at = next(t for t in plan.trains if t.row.id == "at")
    assert seconds[at.key] == pytest.approx(6 * (10000 - 500) / 100.0)
    clean = next(t for t in plan.trains if t.row.id == "cifs-clean")
    assert seconds[clean.key] == pytest.approx(6 * 9500 / 1000.0)  # no attack in clean training
    std = next(e for e in plan.evals if e.spec.name == "standard")
    assert eval_steps(std) == 1 + 20 + 100 + 30
    assert seconds[std.key] == pytest.approx(1000 * 151 / (50.0 * 5))


def test_estimates_prefer_what_another_seed_measured(tmp_path, monkeypatch):
    """A job another seed has done is estimated from that seed's log or report (shortest epoch time × epochs;
    report seconds scaled to the image count), the others from bench; a bench cache measured with another thread
    count is measured again."""
    import torch

    from robustact.reproduce import estimate as est

    plan = make_plan(load_table("verdict"), "cpu", 2, tmp_path, available={"cifar10"})
    for job in plan.jobs():
        if job.seed != 0:
            continue
        if isinstance(job, TrainJob):
            job.run_dir.mkdir(parents=True, exist_ok=True)
            epochs = [{"epoch": i, "epoch_seconds": s} for i, s in enumerate([30.0, 90.0, 31.0, 29.0], 1)]
            (job.run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs)
                                                       + "not json\n")
        else:
            job.report.parent.mkdir(parents=True, exist_ok=True)
            job.report.write_text(json.dumps({"n": 500, "seconds": {"pgd20": 100.0, "cw30": 50.0}}))
    stale = {f"cpu|resnet_small|{json.dumps(a)}|fp32+cl|5|128": {"pgd5_train": 1.0, "pgd5_attack": 1.0,
                                                                "standard_train": 1.0,
                                                                "threads": torch.get_num_threads() + 1}
             for a in ("relu", "silu", "sparta")}
    (tmp_path / "bench.json").write_text(json.dumps(stale))
    measured = []
    rates = {"standard_train": 1000.0, "pgd5_train": 100.0, "pgd5_attack": 50.0}
    monkeypatch.setattr(est, "bench_arch", lambda *a, **k: measured.append(a) or rates)
    estimates = est.estimate(plan, "cpu")
    assert measured, "a cache of another thread count is measured again"
    cache = json.loads((tmp_path / "bench.json").read_text())
    assert all(v["threads"] == torch.get_num_threads() for v in cache.values())
    done_on_seed0 = {(j.run_dir.parent.name, getattr(j, "spec", None) and j.spec.name) for j in plan.jobs()
                     if j.seed == 0}
    checked = 0
    for job in plan.jobs():
        e = estimates[job.key]
        sibling_did_it = job.seed == 1 and (job.run_dir.parent.name,
                                            getattr(job, "spec", None) and job.spec.name) in done_on_seed0
        assert e.measured == sibling_did_it, job.key
        if not sibling_did_it:
            continue
        checked += 1
        if isinstance(job, TrainJob):
            assert e.seconds == pytest.approx(job.config().training.epochs * 29.0)   # the idle machine's epoch
        else:
            assert e.seconds == pytest.approx(150.0 * job.n / 500)
    assert checked >= 10 and any(not e.measured for k, e in estimates.items() if "aa-lite" in k)
    # the dry run sums them per row (here every job is to do once the stand-in reports are gone)
    from robustact.reproduce.command import print_plan

    for report in tmp_path.glob("runs/*/seed0/eval/*.json"):
        report.unlink()
    lines = []
    print_plan(plan, estimates, None, log=lines.append)
    at_jobs = [k for k in estimates if " pgd-at-small-cifar10 " in k]
    total = est.human(sum(estimates[k].seconds for k in at_jobs))
    assert f"{total:>9}  {len(at_jobs)} job(s) to do for PGD-AT" in "\n".join(lines)


def test_attack_evaluations_are_estimated_from_other_runs_of_the_architecture(tmp_path, monkeypatch):
    """AutoAttack that no other seed of a row has run is estimated from the same evaluation on other runs of the
    same architecture (bench predicted 6x its measured time); never from a report of another evaluation under the
    same name, another architecture, or for a suite (suites differ per defense)."""
    from robustact.config import dump_config
    from robustact.reproduce import estimate as est

    plan = make_plan(load_table("verdict"), "cpu", 1, tmp_path, available={"cifar10"})
    rates = {"standard_train": 1000.0, "pgd5_train": 100.0, "pgd5_attack": 50.0}
    monkeypatch.setattr(est, "bench_arch", lambda *a, **k: rates)

    def report(job, seconds, n=1000, attacks=("aa",)):
        job.report.parent.mkdir(parents=True, exist_ok=True)
        job.report.write_text(json.dumps({"n": n, "seconds": {"aa": seconds},
                                          "settings": {"suite": None, "attacks": dict.fromkeys(attacks)}}))

    train_of = {t.run_dir: t for t in plan.trains}

    def config(job, arch="resnet_small"):
        job.run_dir.mkdir(parents=True, exist_ok=True)
        text = dump_config(train_of[job.run_dir].config())
        (job.run_dir / "config.yaml").write_text(text.replace("arch: resnet_small", f"arch: {arch}"))

    aa = {e.row.id: e for e in plan.evals if e.spec.name == "aa"}
    std = {e.row.id: e for e in plan.evals if e.spec.name == "standard"}
    for rid in aa:
        config(aa[rid])
    report(aa["cas"], 600.0)
    report(aa["ewas"], 800.0)
    report(aa["sparta"], 60.0, n=100)            # another image count: another evaluation
    report(aa["silu"], 10.0, attacks=("apgd-ce",))  # an evaluation named aa that is not AutoAttack
    report(std["cas"], 5.0)
    before = dict(est.estimate(plan, "cpu"))
    e = before[aa["at"].key]
    assert e.measured and e.seconds == pytest.approx(700.0)   # median of cas and ewas, nothing else
    assert not before[std["at"].key].measured                # a suite: not from another defense's report
    config(aa["cas"], arch="resnet18")                       # another architecture no longer counts
    assert est.estimate(plan, "cpu")[aa["at"].key].seconds == pytest.approx(800.0)


# ---------------------------------------------------------------- a tiny table, run for real
def test_table_matches_its_reports(reproduced):
    name, out, path, _ = reproduced
    data = json.loads((out / "tiny" / "table.json").read_text())
    assert path == out / "tiny" / "table.md" and data["seeds"] == [0, 1] and not data["failed"]
    for row in data["rows"]:
        rid = {"at": "at-tiny", "cas": "cas-tiny"}[row["id"]]
        paper = "paper-base" if row["id"] == "at" else "paper"
        reports = [json.loads((out / "runs" / rid / f"seed{s}" / "eval" / f"{paper}.json").read_text())
                   for s in (0, 1)]
        pgd = row["cells"]["pgd20"]
        assert pgd["values"] == pytest.approx([r["accuracy"]["pgd20"] for r in reports])
        assert pgd["mean"] == pytest.approx(np.mean(pgd["values"]))
        assert pgd["std"] == pytest.approx(np.std(pgd["values"], ddof=1))
        # the all-attack worst case is per example over the reports; "extra" ran on seed 0 only
        extra = json.loads((out / "runs" / rid / "seed0" / "eval" / "extra.json").read_text())
        worst0 = np.asarray(reports[0]["per_example"]["worst_case"]) & np.asarray(extra["per_example"]["worst_case"])
        assert row["cells"]["worst"]["values"][0] == pytest.approx(worst0.mean())
        assert row["cells"]["worst"]["values"][1] == pytest.approx(np.mean(reports[1]["per_example"]["worst_case"]))
    cas = next(r for r in data["rows"] if r["id"] == "cas")
    claimed, final = (np.asarray(cas["cells"][c]["vectors"][0]) for c in ("claimed", "worst"))
    assert cas["verdict"]["drop"]["diff"] == pytest.approx(final.mean() - claimed.mean())
    assert cas["verdict"]["verdict"] in ("holds", "partly", "masking")
    assert cas["verdict"]["rule"] in cas["verdict"]["reason"]
    page = json.loads((out / "tiny" / "audit" / "cas.json").read_text())  # the row's audit page, from its reports
    assert page["verdict"] == cas["verdict"]["verdict"] and page["rule"] == cas["verdict"]["rule"]
    assert page["per_example"]["worst_case"] == cas["cells"]["worst"]["vectors"][0]
    page_md = (out / "tiny" / "audit" / "cas.md").read_text()
    assert "## Rules" in page_md
    # a model-level check every report repeats is one row naming the reports, not one unlabelled row per report
    sanity = page_md.split("## Sanity checks")[1].split("## Rules")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in sanity.splitlines()
            if line.startswith("| ") and not line.startswith("| check") and not line.startswith("| ---")]
    named = [name for r in rows for name in r[3].split(", ")]
    assert rows and {"paper", "extra"} == set(named)
    for check in {r[0] for r in rows}:  # each report says each check once
        reports = [name for r in rows if r[0] == check for name in r[3].split(", ")]
        assert sorted(reports) == ["extra", "paper"], (check, rows)
    assert any(r[3] == "paper, extra" for r in rows)
    assert len(page["sanity"]) > len(rows)  # the JSON keeps every report's flags
    text = path.read_text()
    assert "| AT | " in text and "44.33" in text and "| [1] |" in text and "- [1] a paper, Table 1" in text
    assert "no difference is computed" in text  # cpu scale vs a paper-scale published number
    # each measured cell links to its report (an attack's column) or to the row's audit page (a worst case)
    at_line = next(line for line in text.splitlines() if line.startswith("| AT | "))
    pgd_cell = at_line.split(" | ")[2]
    assert pgd_cell.startswith("[") and pgd_cell.endswith("(../runs/at-tiny/seed0/eval/paper-base.json)")
    assert "(audit/at.md)" in at_line.split(" | ")[-3]  # the worst case
    import re
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (path.parent / target).is_file(), target


def test_readme_block_is_the_table_linked_from_the_readme(reproduced, tmp_path):
    """--readme FILE: the table goes between FILE's markers for it, its links relative to FILE; the rest of FILE
    stays; a FILE without the markers is refused in one line."""
    name, out, _, data_root = reproduced
    readme = out.parent / "README.md"
    readme.write_text("# Project\n\nintro\n<!-- reproduce tiny -->\nold table\n<!-- /reproduce tiny -->\nafter\n")
    proc = run_cli("reproduce", name, "--seeds", "2", "--out", str(out), "--render-only", "--readme", str(readme),
                   "--data-dir", str(data_root))
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert text.startswith("# Project\n\nintro\n<!-- reproduce tiny -->\n| model |") and text.endswith(
        "<!-- /reproduce tiny -->\nafter\n")
    assert "old table" not in text and "[out/tiny/table.md](out/tiny/table.md)" in text
    import re
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert any("out/runs/at-tiny/seed0/eval/" in t for t in targets) and "out/tiny/audit/cas.md" in targets
    assert all((readme.parent / t).is_file() for t in targets)
    bare = tmp_path / "NOTES.md"
    bare.write_text("no markers here\n")
    assert_one_line_error(run_cli("reproduce", name, "--seeds", "2", "--out", str(out), "--render-only",
                                  "--readme", str(bare), "--data-dir", str(data_root)), "<!-- reproduce tiny -->")


def test_paired_difference_over_seeds_is_an_image_bootstrap(reproduced):
    _, out, _, _ = reproduced
    data = json.loads((out / "tiny" / "table.json").read_text())
    cas = next(r for r in data["rows"] if r["id"] == "cas")
    at = next(r for r in data["rows"] if r["id"] == "at")

    def worst(run, seed):
        ev = run / f"seed{seed}" / "eval"
        paper = ev / ("paper.json" if "cas" in run.name else "paper-base.json")
        vec = np.asarray(json.loads(paper.read_text())["per_example"]["worst_case"], dtype=bool)
        if seed == 0:
            vec &= np.asarray(json.loads((ev / "extra.json").read_text())["per_example"]["worst_case"], dtype=bool)
        return vec.astype(int)

    a = [worst(out / "runs" / "cas-tiny", s) for s in (0, 1)]
    b = [worst(out / "runs" / "at-tiny", s) for s in (0, 1)]
    expected = np.mean([x.mean() - y.mean() for x, y in zip(a, b)])
    assert cas["paired"]["diff"] == pytest.approx(expected)
    assert cas["paired"]["low"] <= expected <= cas["paired"]["high"]
    assert cas["paired"]["p_mcnemar"] == pytest.approx(paired_difference(a[0], b[0]).p_value)
    assert at["paired"] is None  # the baseline


def test_baseline_rule_uses_every_seed(reproduced, tmp_path):
    """Rule 4 (below the baseline) on seed 0 alone sees only test-image noise; once a second seed is complete it
    decides on the comparison over seeds, as the table's delta column: a seed-0 gap the next seed reverses is no
    evidence (fails when the verdict reads seed 0 only)."""
    from robustact.reproduce.verdict import row_verdicts

    name, out, _, _ = reproduced
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    high, low = [1] * 30 + [0] * 10, [1] * 10 + [0] * 30
    outcomes = {("at-tiny", 0): high, ("at-tiny", 1): low, ("cas-tiny", 0): low, ("cas-tiny", 1): high}
    for (run, seed), vector in outcomes.items():
        for path in (copy / "runs" / run / f"seed{seed}" / "eval").glob("*.json"):
            report = json.loads(path.read_text())
            report["per_example"] = {k: list(vector) for k in report["per_example"]} | {"clean": [1] * 40}
            report["accuracy"] = {k: sum(vector) / 40 for k in report["accuracy"]} | {"clean": 1.0}
            report["sanity"] = []
            path.write_text(json.dumps(report))
    table = load_table(name)
    one = row_verdicts(make_plan(table, "cpu", 1, copy))["cas"]
    assert (one["verdict"], one["rule"]) == ("partly", "below-baseline")   # seed 0: −50 points
    two = row_verdicts(make_plan(table, "cpu", 2, copy))["cas"]
    assert (two["verdict"], two["rule"]) == ("holds", "holds"), two["reason"]
    assert two["vs_baseline"]["seeds"] == 2 and two["vs_baseline"]["diff"] == pytest.approx(0.0)
    assert "over 2 seeds" in two["reason"]
    page = json.loads((copy / "tiny" / "audit" / "cas.json").read_text())
    assert page["verdict"] == "holds"


def test_paired_difference_over_seeds_matches_a_direct_computation():
    from robustact.evaluation.stats import paired_difference_over_seeds

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, (3, 200)), rng.integers(0, 2, (3, 200))
    pd = paired_difference_over_seeds(a.tolist(), b.tolist(), n_boot=2000)
    assert pd.diff == pytest.approx((a.mean(axis=1) - b.mean(axis=1)).mean())
    assert pd.low < pd.diff < pd.high and pd.seeds == 3 and "over 3 seeds" in pd.format()
    assert pd.p_value == paired_difference(a[0], b[0]).p_value
    with pytest.raises(RobustactError, match="same seeds"):
        paired_difference_over_seeds(a.tolist(), b[:2].tolist())


def test_single_seed_pairs_equal_the_stats_module():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    got = paired_over_seeds([a.tolist()], [b.tolist()])
    ref = paired_difference(a, b, n_boot=10000, seed=0)
    assert (got["diff"], got["low"], got["high"]) == pytest.approx((ref.diff, ref.low, ref.high))


def test_a_second_run_reuses_everything(reproduced, capsys):
    name, out, _, data_root = reproduced
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json") if "eval" in p.parts}
    lines = []
    reproduce(name, seeds=2, out=out, data_root=str(data_root), progress=False, log=lines.append)
    assert not any(line.startswith("[") for line in lines)  # no job ran
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_interrupted_reproduction_resumes_only_what_is_missing(reproduced, tmp_path):
    name, out, _, data_root = reproduced
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "runs" / "cas-tiny" / "seed1" / "eval" / "paper.json").unlink()
    shutil.rmtree(copy / "runs" / "at-tiny" / "seed1")
    lines = []
    reproduce(name, seeds=2, out=copy, data_root=str(data_root), progress=False, log=lines.append)
    ran = [line.split(":")[0] for line in lines if line.startswith("[")]
    assert [r.split("] ")[1] for r in ran] == ["train at-tiny seed 1", "eval paper of cas-tiny seed 1",
                                               "eval paper-base of at-tiny seed 1"]


def test_one_failed_row_does_not_lose_the_others(tmp_path, tiny_cifar):
    data = tiny_table()
    data["rows"][1]["run"]["cpu"]["set"] = TINY | {"model.init_from": str(tmp_path / "missing-run")}
    name = write_table(tmp_path / "broken.yaml", data)
    out = tmp_path / "out"
    proc = run_cli("reproduce", name, "--out", str(out), "--data-dir", str(tiny_cifar), "--no-progress")
    assert proc.returncode == 1, proc.stderr  # the table is written, and the exit status says a row failed
    table = json.loads((out / "broken" / "table.json").read_text())
    assert set(table["failed"]) == {"train cas-tiny seed 0", "eval paper of cas-tiny seed 0",
                                    "eval extra of cas-tiny seed 0"}
    at = next(r for r in table["rows"] if r["id"] == "at")
    assert at["cells"]["pgd20"]["mean"] is not None  # the other row went on
    assert "Traceback" in (out / "broken" / "errors.log").read_text()
    assert "Failed" in (out / "broken" / "table.md").read_text()


def test_a_run_directory_of_another_recipe_is_refused(reproduced, tmp_path):
    name, out, _, data_root = reproduced
    data = tiny_table()
    data["rows"][0]["run"]["cpu"]["set"] = TINY | {"training.optimizer.lr": 0.05}
    other = write_table(tmp_path / "tiny.yaml", data)
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    with pytest.raises(RobustactError, match="holds a run of another recipe.*training.optimizer.lr"):
        reproduce(other, seeds=1, out=copy, dry_run=True, estimate=False, log=lambda *a: None)


def test_launcher_runs_each_job_as_a_command(tmp_path, tiny_cifar):
    """--launcher PREFIX: every job is `PREFIX train|eval ...` (here a plain `python -m robustact`); the result is
    the same table as in-process."""
    import sys

    data = tiny_table()
    data["rows"] = data["rows"][:1]
    data["evals"] = {"paper-base": data["evals"]["paper-base"]}
    data["columns"] = [{"id": "pgd20", "from": ["paper-base:pgd20"]}, {"id": "worst", "worst": ["paper-base"]}]
    data["rows"][0]["evals"] = ["paper-base"]
    data["verdict"] = {"adaptive": "worst"}
    name = write_table(tmp_path / "one.yaml", data)
    lines = []
    reproduce(name, out=tmp_path / "out", data_root=str(tiny_cifar), progress=False, log=lines.append,
              launcher=[sys.executable, "-m", "robustact"])
    assert sum(line.startswith("[") for line in lines) == 2
    table = json.loads((tmp_path / "out" / "one" / "table.json").read_text())
    report = json.loads((tmp_path / "out" / "runs" / "at-tiny" / "seed0" / "eval" / "paper-base.json").read_text())
    assert table["rows"][0]["cells"]["pgd20"]["mean"] == pytest.approx(report["accuracy"]["pgd20"])
    assert table["rows"][0]["verdict"]["verdict"] == "holds"  # its own worst case: nothing to fall below


def test_reproduction_runs_are_labelled_by_recipe_and_seed():
    """Reports, tables and figure files name a run OUT/runs/ID/seedK as ID-seedK, not as `seed0` (which two
    rows share)."""
    from robustact.checkpoints import checkpoint_label

    assert checkpoint_label("out/runs/cas-tiny/seed0") == "cas-tiny-seed0"
    assert checkpoint_label("out/runs/cas-tiny/seed1/checkpoints/best/model.safetensors") == "cas-tiny-seed1"
    assert checkpoint_label("runs/demo") == "demo"


def test_the_shipped_results_are_what_their_reports_say(tmp_path):
    """README's result blocks, the tables and the audit pages in docs/results/reproduce are re-rendered from the
    shipped reports and must come out byte for byte: no hand-edited or stale number."""
    root = Path(__file__).resolve().parents[1]
    shipped = root / "docs" / "results" / "reproduce"
    copy = tmp_path / "docs" / "results" / "reproduce"
    shutil.copytree(shipped, copy)
    shutil.copy(root / "README.md", tmp_path / "README.md")
    names = sorted(p.parent.name for p in shipped.glob("*/table.json"))
    assert {"verdict", "cas", "ewas"} <= set(names)
    for name in names:
        seeds = len(json.loads((shipped / name / "table.json").read_text())["seeds"])
        reproduce(name, seeds=seeds, out=copy, render_only=True, readme=tmp_path / "README.md", log=lambda *a: None)
    assert (tmp_path / "README.md").read_text() == (root / "README.md").read_text()
    for name in names:
        for page in sorted((shipped / name).rglob("*")):
            if page.is_file():
                assert filecmp.cmp(page, copy / page.relative_to(shipped), shallow=False), page
