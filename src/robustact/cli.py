"""`robustact train | eval | audit | compare | sanity | analyze | info | presets | bench` — the command-line face of the
library. Each command parses its flags and calls one library function; bad input is one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset root (default: $ROBUSTACT_DATA, then ~/.cache/robustact)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--download", action="store_true", help="download missing datasets (checksummed)")


# ---------------------------------------------------------------- train
def train_config(args: argparse.Namespace):
    """The typed config of a new run: a preset or a --config file, then --set overrides and flags."""
    from robustact.config import apply_overrides, load_config_file, load_preset, resolve
    from robustact.errors import ConfigError

    if bool(args.preset) == bool(args.config):
        raise ConfigError("give exactly one of --preset NAME or --config FILE (see `robustact presets`)")
    if not args.out:
        raise ConfigError("--out DIR is required: the run directory to create")
    raw = load_preset(args.preset) if args.preset else load_config_file(args.config)
    raw = apply_overrides(raw, args.set or [])
    if args.device:
        raw["device"] = args.device
    if args.download:
        raw["data"]["download"] = True
    return resolve(raw)


def cmd_train(args: argparse.Namespace) -> int:
    from robustact.errors import ConfigError
    from robustact.training import Trainer

    progress = not args.no_progress
    if args.resume:
        if args.preset or args.config or args.set:
            raise ConfigError("--resume continues a run with its saved config; drop --preset/--config/--set")
        trainer = Trainer.resume(args.resume, data_root=args.data_dir, progress=progress)
    else:
        trainer = Trainer(train_config(args), args.out, data_root=args.data_dir, progress=progress)
    out = trainer.fit()
    if trainer.job.main:
        print(f"run directory: {out}")
    if args.eval:
        from robustact.evaluation import EvalOptions

        _eval_and_print(str(out), EvalOptions(progress=progress, data_root=args.data_dir, device=args.device,
                                              download=args.download))
    return 0


# ---------------------------------------------------------------- eval
def _eval_and_print(target: str, options) -> None:
    from robustact.distributed import current
    from robustact.evaluation import run_eval
    from robustact.evaluation.report import format_table

    result = run_eval(target, options)
    if not current().main:  # rank 0 of a torchrun job speaks for it
        return
    meta = result.meta
    print(format_table(result, title=f"{meta['checkpoint']}  ({meta['dataset']} test images 0-{result.n - 1})"))
    classes, clean = meta.get("num_classes") or 10, result.accuracy()["clean"]
    if "model" in meta and clean < 2 / classes:  # a foreign checkpoint near chance
        print(f"robustact: note: clean accuracy {clean:.1%} is near chance for {classes} "
              "classes: check --normalize (the input normalisation the model was trained with) and --arch-opt "
              "(docs/interop.md)", file=sys.stderr)
    if "report" in meta:
        report = Path(meta["report"])
        print(f"report: {report} (+ {report.with_suffix('.md').name})")


def cmd_eval(args: argparse.Namespace) -> int:
    from robustact.evaluation import EvalOptions
    from robustact.evaluation.suites import parse_options

    options = EvalOptions(
        attacks=args.attacks, suite=args.suite, suite_options=parse_options(args.suite_opt or []), only=args.only,
        skip=args.skip,
        protocol=args.protocol, cascade=args.cascade, n=args.n, eps=args.eps, out=args.out, restart=args.restart,
        overwrite=args.overwrite,
        which=args.which, arch=args.arch, num_classes=args.num_classes, batch_size=args.batch_size, seed=args.seed,
        amp=args.amp, norm=args.norm, official=args.official, normalize=args.normalize,
        arch_options=parse_arch_options(args.arch_opt or []),
        sanity_n=args.sanity_n, progress=not args.no_progress, data_root=args.data_dir, device=args.device,
        download=args.download)
    _eval_and_print(args.target, options)
    return 0


# ---------------------------------------------------------------- audit
def cmd_audit(args: argparse.Namespace) -> int:
    from robustact.evaluation.audit import AuditOptions, audit_run
    from robustact.evaluation.suites import parse_options

    options = AuditOptions(
        n=args.n, eps=args.eps, norm=args.norm, which=args.which, arch=args.arch,
        arch_options=parse_arch_options(args.arch_opt or []), num_classes=args.num_classes, normalize=args.normalize,
        batch_size=args.batch_size, seed=args.seed, sanity_n=args.sanity_n, out=args.out, baseline=args.baseline,
        surrogate=args.surrogate, suite_options=parse_options(args.suite_opt or []), overwrite=args.overwrite,
        restart=args.restart, progress=not args.no_progress, data_root=args.data_dir, device=args.device,
        download=args.download)
    result = audit_run(args.target, options)
    print(result.to_markdown(), end="")
    if "report" in result.meta:
        print(f"\naudit: {result.meta['report']} (+ {Path(result.meta['report_json']).name})")
    else:
        print("robustact: note: a checkpoint outside a run: nothing written (--out PATH writes PATH.md + .json and "
              "each side's report, and resumes)", file=sys.stderr)
    return 0


def _norm_name(text: str) -> str:
    """linf / Linf / LINF -> Linf; l2 -> L2 (argparse turns a ValueError into a one-line usage error)."""
    names = {"linf": "Linf", "l2": "L2"}
    if text.strip().lower() not in names:
        raise argparse.ArgumentTypeError(f"expected Linf or L2, got {text!r}")
    return names[text.strip().lower()]


def parse_arch_options(items: list[str]) -> dict:
    """["depth=34,widen_factor=20", "activation=swish"] -> {"depth": 34, "widen_factor": 20, "activation":
    "swish"}: values read as YAML, as --set reads them; the architecture then type-checks them."""
    import yaml

    from robustact.evaluation.suites import parse_options

    pairs = parse_options([part for chunk in items for part in chunk.split(",") if part.strip()], "--arch-opt")
    out = {}
    for key, raw in pairs.items():
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


# ---------------------------------------------------------------- reports, analyses, information
def cmd_compare(args: argparse.Namespace) -> int:
    from robustact.evaluation.compare import format_comparison, merge_reports, merge_with_baseline
    from robustact.fileio import atomic_write_text

    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if args.baseline:
        rows, base = merge_with_baseline(args.reports, args.baseline)
        table = format_comparison(rows, columns, baseline=base)
    else:
        table = format_comparison(merge_reports(args.reports), columns)
    print(table, end="")
    if args.out:
        atomic_write_text(Path(args.out), table)
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    from robustact.evaluation.runner import sanity_from_reports, write_flags

    flags = sanity_from_reports(args.target, args.reports, which=args.which, data_root=args.data_dir,
                                device=args.device, seed=args.seed)
    for f in flags:
        print(f)
    if args.out:
        write_flags(flags, args.out)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from robustact.analysis import AnalysisOptions, run_analysis
    from robustact.analysis.registry import class_option
    from robustact.attacks.base import validate_eps
    from robustact.fields import parse_number

    targets = [Path(t) for t in args.targets]
    out = Path(args.out) if args.out else (targets[0] if targets[0].is_dir() else targets[0].parent) / "analysis"
    options = AnalysisOptions(out=out, class_idx=class_option(args.class_idx), n=args.n,
                              eps=validate_eps(parse_number(args.eps)), which=args.which, data_root=args.data_dir,
                              device=args.device, seed=args.seed)
    for path in run_analysis(args.kind, targets, options):
        print(f"wrote {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from robustact.reproduce import list_tables, load_table
    from robustact.reproduce.command import parse_launcher, reproduce

    if not args.table:
        for name in list_tables():
            table = load_table(name)
            print(f"{name:<10} {table.title}")
        print("robustact reproduce NAME --dry-run shows a table's plan and time estimate")
        return 0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    path = reproduce(args.table, scale=args.scale, seeds=args.seeds, out=args.out, dry_run=args.dry_run,
                     estimate=not args.no_estimate, rows=rows, launcher=parse_launcher(args.launcher),
                     render_only=args.render_only, readme=args.readme, data_root=args.data_dir, device=args.device,
                     progress=not args.no_progress)
    if path is not None and json.loads(path.with_suffix(".json").read_text())["failed"]:
        return 1  # the table is written; a row failed (listed in it)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    import robustact
    from robustact.config import list_presets
    from robustact.data import available_datasets, resolve_data_root
    from robustact.models import list_models
    from robustact.utils import get_device

    root = resolve_data_root(args.data_dir)
    print(f"robustact {robustact.__version__}  python {platform.python_version()}  torch {torch.__version__}")
    dev = get_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {dev} ({name}), {torch.get_num_threads()} CPU threads")
    found = available_datasets(root)
    print(f"data root: {root}  datasets found: {', '.join(found) if found else 'none'}")
    print(f"architectures: {', '.join(list_models())}")
    print(f"presets: {', '.join(list_presets())}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from robustact.config import dump_config, list_presets, load_preset, resolve
    from robustact.errors import RobustactError

    if args.name:
        print(dump_config(resolve(load_preset(args.name))), end="")
        return 0
    for name in list_presets():
        try:
            desc = " ".join(str(load_preset(name).get("description", "")).split())
        except RobustactError as exc:  # one broken preset file must not hide the others
            desc = f"(broken: {exc})"
        print(f"{name:<40} {desc[:100]}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from robustact.bench import run_bench

    run_bench(archs=args.archs.split(","), batch_size=args.batch_size, steps=args.steps, device=args.device,
              pgd_steps=args.pgd_steps, settings=args.settings.split(","), activations=args.activations.split(","))
    return 0


# ---------------------------------------------------------------- the parser
def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--preset", help="recipe name (see `robustact presets`)")
    p.add_argument("--config", help="a YAML config file instead of a preset (may name a preset as its base:)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. training.epochs=30")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    p.add_argument("--eval", action="store_true", help="evaluate the run with its config's attacks when done")
    _add_common(p)
    p.set_defaults(func=cmd_train)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="attack a run or checkpoint; table + JSON/Markdown report")
    p.add_argument("target", help="run directory or checkpoint (.safetensors, or a plain state_dict .pt)")
    p.add_argument("--attacks", help="comma-separated, e.g. fgsm,pgd20,cw (default: the run config's)")
    p.add_argument("--suite", help="quick | standard | paper | adaptive (paper/adaptive: the model's defense)")
    p.add_argument("--suite-opt", action="append", metavar="KEY=VALUE",
                   help="suite option, e.g. aa=apgd-ce+apgd-t, steps=50, square_queries=1000, surrogate=RUN")
    p.add_argument("--only", metavar="NAMES", help="run only these attacks of the suite (comma-separated)")
    p.add_argument("--skip", metavar="NAMES", help="run the suite without these attacks (comma-separated)")
    p.add_argument("--protocol", metavar="DEFENSE",
                   help="run DEFENSE's paper suite on an undefended model (a baseline under the same attacks)")
    p.add_argument("--cascade", metavar="NAMES",
                   help="run these attacks (or 'all') only on examples robust to every attack before them: same "
                        "worst case, less time; their own figures become cumulative")
    p.add_argument("--n", "--num-images", dest="n", type=int,
                   help="first N test images (default: the run config's, 1000); under torchrun write --num-images, "
                        "which torchrun does not take for its own --nnodes")
    p.add_argument("--eps", help="radius: Linf in pixel units, e.g. 8/255 (default: the run's); L2 e.g. 0.5 (default)")
    p.add_argument("--norm", default="Linf", type=_norm_name, help="threat model: Linf (default) or L2")
    p.add_argument("--official", action="store_true",
                   help="also run the official AutoAttack (pyautoattack) beside each AutoAttack, same examples; "
                        "the report has both, per example, and their agreement")
    p.add_argument("--out", help="JSON report path (default: RUN/eval/SUITE.json); an interrupted evaluation "
                                 "resumes from OUT's journal, NAME.partial.json, when run again")
    p.add_argument("--restart", action="store_true", help="discard the journal of an interrupted evaluation")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished report of another evaluation at the report path")
    p.add_argument("--which", default="best", choices=["best", "last"],
                   help="run checkpoint: best on validation (default) or last")
    p.add_argument("--arch", help="architecture of a checkpoint without robustact metadata (robustact info lists "
                                  "them), or auto: read it from the checkpoint's keys")
    p.add_argument("--arch-opt", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                   help="its options, e.g. depth=34,widen_factor=20 or shortcut=input or activation=swish")
    p.add_argument("--num-classes", type=int,
                   help="classes of a checkpoint without robustact metadata (default: from its final layer)")
    p.add_argument("--normalize", metavar="NAME|MEAN,STD",
                   help="the input normalisation the model was trained with: cifar10, cifar10-kuangliu, cifar100, "
                        "svhn, imagenet, none, or numbers (2: all channels; 6: 3 means then 3 stds); it must agree "
                        "with what the checkpoint carries")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--amp", default="none", choices=["none", "bf16"],
                   help="bf16: run the model under autocast (faster on GPUs; agreement with fp32: docs/benchmarks.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sanity-n", type=int, default=200,
                   help="run the gradient-masking sanity checks on the first N images (0: skip)")
    _add_common(p)
    p.set_defaults(func=cmd_eval)


def _audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="is a model's robustness real? claimed vs adaptive attacks, sanity checks, "
                                     "paired CIs, a verdict (holds | partly | masking) on one page")
    p.add_argument("target", help="run directory or checkpoint (.safetensors, or a plain state_dict .pt)")
    p.add_argument("--n", "--num-images", dest="n", type=int, help="first N test images (default: the run's, 1000)")
    p.add_argument("--eps", help="radius: Linf in pixel units, e.g. 8/255 (default: the run's); L2 e.g. 0.5")
    p.add_argument("--norm", default="Linf", type=_norm_name, help="threat model: Linf (default) or L2")
    p.add_argument("--baseline", metavar="RUN",
                   help="a matched undefended model (run or checkpoint): its standard evaluation on the same images, "
                        "compared per example with the audited model's final worst case")
    p.add_argument("--surrogate", metavar="RUN",
                   help="the model transfer attacks are crafted on (default: the audited model's BPDA copy, when it "
                        "has layers without gradients)")
    p.add_argument("--suite-opt", action="append", metavar="KEY=VALUE",
                   help="options of the adaptive side (the defense's adaptive suite, or the generic one: aa=standard "
                        "| e.g. apgd-ce+square, steps=50, square_queries=5000); paper.KEY=VALUE for the paper suite")
    p.add_argument("--out", help="the page's path: OUT.md + OUT.json (default: RUN/eval/audit.md/.json); each side's "
                                 "eval report beside it (OUT-claimed.json, ...), resumed when run again")
    p.add_argument("--overwrite", action="store_true", help="replace side reports of another evaluation")
    p.add_argument("--restart", action="store_true", help="discard the journals of interrupted sides")
    p.add_argument("--which", default="best", choices=["best", "last"], help="run checkpoint: best (default) or last")
    p.add_argument("--arch", help="architecture of a checkpoint without robustact metadata, or auto")
    p.add_argument("--arch-opt", action="append", metavar="KEY=VALUE[,KEY=VALUE]", help="its options")
    p.add_argument("--num-classes", type=int, help="classes of a checkpoint without robustact metadata")
    p.add_argument("--normalize", metavar="NAME|MEAN,STD", help="the input normalisation it was trained with")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sanity-n", type=int, default=200, help="sanity checks on the first N images (0: skip)")
    _add_common(p)
    p.set_defaults(func=cmd_audit)


def _report_parsers(sub) -> None:
    p = sub.add_parser("compare", help="one Markdown table from eval reports (same model: one row, joint worst case)")
    p.add_argument("reports", nargs="+", help="JSON reports written by `robustact eval`")
    p.add_argument("--columns", help="comma-separated attack columns in order (default: all, as first seen)")
    p.add_argument("--baseline", metavar="REPORT_OR_LABEL",
                   help="a row (one of the reports, or a row's label) or another report: every other row gets its "
                        "worst case's paired difference from the baseline's (bootstrap CI over the images, McNemar)")
    p.add_argument("--out", help="also write the table to this file")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sanity", help="gradient-masking sanity checks of a run from its eval reports' per-example "
                                      "results (e.g. its paper and adaptive suites)")
    p.add_argument("target", help="run directory or checkpoint")
    p.add_argument("reports", nargs="+", help="JSON reports of `robustact eval` on that model")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the flags as JSON")
    _add_common(p)
    p.set_defaults(func=cmd_sanity)

    p = sub.add_parser("analyze", help="activation analyses of runs (CSV + PNG), e.g. --kind channels")
    p.add_argument("targets", nargs="+", help="run directories or checkpoints (several are shown side by side)")
    p.add_argument("--kind", required=True, help="channels (CAS), relevance (CIFS), gates (Sparta)")
    p.add_argument("--class", dest="class_idx", metavar="C|mean",
                   help="class whose test images are analysed, or 'mean' (averaged over the classes); default: the "
                        "class the models classify best (highest lowest clean accuracy); gates: all images")
    p.add_argument("--n", "--num-images", dest="n", type=int, default=1000, help="first N test images considered")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--which", default="best", choices=["best", "last"])
    p.add_argument("--out", help="output folder (default: FIRST_RUN/analysis)")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)
    p.set_defaults(func=cmd_analyze)


def _reproduce_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="a paper's table in one command: train, evaluate, table beside the "
                                         "published numbers with seeds and confidence intervals")
    p.add_argument("table", nargs="?", help="table name (none: list them), or a table file NAME.yaml")
    p.add_argument("--scale", default="cpu", choices=["cpu", "paper"],
                   help="cpu: the CPU-sized *-small presets; paper: the papers' networks and budgets")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1 of every row (default 1)")
    p.add_argument("--out", default="runs/reproduce",
                   help="where runs (OUT/runs/ID/seedK, shared by the tables) and tables (OUT/NAME/) go")
    p.add_argument("--dry-run", action="store_true", help="print the plan, what is done, and time estimates")
    p.add_argument("--no-estimate", action="store_true", help="with --dry-run: skip the throughput measurement")
    p.add_argument("--rows", help="run only these rows (comma-separated); the table shows every row")
    p.add_argument("--launcher", help="run each job as LAUNCHER + its robustact arguments, e.g. 'torchrun "
                                      "--standalone --nproc_per_node=8 -m robustact' (default: in this process)")
    p.add_argument("--render-only", action="store_true", help="write the table from the reports on disk; run nothing")
    p.add_argument("--readme", help="also put the table in this Markdown file, between '<!-- reproduce NAME -->' "
                                    "and '<!-- /reproduce NAME -->'")
    _add_common(p)
    p.set_defaults(func=cmd_reproduce)


def _info_parsers(sub) -> None:
    p = sub.add_parser("info", help="versions, device, datasets found, architectures, presets")
    _add_common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("presets", help="list presets, or print one resolved")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("bench", help="training and attack throughput (images/s) on this device")
    p.add_argument("--archs", default="resnet_small,resnet18")
    p.add_argument("--activations", default="relu", help="e.g. relu,silu,sparta: every arch with each")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed iterations per measurement")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--settings", default="fp32",
                   help="comma-separated; each parts joined by +: fp32|bf16|fp16, cl (channels_last), compile — "
                        "e.g. fp32,bf16+cl,bf16+cl+compile")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustact", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_train_parser, _eval_parser, _audit_parser, _report_parsers, _reproduce_parser, _info_parsers):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from robustact.errors import RobustactError

    args = build_parser().parse_args(argv)
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except RobustactError as exc:
        print(f"robustact: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a disk or permission problem not caught where it happened: still one line
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"robustact: error: cannot read or write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustact: interrupted; a training run continues with `robustact train --resume RUN`, an "
              "evaluation when run again with the same command",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `robustact presets | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        from robustact.distributed import shutdown

        shutdown(finished)  # a torchrun job's process group, if this process joined one


if __name__ == "__main__":
    sys.exit(main())
