"""robustact: activation-level adversarial defenses for CNNs — train, attack, analyse, reproduce.

The public names most scripts need live here; `docs/architecture.md` maps the packages behind them.
"""

__version__ = "0.1.0"

from robustact.data import load_dataset  # noqa: E402
from robustact.defenses import build_model  # noqa: E402


def load_model(path_or_run, arch: str | None = None, *, which: str = "best", num_classes: int | None = None,
               normalize=None, **arch_options):
    """A run's or checkpoint's model, in eval mode on the CPU: robustact checkpoints rebuild themselves; a foreign
    state_dict (`.pt`, read with weights_only; RobustBench, TRADES, DeepMind, kuangliu layouts) needs `arch` — a
    name or "auto" — and takes the architecture's options (`depth=34, widen_factor=20`, `shortcut="input"`,
    `activation="swish"`). `normalize` states the input normalisation it was trained with ("cifar10", "none",
    (mean, std)); it must agree with what the checkpoint carries (docs/interop.md)."""
    from robustact.checkpoints import load_model as _load

    return _load(path_or_run, which=which, arch=arch, num_classes=num_classes, normalize=normalize,
                 **arch_options)[0]


def benchmark(model, dataset: str = "cifar10", norm: str = "Linf", eps=None, n: int = 1000,
              suite: str | None = "standard", **options):
    """`robustact eval` for any nn.Module (images in [0, 1] -> logits): see `robustact.evaluation.benchmark`."""
    from robustact.evaluation import benchmark as _benchmark

    return _benchmark(model, dataset=dataset, norm=norm, eps=eps, n=n, suite=suite, **options)


def audit(model, x, y, **options):
    """Is `model`'s robustness on images `x` (labels `y`) real? Claimed vs adaptive attacks, sanity checks, paired
    CIs and a verdict (holds | partly | masking): see `robustact.evaluation.audit.audit`."""
    from robustact.evaluation.audit import audit as _audit

    return _audit(model, x, y, **options)


__all__ = ["__version__", "audit", "benchmark", "build_model", "load_dataset", "load_model"]
