"""`robustact reproduce NAME`: plan, (optionally) show the plan with time estimates, run it, write the table."""

from __future__ import annotations

import shlex
from pathlib import Path

from robustact.data import available_datasets
from robustact.errors import RobustactError
from robustact.reproduce.execute import check_existing_report, check_existing_run, execute, trained_epochs
from robustact.reproduce.plan import EvalJob, Plan, TrainJob, make_plan, shell_line
from robustact.reproduce.render import write
from robustact.reproduce.tables import load_table
from robustact.reproduce.verdict import row_verdicts


def status(job: TrainJob | EvalJob) -> str:
    if isinstance(job, EvalJob):
        if check_existing_report(job):
            return "done"
        return "partial" if job.report.with_name(job.report.stem + ".partial.json").is_file() else "to do"
    check_existing_run(job)  # another recipe in its directory: one line, before anything runs
    epochs, total = trained_epochs(job), job.config().training.epochs
    return "done" if epochs >= total else (f"epoch {epochs}/{total}" if epochs else "to do")


def print_plan(plan: Plan, estimates: dict | None, launcher: list[str] | None, log=print) -> None:
    """Each job with its status, estimate ('~': measured on another seed, or for
    an attack evaluation on another run of the architecture) and command; then the time left."""
    from robustact.reproduce.estimate import human

    jobs = plan.jobs()
    states = {j.key: status(j) for j in jobs}
    trains = [j for j in jobs if isinstance(j, TrainJob)]
    log(f"table {plan.table.name} ({plan.scale} scale, seeds {', '.join(map(str, plan.seeds))}, test images "
        f"0-{plan.table.n[plan.scale] - 1}) -> {plan.out / plan.table.name / 'table.md'}")
    log(f"{len(trains)} training runs ({sum(states[j.key] == 'done' for j in trains)} done), "
        f"{len(jobs) - len(trains)} evaluations ({sum(states[j.key] == 'done' for j in jobs if j not in trains)} "
        "done)")
    left = {True: 0.0, False: 0.0}
    per_row: dict[str, list[float]] = {}   # row label -> the estimates of its jobs to do
    for job in jobs:
        est = estimates.get(job.key) if estimates else None
        if est is not None and states[job.key] != "done":
            left[est.measured] += est.seconds
            per_row.setdefault(job.row.label, []).append(est.seconds)
        when = "" if est is None else ("~" if est.measured else "") + human(est.seconds)
        log(f"  {when:>9}  {states[job.key]:<11} {job.key}\n{'':24}{shell_line(job.command(), launcher)}")
    if estimates:
        for label, seconds in per_row.items():
            log(f"  {human(sum(seconds)):>9}  {len(seconds)} job(s) to do for {label}")
        log(f"to do: about {human(left[True] + left[False])} on this device ({human(left[True])} of it as measured "
            "on other seeds or runs ('~'); the rest from robustact bench rates × epochs and nominal attack steps, "
            "without validation, data loading and defense overheads)")
    for row, why in plan.skipped.items():
        log(f"  not run: {row}: {why}")


def reproduce(name: str, *, scale: str = "cpu", seeds: int = 1, out: str | Path = "runs/reproduce",
              dry_run: bool = False, estimate: bool = True, rows: list[str] | None = None,
              launcher: list[str] | None = None, render_only: bool = False, readme: str | Path | None = None,
              data_root: str | None = None, device: str | None = None, progress: bool = True,
              log=print) -> Path | None:
    """Run (or, with `dry_run`, show) the plan of table `name`, then write OUT/NAME/table.md and .json (and
    `readme`'s block of the table)."""
    table = load_table(name)
    plan = make_plan(table, scale, seeds, Path(out), available=set(available_datasets(data_root)))
    unknown = [r for r in rows or [] if r not in {x.id for x in table.rows}]
    if unknown:
        raise RobustactError(f"--rows: table {table.name} has no row {unknown[0]!r}; rows: "
                             f"{', '.join(r.id for r in table.rows)}")
    command = shell_line(["reproduce", name, "--scale", scale, "--seeds", str(seeds)])
    if dry_run:
        estimates = None
        if estimate:
            from robustact.reproduce.estimate import estimate as estimate_plan

            estimates = estimate_plan(plan, device)
        print_plan(plan, estimates, launcher, log)
        return None
    failed = {}
    if not render_only:
        failed = execute(plan, data_root=data_root, device=device, progress=progress, launcher=launcher,
                         only_rows=rows, log=log).failed
    path = write(plan, command, failed, row_verdicts(plan), readme=Path(readme) if readme else None)
    log(f"table: {path} (+ table.json)" + (f"; {len(failed)} job(s) failed, listed there" if failed else ""))
    return path


def parse_launcher(text: str | None) -> list[str] | None:
    """"torchrun --standalone --nproc_per_node=4 -m robustact" -> its words (the prefix of each job's command)."""
    if not text:
        return None
    words = shlex.split(text)
    if not words:
        raise RobustactError("--launcher is empty; e.g. --launcher 'torchrun --standalone --nproc_per_node=4 -m "
                             "robustact'")
    return words
