"""Running a plan: train what is not trained, evaluate what is not evaluated. A run directory that exists is
resumed (a finished one costs a second), one made with another recipe is refused for that row only; a report that
exists is kept. A failing job is recorded (one line in the table, the traceback in OUT/NAME/errors.log) and the
jobs that need it are skipped — the other rows go on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from robustact.config import load_run_config
from robustact.errors import RobustactError
from robustact.fileio import atomic_write_text, make_dirs
from robustact.reproduce.plan import EvalJob, Plan, TrainJob, shell_line

IGNORED_KEYS = ("description", "device")  # where a run was trained does not change what it is


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)       # job key -> one line
    seconds: dict[str, float] = field(default_factory=dict)


def _comparable(config) -> dict:
    data = config.to_dict()
    for key in IGNORED_KEYS:
        data.pop(key, None)
    for key in ("init_from", "activation_from"):  # a path written relative here and absolute there is one path
        if isinstance(data["model"].get(key), str):
            data["model"][key] = str(Path(data["model"][key]).resolve())
    return data


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {vb!r} there, {va!r} in the recipe")
    return out


def check_existing_run(job: TrainJob) -> bool:
    """True when the job's run directory already holds a run (to resume); an error when it holds another recipe."""
    stored = job.run_dir / "config.yaml"
    if not stored.is_file():
        return False
    diffs = _differences(_comparable(job.config()), _comparable(load_run_config(stored)))
    if diffs:
        raise RobustactError(f"{job.run_dir} holds a run of another recipe ({diffs[0]}); move it away or use "
                             "another --out")
    return True


def check_existing_report(job: EvalJob, report: dict | None = None) -> bool:
    """True when the job's report exists; an error when it holds another evaluation under the same name."""
    if report is None:
        try:
            report = json.loads(job.report.read_text())
        except OSError:
            return False
        except ValueError:
            raise RobustactError(f"{job.report} is not a JSON report; move it away") from None
    why = job.differs_from(report) if isinstance(report, dict) else "not a report"
    if why:
        raise RobustactError(f"{job.report} holds another evaluation than {job.spec.name!r} of table "
                             f"{job.row.id!r} asks for ({why}); two tables name different evaluations alike, or the "
                             "table changed: move the report away")
    return True


def _train(job: TrainJob, options: dict) -> None:
    from robustact.training import Trainer

    if check_existing_run(job):
        trainer = Trainer.resume(job.run_dir, data_root=options["data_root"], progress=options["progress"])
    else:
        trainer = Trainer(job.config(), job.run_dir, data_root=options["data_root"], progress=options["progress"])
    trainer.fit()


def _evaluate(job: EvalJob, options: dict) -> None:
    from robustact.evaluation import EvalOptions, run_eval

    s = job.spec
    run_eval(job.run_dir, EvalOptions(
        attacks=s.attacks, suite=s.suite, suite_options=job.options, only=s.only, skip=s.skip, cascade=s.cascade,
        protocol=s.protocol, n=job.n, out=job.report, progress=options["progress"], data_root=options["data_root"],
        device=options["device"]))


def _subprocess(job: TrainJob | EvalJob, options: dict) -> None:
    args = job.command()
    if isinstance(job, TrainJob) and check_existing_run(job):
        args = ["train", "--resume", str(job.run_dir)]
    if options["data_root"]:
        args += ["--data-dir", options["data_root"]]
    if options["device"] and not (isinstance(job, TrainJob) and "--resume" in args):
        args += ["--device", options["device"]]
    args += [] if options["progress"] else ["--no-progress"]
    launcher = options["launcher"] or [sys.executable, "-m", "robustact"]
    result = subprocess.run([*launcher, *args])
    if result.returncode != 0:
        raise RobustactError(f"`{shell_line(args, launcher)}` exited with status {result.returncode}")


def trained_epochs(job: TrainJob) -> int:
    """Epochs in the run's newest complete checkpoint (0: none)."""
    try:
        return int(json.loads((job.run_dir / "checkpoints" / "last" / "info.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def is_done(job: TrainJob | EvalJob) -> bool:
    """An evaluation whose report exists; a run of this recipe with all its epochs (another recipe: an error)."""
    if isinstance(job, EvalJob):
        return check_existing_report(job)
    return check_existing_run(job) and trained_epochs(job) >= job.config().training.epochs


def execute(plan: Plan, *, data_root: str | None = None, device: str | None = None, progress: bool = True,
            launcher: list[str] | None = None, only_rows: list[str] | None = None, log=print) -> Outcome:
    """Run every job of the plan that is not done; return what happened."""
    outcome = Outcome()
    options = {"data_root": data_root, "device": device, "progress": progress, "launcher": launcher}
    errors = plan.out / plan.table.name / "errors.log"
    broken: set[Path] = set()
    jobs = [j for j in plan.jobs() if not only_rows or j.row.id in only_rows]
    for i, job in enumerate(jobs, 1):
        blocked = [p for p in job.needs if p in broken]
        if blocked:
            outcome.failed[job.key] = f"not run: {blocked[0]} failed"
            continue
        start = time.perf_counter()
        try:
            if is_done(job):
                outcome.reused.append(job.key)
                continue
            log(f"[{i}/{len(jobs)}] {job.key}: {shell_line(job.command())}")
            if launcher:
                _subprocess(job, options)
            elif isinstance(job, TrainJob):
                _train(job, options)
            else:
                _evaluate(job, options)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one row's failure must not lose the others
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            outcome.failed[job.key] = line
            if isinstance(job, TrainJob):
                broken.add(job.run_dir)
            make_dirs(errors.parent)
            previous = errors.read_text() if errors.is_file() else ""
            atomic_write_text(errors, previous + f"== {job.key} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n"
                              + "".join(traceback.format_exception(exc)) + "\n")
            log(f"robustact: {job.key} failed: {line} (details: {errors}); going on with the other rows")
            continue
        outcome.seconds[job.key] = time.perf_counter() - start
        outcome.done.append(job.key)
    return outcome
