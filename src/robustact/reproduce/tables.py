"""Reproduction tables as data (`reproduce/tables/*.yaml`): which runs a paper's table needs at each scale, which
evaluations each run meets, which report column fills each cell, and the published values with their source.

A table file is read once into typed, checked objects; a mistake in it is one line naming the key."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from robustact.errors import ConfigError

SCALES = ("cpu", "paper")


@dataclass(frozen=True)
class RunRecipe:
    """One training run: a preset plus overrides. `id` names its directory, shared by every table that needs
    the same recipe (the PGD-AT baseline is trained once for the CAS, EWAS and verdict tables)."""

    id: str
    preset: str
    set: dict[str, Any] = field(default_factory=dict)

    def overrides(self, run_dir_of) -> list[str]:
        """`--set` lines; a value "{run:ROW}" becomes that row's run directory of the same seed."""
        out = []
        for key, value in self.set.items():
            if _is_ref(value):
                value = str(run_dir_of(value[5:-1]))
            out.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")  # JSON is YAML
        return out

    def needs(self) -> list[str]:
        """Rows whose runs this one starts from."""
        return [v[5:-1] for v in self.set.values() if _is_ref(v)]


@dataclass(frozen=True)
class EvalSpec:
    """One `robustact eval` of a run: a suite (with options, `only`, `skip`, `cascade`) or a list of attacks.
    `seeds: first` runs it on the first seed only, `seeds: rest` on the others (its cells then say which)."""

    name: str
    suite: str | None = None
    attacks: list[str] | None = None
    suite_options: dict[str, str] = field(default_factory=dict)
    only: list[str] | None = None
    skip: list[str] | None = None
    cascade: list[str] | None = None
    protocol: str | None = None
    first_seed_only: bool = False
    later_seeds_only: bool = False     # `seeds: rest`: what the first seed gets from a stronger evaluation

    def options(self, run_dir_of, extra: dict | None = None) -> dict[str, str]:
        """Its suite options for one row (the row's own `options` on top); "{run:ROW}" is that row's run."""
        merged = {**self.suite_options, **(extra or {})}
        return {k: str(run_dir_of(v[5:-1])) if _is_ref(v) else str(v) for k, v in merged.items()}

    def needs(self, extra: dict | None = None) -> list[str]:
        return [v[5:-1] for v in {**self.suite_options, **(extra or {})}.values() if _is_ref(v)]


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("{run:") and value.endswith("}")


@dataclass(frozen=True)
class Column:
    """A measured column: robust accuracy of the first report/attack found in `sources` ("EVAL:ATTACK"), or the
    per-example worst case over the reports of the evaluations in `worst`."""

    id: str
    label: str
    sources: list[tuple[str, str]] = field(default_factory=list)
    worst: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    runs: dict[str, RunRecipe]                      # scale -> recipe (a scale it lacks: the row is not run there)
    evals: list[str]
    published: dict[str, float] = field(default_factory=dict)   # column id -> value (%), from `cite`
    cite: str = ""
    baseline: str | None = None                     # row id for the paired difference (default: the table's;
                                                    # "none": no baseline)
    show: bool = True                               # False: a prerequisite run (e.g. CIFS's clean start)
    needs_data: str | None = None                   # a dataset this row needs that may not be here (svhn)
    note: str = ""
    options: dict[str, dict] = field(default_factory=dict)   # eval name -> suite options of this row

    def needs(self, table: Table, scale: str) -> set[str]:
        """Rows whose runs this row's run or evaluations need (a start, a surrogate)."""
        return set(self.runs[scale].needs()) | {
            x for e in self.evals for x in table.evals[e].needs(self.options.get(e))}


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    description: str
    evals: dict[str, EvalSpec]
    columns: list[Column]
    rows: list[Row]
    baseline: str | None
    compare: str | None                             # column id whose per-example vectors the paired CI uses
    n: dict[str, int]                               # scale -> test images
    verdict: dict[str, str] = field(default_factory=dict)   # claimed/adaptive column ids for the verdict
    notes: list[str] = field(default_factory=list)

    def row(self, row_id: str) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise ConfigError(f"table {self.name}: no row {row_id!r}; rows: {', '.join(r.id for r in self.rows)}")

    def column(self, column_id: str) -> Column:
        for column in self.columns:
            if column.id == column_id:
                return column
        raise ConfigError(f"table {self.name}: no column {column_id!r}")


# ---------------------------------------------------------------- reading
def _keys(data: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known here: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")
    return data


def _list(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a list of names")


def _recipe(data: Any, where: str) -> RunRecipe:
    if isinstance(data, str):
        return RunRecipe(id=data, preset=data)
    d = _keys(data, where, {"id", "preset", "set"}, {"preset"})
    sets = d.get("set") or {}
    if not isinstance(sets, dict):
        raise ConfigError(f"{where}.set: expected a mapping of config keys to values")
    if sets and "id" not in d:
        raise ConfigError(f"{where}: a recipe with `set` needs its own `id` (its run directory's name)")
    return RunRecipe(id=str(d.get("id", d["preset"])), preset=str(d["preset"]), set=dict(sets))


def _eval(name: str, data: Any, where: str) -> EvalSpec:
    d = _keys(data, where, {"suite", "attacks", "suite_opt", "only", "skip", "cascade", "protocol", "seeds"})
    if bool(d.get("suite")) == bool(d.get("attacks")):
        raise ConfigError(f"{where}: give exactly one of suite or attacks")
    seeds = d.get("seeds", "all")
    if seeds not in ("all", "first", "rest"):
        raise ConfigError(f"{where}.seeds: expected all, first or rest, got {seeds!r}")
    return EvalSpec(name=name, suite=d.get("suite"), attacks=_list(d.get("attacks"), f"{where}.attacks"),
                    suite_options={str(k): v for k, v in (d.get("suite_opt") or {}).items()},
                    only=_list(d.get("only"), f"{where}.only"), skip=_list(d.get("skip"), f"{where}.skip"),
                    cascade=_list(d.get("cascade"), f"{where}.cascade"),
                    protocol=d.get("protocol"), first_seed_only=seeds == "first", later_seeds_only=seeds == "rest")


def _column(data: Any, where: str, evals: dict) -> Column:
    d = _keys(data, where, {"id", "label", "from", "worst"}, {"id"})
    sources = []
    for item in _list(d.get("from"), f"{where}.from") or []:
        ev, sep, attack = item.partition(":")
        if not sep or ev not in evals:
            raise ConfigError(f"{where}.from: {item!r} should be EVAL:ATTACK with EVAL one of {', '.join(evals)}")
        sources.append((ev, attack))
    worst = _list(d.get("worst"), f"{where}.worst") or []
    for ev in worst:
        if ev not in evals:
            raise ConfigError(f"{where}.worst: unknown evaluation {ev!r}; known: {', '.join(evals)}")
    if bool(sources) == bool(worst):
        raise ConfigError(f"{where}: give exactly one of from or worst")
    return Column(id=str(d["id"]), label=str(d.get("label", d["id"])), sources=sources, worst=worst)


def _row(data: Any, where: str, evals: dict, columns: set[str]) -> Row:
    d = _keys(data, where, {"id", "label", "run", "evals", "published", "cite", "baseline", "show", "needs_data",
                            "note", "options"}, {"id", "run"})
    run = _keys(d["run"], f"{where}.run", set(SCALES))
    names = _list(d.get("evals"), f"{where}.evals") or []
    for ev in names:
        if ev not in evals:
            raise ConfigError(f"{where}.evals: unknown evaluation {ev!r}; known: {', '.join(evals)}")
    options = d.get("options") or {}
    for ev, opts in options.items():
        if ev not in names or not isinstance(opts, dict):
            raise ConfigError(f"{where}.options.{ev}: expected suite options of one of this row's evaluations")
    published = d.get("published") or {}
    for key, value in published.items():
        if key not in columns:
            raise ConfigError(f"{where}.published: no column {key!r}; columns: {', '.join(sorted(columns))}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}.published.{key}: expected a number (%), got {value!r}")
    if published and not d.get("cite"):
        raise ConfigError(f"{where}: published values need `cite` (paper and table)")
    return Row(id=str(d["id"]), label=str(d.get("label", d["id"])),
               runs={scale: _recipe(r, f"{where}.run.{scale}") for scale, r in run.items()}, evals=names,
               published={k: float(v) for k, v in published.items()}, cite=str(d.get("cite", "")),
               baseline=d.get("baseline"), show=bool(d.get("show", True)), needs_data=d.get("needs_data"),
               note=str(d.get("note", "")), options={k: dict(v) for k, v in options.items()})


def parse_table(name: str, data: Any) -> Table:
    where = f"table {name}"
    d = _keys(data, where, {"title", "description", "evals", "columns", "rows", "baseline", "compare", "n",
                            "verdict", "notes"}, {"title", "evals", "columns", "rows"})
    raw_evals = _keys(d["evals"], f"{where}.evals", set(d["evals"]))
    evals = {k: _eval(k, v, f"{where}.evals.{k}") for k, v in raw_evals.items()}
    columns = [_column(c, f"{where}.columns[{i}]", evals) for i, c in enumerate(d["columns"])]
    ids = {c.id for c in columns}
    rows = [_row(r, f"{where}.rows[{i}]", evals, ids) for i, r in enumerate(d["rows"])]
    n = {"cpu": 1000, "paper": 10000} | dict(_keys(d.get("n") or {}, f"{where}.n", set(SCALES)))
    table = Table(name=name, title=str(d["title"]), description=" ".join(str(d.get("description", "")).split()),
                  evals=evals, columns=columns, rows=rows, baseline=d.get("baseline"), compare=d.get("compare"),
                  n=n, verdict=dict(d.get("verdict") or {}),
                  notes=[" ".join(str(x).split()) for x in d.get("notes") or []])
    _check_references(table)
    return table


def _check_references(table: Table) -> None:
    row_ids = [r.id for r in table.rows]
    if len(set(row_ids)) != len(row_ids):
        raise ConfigError(f"table {table.name}: row ids repeat")
    for row in table.rows:
        refs = [None if row.baseline == "none" else row.baseline or table.baseline]
        refs += [x for r in row.runs.values() for x in r.needs()]
        refs += [x for e in row.evals for x in table.evals[e].needs(row.options.get(e))]
        for ref in refs:
            if ref is not None and ref not in row_ids:
                raise ConfigError(f"table {table.name}, row {row.id}: refers to no row {ref!r}")
    if table.compare:
        table.column(table.compare)
    for key in ("claimed", "adaptive", "baseline_column"):
        if key in table.verdict:
            table.column(table.verdict[key])


def list_tables() -> list[str]:
    folder = resources.files("robustact.reproduce") / "tables"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_table(name: str) -> Table:
    """A built-in table by name, or a table file (`*.yaml`: your own table in the same format)."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read table file {path}: {exc.strerror or exc}") from None
        name = path.stem
    elif name not in list_tables():
        raise ConfigError(f"unknown table {name!r}; known: {', '.join(list_tables())} (robustact reproduce), or "
                          "a table file NAME.yaml")
    else:
        text = (resources.files("robustact.reproduce") / "tables" / f"{name}.yaml").read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"table {name}: not valid YAML ({exc.__class__.__name__})") from None
    return parse_table(name, data)
