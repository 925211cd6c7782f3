"""Evaluation as a library call: `open_run` (a run or checkpoint as a model plus its test images, ready on a
device) and `run_eval` (attack it with a suite or a list of attacks, sanity checks, report and resume journal).
`robustact eval`, `robustact train --eval`, the analyses and `robustact sanity` are thin layers over these."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustact import distributed
from robustact.attacks.base import NORMS, validate_eps
from robustact.attacks.registry import make_attack, official_counterpart, parse_attack_list
from robustact.attacks.result import EvalResult
from robustact.checkpoints import load_model, run_of
from robustact.config import DEFAULTS, RunConfig
from robustact.data import dataset_info, test_split
from robustact.errors import RobustactError
from robustact.evaluation.engine import evaluate
from robustact.evaluation.journal import EvalJournal, file_digest, journal_path
from robustact.evaluation.report import result_from_report, write_reports
from robustact.evaluation.sanity import SanityFlag, run_sanity_checks
from robustact.evaluation.suites import build_suite
from robustact.fields import parse_number
from robustact.fileio import WriterLock
from robustact.utils import check_amp, get_device, seed_everything

L2_DEFAULT_EPS = 0.5  # RobustBench's L2 threat model on CIFAR-10


@dataclass
class OpenedRun:
    """A model ready to attack: eval mode on `device`, with the first n test images of its run's data as float
    images in [0, 1] (`x`) and labels (`y`) on the same device."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    config: RunConfig
    weights: Path
    device: torch.device

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def images(self) -> str:
        """What the images are, as reports say it."""
        classes = self.config.data.classes
        return f"first {self.n} test images" + (f" of classes {classes}" if classes else "")


def _with_test_images(model: nn.Module, config: RunConfig, weights: Path, n: int | None, device: str | None,
                      data_root: str | None, download: bool) -> OpenedRun:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise RobustactError(f"the number of test images must be a positive integer, got {n!r}")
    dev = get_device(device or config.device)
    d = config.data
    total = dataset_info(d.dataset).num_test
    if n is not None and n > total:
        raise RobustactError(f"asked for the first {n} test images but {d.dataset} has {total}; use 1..{total}")
    x_u8, y = test_split(d.dataset, n, classes=d.classes, root=data_root, download=download or d.download)
    if n is not None and len(y) < n:
        what = f"the test images of classes {d.classes}" if d.classes else f"the {d.dataset} test split here"
        raise RobustactError(f"asked for the first {n} test images but {what} has {len(y)}; use 1..{len(y)}")
    return OpenedRun(model.to(dev), x_u8.to(dev).float().div_(255), y.to(dev), config, weights, dev)


def open_run(target: str | Path, which: str = "best", n: int | None = None, device: str | None = None, *,
             arch: str | None = None, num_classes: int | None = None, data_root: str | None = None,
             download: bool = False, normalize: Any = None, arch_options: dict | None = None) -> OpenedRun:
    """Load a run directory or checkpoint and the first `n` test images (all when None) of its data."""
    model, config, weights = load_model(target, which=which, arch=arch, num_classes=num_classes,
                                        normalize=normalize, **(arch_options or {}))
    return _with_test_images(model, config, weights, n, device, data_root, download)


@dataclass
class EvalOptions:
    """What `run_eval` runs, and how. Unset values come from the run's config (`eval:` section)."""

    attacks: str | list[str] | None = None   # attack names, e.g. "fgsm,pgd20,cw" (default: the config's)
    suite: str | None = None                 # quick | standard | paper | adaptive (instead of attacks)
    suite_options: dict[str, str] = field(default_factory=dict)  # the suite's options (--suite-opt)
    only: str | list[str] | None = None      # run only these attacks of the suite
    skip: str | list[str] | None = None      # run the suite without these attacks
    protocol: str | None = None              # a defense's paper suite on an undefended model
    cascade: str | list[str] | None = None   # these attacks (or "all") only on examples robust so far
    n: int | None = None                     # the first n test images (default: the config's, 1000)
    eps: float | str | None = None           # radius; L-inf in pixel units (default: the config's, 8/255; L2: 0.5)
    norm: str = "Linf"                       # threat model: Linf | L2
    out: str | Path | None = None            # report path (default: RUN/eval/NAME.json; none for a bare file)
    restart: bool = False                    # discard the journal of an interrupted evaluation
    overwrite: bool = False                  # replace a finished report of another evaluation at `out`
    which: str = "best"                      # run checkpoint: best (validation) or last
    arch: str | None = None                  # architecture of a checkpoint without robustact metadata, or "auto"
    arch_options: dict = field(default_factory=dict)  # its options, e.g. {"depth": 34, "widen_factor": 20}
    num_classes: int | None = None           # its classes (default: read from its final layer)
    normalize: Any = None                    # the input normalisation it was trained with (cifar10 | none | ...)
    official: bool = False                   # also run the official AutoAttack beside each AutoAttack
    batch_size: int | None = None            # images per attack call (default: the config's, 250)
    amp: str = "none"                        # none | bf16: the model under autocast (GPU, or CPU)
    seed: int = 0
    sanity_n: int = 200                      # sanity checks on the first N images (0: none)
    progress: bool = True
    data_root: str | None = None
    device: str | None = None
    download: bool = False


def _names(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]


def _subset(attacks: dict, names: list[str], flag: str) -> dict:
    """The attacks named, in the suite's order; an unknown name is an error."""
    unknown = [n for n in names if n not in attacks]
    if unknown:
        raise RobustactError(f"{flag}: no attack {unknown[0]!r} here; the attacks are: {', '.join(attacks)}")
    return {name: a for name, a in attacks.items() if name in names}


def select_attacks(model: nn.Module, eps: float, options: EvalOptions, config: RunConfig) -> dict:
    """The attacks an evaluation runs: a suite (optionally `only` some), or attacks by name; with `official`,
    the official AutoAttack right after each of robustact's."""
    if options.suite and options.attacks:
        raise RobustactError("give --suite or --attacks, not both")
    if not options.suite and (options.suite_options or options.only or options.skip or options.protocol):
        raise RobustactError("--suite-opt, --only, --skip and --protocol go with --suite")
    if options.suite:
        attacks = build_suite(options.suite, model, eps, seed=options.seed, options=options.suite_options,
                              protocol=options.protocol, norm=options.norm)
        attacks = _subset(attacks, _names(options.only), "--only") if options.only else attacks
        if options.skip:
            skipped = _subset(attacks, _names(options.skip), "--skip")
            attacks = {name: a for name, a in attacks.items() if name not in skipped}
            if not attacks:
                raise RobustactError("--skip leaves no attack of the suite to run")
    else:
        names = parse_attack_list(options.attacks or config.eval.attacks)
        attacks = {name: make_attack(name, eps, options.norm, seed=options.seed) for name in names}
    return with_official(attacks, eps, options) if options.official else attacks


def with_official(attacks: dict, eps: float, options: EvalOptions) -> dict:
    """Each AutoAttack followed by the official implementation's run of the same version."""
    out = {}
    for name, attack in attacks.items():
        out[name] = attack
        twin = official_counterpart(name)
        if twin and twin not in attacks:
            out[twin] = make_attack(twin, eps, options.norm, seed=options.seed)
    if len(out) == len(attacks):
        raise RobustactError("--official re-runs AutoAttack with the official code, but this evaluation has no "
                             "AutoAttack; add aa (or aa-plus, aa-rand) to --attacks")
    return out


def default_eps(options: EvalOptions, config: RunConfig) -> float:
    """--eps, else the run's ε for L∞ and 0.5 for L2 (RobustBench's CIFAR-10 L2 threat model)."""
    if options.norm not in NORMS:
        raise RobustactError(f"--norm must be one of {', '.join(NORMS)}, got {options.norm!r}")
    if options.eps is not None:
        return validate_eps(parse_number(options.eps), options.norm)
    return validate_eps(parse_number(config.eval.eps) if options.norm == "Linf" else L2_DEFAULT_EPS, options.norm)


def _check(options: EvalOptions) -> None:
    """Numbers that would silently become other numbers are refused before anything runs."""
    for key, low in (("n", 1), ("batch_size", 1), ("sanity_n", 0)):
        value = getattr(options, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise RobustactError(f"--{key.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if options.which not in ("best", "last"):
        raise RobustactError(f"--which must be best or last, got {options.which!r}")


def report_path(options: EvalOptions, run_dir: Path | None) -> Path | None:
    """`--out`, else `RUN/eval/NAME.json` named by what it evaluates (suite, protocol, `-last` for the last
    checkpoint); None for a checkpoint outside a run."""
    if options.out:
        return Path(options.out)
    if run_dir is None:
        return None
    stem = f"{options.suite}-{options.protocol}" if options.protocol else (options.suite or "eval")
    return run_dir / "eval" / f"{stem}{'-last' if options.which == 'last' else ''}.json"


def _refuse_to_replace(out: Path, settings: dict, overwrite: bool) -> None:
    """A finished report of another evaluation is not silently replaced."""
    if overwrite or not out.is_file():
        return
    try:
        previous = json.loads(out.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous == json.loads(json.dumps(settings)):
        return  # the same evaluation again: same result for seeded attacks
    differ = "made by an earlier release" if not isinstance(previous, dict) else "other " + ", ".join(
        sorted(k for k in settings.keys() | previous.keys() if previous.get(k) != settings.get(k)))
    raise RobustactError(f"{out} holds the report of another evaluation ({differ}); pass --overwrite to replace "
                         "it, or --out for another file")


def finished_report(out: Path, settings: dict) -> EvalResult | None:
    """The result in the finished report at `out` when it was made with exactly `settings`, else None."""
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("settings") != json.loads(json.dumps(settings)):
        return None
    try:
        result = result_from_report(data)
    except (KeyError, TypeError, ValueError):
        return None
    result.meta |= {"report": str(out), "reused": True}
    return result


def _open_report(out: Path | None, settings: dict, options: EvalOptions) -> tuple[WriterLock, EvalJournal] | None:
    """Rank 0's side of a report: its lock, the check that it replaces nothing else, and the journal."""
    if out is None:
        return None
    lock = WriterLock(out.with_name(f".{out.stem}.lock"), f"report {out}").__enter__()
    try:
        _refuse_to_replace(out, settings, options.overwrite)
        journal = EvalJournal(journal_path(out), settings, restart=options.restart)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    if journal.resumed:
        print(f"resuming the evaluation in {journal.path}: {journal.describe()}", file=sys.stderr)
    return lock, journal


def run_eval(target: str | Path, options: EvalOptions | None = None) -> EvalResult:
    """Evaluate a run directory or checkpoint; the report (JSON + Markdown) is written to `result.meta["report"]`
    when there is a place for it, and an interrupted evaluation resumes from its journal there. Under torchrun the
    batches are shared out over the processes (`engine.evaluate`) and rank 0 writes."""
    options = options or EvalOptions()
    _check(options)
    job, device = distributed.setup(options.device)
    model, config, weights = load_model(target, which=options.which, arch=options.arch,
                                        num_classes=options.num_classes, normalize=options.normalize,
                                        **options.arch_options)
    foreign = {k: v for k, v in (("arch", options.arch), ("arch_options", options.arch_options),
                                 ("normalize", options.normalize)) if v}
    return evaluate_model(model, config, options, source=str(weights), digest=file_digest(weights),
                          out=report_path(options, run_of(weights)), device=device, model_settings=foreign)


def evaluate_model(model: nn.Module, config: RunConfig, options: EvalOptions, *, source: str, digest: str,
                   out: Path | None, device: str | None, model_settings: dict | None = None,
                   attacks: dict | None = None, reuse: bool = False) -> EvalResult:
    """The evaluation itself, for a model already built: attacks, test images, resumable report, sanity checks.
    `digest` identifies the weights (the journal refuses to resume on other ones). `attacks` built by the caller
    replace the options' suite or attack names (`robustact audit`'s sides); with `reuse`, a finished report at
    `out` of exactly these settings is read back instead of being computed again."""
    eps = default_eps(options, config)
    attacks = select_attacks(model, eps, options, config) if attacks is None else attacks
    cascade_names = list(attacks) if options.cascade == "all" else _names(options.cascade)
    cascade = [name for name in _subset(attacks, cascade_names, "--cascade") if not name.endswith("-official")]
    seed_everything(options.seed)
    run = _with_test_images(model, config, Path(source), options.n or config.eval.n, device, options.data_root,
                            options.download)
    batch_size = options.batch_size or config.eval.batch_size
    amp = check_amp(options.amp, run.device)
    settings = _settings(options, config, run, attacks, cascade, eps, batch_size, amp, digest, model_settings)
    if reuse and out is not None and distributed.current().world == 1:
        finished = finished_report(out, settings)
        if finished is not None:
            return finished
    lock, journal = distributed.on_main(_open_report, out, settings, options) or (None, None)
    try:
        result = evaluate(run.model, run.x, run.y, attacks, eps=eps, batch_size=batch_size,
                          progress=options.progress, seed=options.seed, only_robust=cascade, journal=journal,
                          amp=amp, norm=options.norm)
        result.meta |= {"checkpoint": source, "dataset": config.data.dataset, "images": run.images,
                        "device": str(run.device), "torch": torch.__version__, "amp": amp}
        if model_settings:
            result.meta["model"] = model_settings
        result.meta["num_classes"] = getattr(model, "num_classes", None)
        if distributed.current().main:
            result.meta |= official_agreement(result)
            if options.sanity_n:
                m = min(options.sanity_n, run.n)
                subset = {name: r[:m] for name, r in result.robust.items()}
                flags = run_sanity_checks(run.model, run.x[:m], run.y[:m], subset, eps=eps, norm=options.norm,
                                          large_eps=64 / 255 if options.norm == "Linf" else 8 * eps,
                                          seed=options.seed)
                result.sanity = [asdict(f) | {"n": m} for f in flags]
            if out is not None:
                write_reports(result, out, result.meta, title=f"Evaluation of {source}", settings=settings)
                journal.remove()
                result.meta["report"] = str(out)
        distributed.barrier()
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return result


def benchmark(model: nn.Module, dataset: str = "cifar10", norm: str = "Linf", eps: float | str | None = None,
              n: int = 1000, suite: str | None = "standard", *, attacks: str | list[str] | None = None,
              out: str | Path | None = None, **options: Any) -> EvalResult:
    """Evaluate any `nn.Module` that maps images in [0, 1] to logits, as `robustact eval` evaluates a checkpoint:
    the first `n` test images of `dataset`, the attacks of `suite` (or `attacks`), ε (`8/255` for L∞ and 0.5 for
    L2 by default), sanity checks, on the device the model is on. Returns the same `EvalResult` (per example,
    worst case, sanity flags in `.sanity`); with `out`, writes the same JSON + Markdown report there (and resumes
    from its journal when interrupted). `options` are the other `EvalOptions` fields (`batch_size`, `seed`,
    `sanity_n`, `official`, `cascade`, `suite_options`, `amp`, `progress`, `data_root`, ...). The model is put in
    eval mode."""
    if not isinstance(model, nn.Module):
        raise RobustactError(f"benchmark takes an nn.Module mapping images in [0, 1] to logits, got "
                             f"{type(model).__name__}")
    not_here = {"attacks", "suite", "n", "eps", "norm", "out",  # arguments of their own
                "which", "arch", "arch_options", "num_classes", "normalize"}  # a model in memory has them already
    takes = sorted({f.name for f in fields(EvalOptions)} - not_here)
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise RobustactError(f"benchmark takes no option {unknown[0]!r}; its options: {', '.join(takes)}")
    opts = EvalOptions(attacks=attacks, suite=None if attacks else suite, n=n, eps=eps, norm=norm, out=out,
                       progress=options.pop("progress", False), **options)
    _check(opts)
    config = RunConfig.from_mapping(DEFAULTS)
    config.data.dataset = dataset
    dataset_info(dataset)  # an unknown name is one line here, not a KeyError later
    param = next(model.parameters(), None)
    device = str(param.device) if param is not None else (opts.device or "cpu")
    distributed.setup(device)
    return evaluate_model(model.eval(), config, opts, source=f"{type(model).__name__} (in memory)",
                          digest=module_digest(model), out=Path(out) if out else None, device=device)


def module_digest(model: nn.Module) -> str:
    """sha256 over a module's state_dict (names, dtypes, shapes, values): what identifies the weights an in-memory
    evaluation's journal belongs to."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _settings(options: EvalOptions, config: RunConfig, run: OpenedRun, attacks: dict, cascade: list[str], eps: float,
              batch_size: int, amp: str, digest: str, model_settings: dict | None) -> dict:
    """Everything that decides an evaluation's per-example outcomes: what its journal and report are checked
    against. Settings at their defaults are left out, so reports of earlier releases still compare equal."""
    optional = {"amp": amp if amp != "none" else None, "norm": options.norm if options.norm != "Linf" else None,
                "model": model_settings or None}
    return {"checkpoint_sha256": digest, "dataset": config.data.dataset, "images": run.images,
            "suite": options.suite, "protocol": options.protocol,
            "suite_options": [f"{k}={v}" for k, v in options.suite_options.items()],
            "attacks": {k: repr(a) for k, a in attacks.items()}, "cascade": cascade, "eps": eps,
            "seed": options.seed, "batch_size": batch_size} | {k: v for k, v in optional.items() if v}


def official_agreement(result: EvalResult) -> dict:
    """For each AutoAttack run by both implementations: on how many examples both attacked they agree, and the
    test-image indices where they do not. (A cascaded AutoAttack attacked only the examples robust to everything
    before it; the official run, never cascaded, attacked every clean-correct one.)"""
    out = {}
    names = list(result.robust)
    for name in names:
        twin = official_counterpart(name)
        if not (twin and twin in result.robust):
            continue
        pool = result.clean.clone()
        if name in result.cascaded:
            for earlier in names[:names.index(name)]:
                if not earlier.endswith("-official"):
                    pool &= result.robust[earlier]
        differ = (result.robust[name] != result.robust[twin]) & pool
        out[f"{name} vs {twin}"] = {"examples": int(pool.sum()), "agree": int(pool.sum() - differ.sum()),
                                    "differ": differ.nonzero().flatten().tolist()}
    return {"official_agreement": out} if out else {}


def sanity_from_reports(target: str | Path, reports: list[str | Path], which: str = "best",
                        data_root: str | None = None, device: str | None = None, seed: int = 0) -> list[SanityFlag]:
    """Gradient-masking red flags (`robustact.evaluation.sanity`) for a run, from the per-example results of its
    `robustact eval` reports (paper and adaptive; the per-attack results must be independent runs, which
    `robustact eval` gives), on the test images all reports cover (0..min n - 1)."""
    from robustact.evaluation.compare import load_report

    loaded = [(Path(path), load_report(Path(path))) for path in reports]
    if not loaded:
        raise RobustactError("no reports given")
    n = min(data["n"] for _, data in loaded)  # reports cover test images 0..n-1: compare on the shared prefix
    results: dict = {}
    for path, data in loaded:
        for name, flags in data.get("per_example", {}).items():
            if name not in ("clean", "worst_case"):
                results[name if name not in results else f"{path.stem}:{name}"] = torch.tensor(flags[:n]).bool()
    run = open_run(target, which, n, device, data_root=data_root)
    return run_sanity_checks(run.model, run.x, run.y, results, seed=seed)


def write_flags(flags: list[SanityFlag], path: str | Path) -> None:
    from robustact.fileio import atomic_write_text

    atomic_write_text(path, json.dumps([f.to_dict() for f in flags], indent=1))
