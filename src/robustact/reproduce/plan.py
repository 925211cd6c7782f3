"""A table at one scale and number of seeds, as the jobs that fill it: one training run per (row, seed) and one
evaluation per (row, evaluation, seed), in an order where every job comes after what it needs, seed by seed (so
an interrupted reproduction has whole seeds done first). Each job is also shown as the `robustact` command that
does the same, which is what `--dry-run` prints and what `--launcher` runs."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from robustact.config import apply_overrides, load_preset, resolve
from robustact.config.schema import RunConfig
from robustact.errors import ConfigError
from robustact.reproduce.tables import SCALES, EvalSpec, Row, RunRecipe, Table


@dataclass
class TrainJob:
    row: Row
    recipe: RunRecipe
    seed: int
    run_dir: Path
    overrides: list[str]
    needs: list[Path] = field(default_factory=list)   # run directories that must be trained first

    @property
    def key(self) -> str:
        return f"train {self.recipe.id} seed {self.seed}"

    def config(self) -> RunConfig:
        raw = apply_overrides(load_preset(self.recipe.preset), [*self.overrides, f"seed={self.seed}"])
        return resolve(raw)

    def command(self) -> list[str]:
        sets = [x for o in [*self.overrides, f"seed={self.seed}"] for x in ("--set", o)]
        return ["train", "--preset", self.recipe.preset, "--out", str(self.run_dir), *sets]


@dataclass
class EvalJob:
    row: Row
    spec: EvalSpec
    seed: int
    run_dir: Path
    n: int
    options: dict[str, str]
    needs: list[Path] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"eval {self.spec.name} of {self.run_dir.parent.name} seed {self.seed}"

    @property
    def report(self) -> Path:
        return self.run_dir / "eval" / f"{self.spec.name}.json"

    def differs_from(self, report: dict) -> str | None:
        """How a report shows another evaluation than this job (None: the same). Two tables naming
        different evaluations alike on one run would otherwise share one report file and one table would show the
        other's numbers. Suite option values are not compared: run paths in them depend on how --out is spelled."""
        s, settings = self.spec, report.get("settings") or {}
        names = set(settings.get("attacks") or {})
        checks = [("suite", settings.get("suite"), s.suite),
                  ("protocol", settings.get("protocol"), s.protocol if s.suite else None),
                  ("suite options", sorted(o.split("=", 1)[0] for o in settings.get("suite_options") or []),
                   sorted(self.options)),
                  ("test images", report.get("n"), self.n)]
        if s.attacks:
            checks.append(("attacks", sorted(names), sorted(s.attacks)))
        if s.only:
            checks.append(("attacks", sorted(names), sorted(s.only)))
        if s.skip and names & set(s.skip):
            checks.append(("attacks", sorted(names), f"none of {', '.join(s.skip)}"))
        return next((f"{what} {there!r}, not {here!r}" for what, there, here in checks if there != here), None)

    def command(self) -> list[str]:
        s = self.spec
        cmd = ["eval", str(self.run_dir), "--num-images", str(self.n), "--out", str(self.report)]
        cmd += ["--suite", s.suite] if s.suite else ["--attacks", ",".join(s.attacks or [])]
        for key, value in self.options.items():
            cmd += ["--suite-opt", f"{key}={value}"]
        if s.only:
            cmd += ["--only", ",".join(s.only)]
        if s.skip:
            cmd += ["--skip", ",".join(s.skip)]
        if s.cascade:
            cmd += ["--cascade", ",".join(s.cascade)]
        if s.protocol:
            cmd += ["--protocol", s.protocol]
        return cmd


@dataclass
class Plan:
    table: Table
    scale: str
    seeds: list[int]
    out: Path
    trains: list[TrainJob]
    evals: list[EvalJob]
    skipped: dict[str, str]          # row id -> why it is not run at this scale (e.g. no SVHN here)

    def jobs(self) -> list[TrainJob | EvalJob]:
        """Seed by seed: every row's training (in dependency order), then the evaluations in the order the table
        declares them (cheap ones first), row by row — so that what is done early is whole columns."""
        order = list(self.table.evals)
        out: list[TrainJob | EvalJob] = []
        for seed in self.seeds:
            out += [t for t in self.trains if t.seed == seed]
            out += sorted((e for e in self.evals if e.seed == seed), key=lambda e: order.index(e.spec.name))
        return out


def run_dir(out: Path, recipe: RunRecipe, seed: int) -> Path:
    """Where a recipe's run of one seed lives: OUT/runs/ID/seedK (shared by every table)."""
    return out / "runs" / recipe.id / f"seed{seed}"


def _ordered(table: Table, scale: str) -> list[Row]:
    """Rows with a recipe at this scale, each after the rows it refers to (runs or surrogates)."""
    rows = [r for r in table.rows if scale in r.runs]
    done: list[Row] = []
    pending = list(rows)
    while pending:
        for row in pending:
            deps = row.needs(table, scale)
            if deps <= {r.id for r in done}:
                done.append(row)
                pending.remove(row)
                break
        else:
            missing = {x for r in pending for x in r.runs[scale].needs()} - {r.id for r in rows}
            what = f"rows without a {scale} run: {', '.join(sorted(missing))}" if missing else "a cycle"
            raise ConfigError(f"table {table.name}: rows {', '.join(r.id for r in pending)} depend on {what}")
    return done


def make_plan(table: Table, scale: str, seeds: int, out: Path, available: set[str] | None = None) -> Plan:
    """The jobs of `table` at `scale` with seeds 0..seeds-1 under `out`; rows needing a dataset that is not in
    `available` are skipped with a reason (and so are the rows that depend on them)."""
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be a positive integer, got {seeds!r}")
    out = Path(out)
    skipped = {r.id: f"no {scale} recipe" for r in table.rows if scale not in r.runs}
    rows = _ordered(table, scale)
    for row in rows:
        deps = row.needs(table, scale)
        if row.needs_data and available is not None and row.needs_data not in available:
            skipped[row.id] = (f"needs {row.needs_data.upper()}, which is not in the data root: put the official "
                               f"train_32x32.mat / test_32x32.mat under DATA/{row.needs_data}/ or pass --download")
        elif deps & set(skipped):
            skipped[row.id] = f"depends on {', '.join(sorted(deps & set(skipped)))}, which is not run"
    by_id = {r.id: r for r in rows}
    trains, evals = [], []
    for seed in range(seeds):
        def dir_of(row_id: str, seed: int = seed) -> Path:
            return run_dir(out, by_id[row_id].runs[scale], seed)

        for row in rows:
            if row.id in skipped:
                continue
            recipe = row.runs[scale]
            here = dir_of(row.id)
            trains.append(TrainJob(row, recipe, seed, here, recipe.overrides(dir_of),
                                   [dir_of(x) for x in recipe.needs()]))
            for name in row.evals:
                spec = table.evals[name]
                if (spec.first_seed_only and seed > 0) or (spec.later_seeds_only and seed == 0):
                    continue
                extra = row.options.get(name)
                evals.append(EvalJob(row, spec, seed, here, table.n[scale], spec.options(dir_of, extra),
                                     [here] + [dir_of(x) for x in spec.needs(extra)]))
    return Plan(table, scale, list(range(seeds)), out, trains, evals, skipped)


def shell_line(args: list[str], launcher: list[str] | None = None) -> str:
    prefix = launcher or ["robustact"]
    return " ".join(shlex.quote(a) for a in [*prefix, *args])
