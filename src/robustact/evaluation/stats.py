"""The statistics a reviewer asks for when two robust accuracies are compared on the same test images.

`paired_difference(a, b)`: per-example outcomes of model A and model B (1 = still correct under the attacks)
on the same images -> the difference of their accuracies with a percentile bootstrap confidence interval over
the images (paired: an image is resampled with both its outcomes) and the exact McNemar test on the discordant
pairs. `mean_std(values)`: mean and sample standard deviation over seeds or runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from robustact.errors import RobustactError


def _points(value: float) -> str:
    """A fraction as signed percentage points with a typographic minus: -0.031 -> "−3.1"."""
    return f"{100 * value:+.1f}".replace("-", "\u2212")


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


@dataclass
class PairedDifference:
    """mean(a) − mean(b) as fractions; [low, high] its percentile bootstrap interval at `level`; `p_value` the exact
    two-sided McNemar test; `only_a` images A gets right and B not, `only_b` the other way round; n images. Over
    several seeds (`seeds` > 1) the difference and interval are the seeds' mean, the counts and McNemar the first
    seed's."""

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    only_a: int
    only_b: int
    level: float
    seeds: int = 1

    @property
    def significant(self) -> bool:
        """The confidence interval excludes 0."""
        return self.low > 0 or self.high < 0

    def format(self) -> str:
        """e.g. "−3.1 [−4.9, −1.3] pts, McNemar p = 0.001" (over seeds: "... pts over 3 seeds, McNemar p = 0.001
        on the first")."""
        over = f" over {self.seeds} seeds" if self.seeds > 1 else ""
        first = " on the first" if self.seeds > 1 else ""
        return (f"{_points(self.diff)} [{_points(self.low)}, {_points(self.high)}] pts{over}, "
                f"McNemar {_p_text(self.p_value)}{first}")

    def to_dict(self) -> dict:
        return asdict(self) | {"significant": self.significant}


def _outcomes(values: Sequence, name: str) -> np.ndarray:
    """0/1 per example from bools, ints or a tensor; anything else is one line."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError):
        raise RobustactError(f"{name} must be a sequence of 0/1 (or bool) per example") from None
    if arr.ndim != 1:
        raise RobustactError(f"{name} must be one outcome per example (a flat sequence), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.size and (arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all()):
        raise RobustactError(f"{name} must hold only 0/1 (or bool) per example")
    return arr.astype(np.int64)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """The exact two-sided McNemar test: under H0 each of the m = only_a + only_b discordant pairs goes either way
    with probability 1/2, p = min(1, 2·P[Binomial(m, 1/2) <= min(only_a, only_b)]); 1 without discordant pairs."""
    m, k = only_a + only_b, min(only_a, only_b)
    if m == 0:
        return 1.0
    total, term = 0, 1  # exact integers: comb(m, i) summed for i <= k
    for i in range(k + 1):
        total += term
        term = term * (m - i) // (i + 1)
    return min(1.0, 2 * total / 2**m)


def paired_difference(a: Sequence, b: Sequence, *, level: float = 0.95, n_boot: int = 10000,
                      seed: int = 0) -> PairedDifference:
    """Robust accuracy of A minus that of B on the same images, with a percentile bootstrap interval and McNemar.

    The bootstrap resamples images with replacement, both outcomes of an image together. The mean difference
    of a resample depends only on how many of its images are A-only and B-only, so the `n_boot` resamples are
    drawn as multinomial counts over (A-only, B-only, same) — the same distribution as resampling the images
    one by one, in O(n_boot) memory. Deterministic for a given `seed`."""
    x, z = _outcomes(a, "a"), _outcomes(b, "b")
    if len(x) != len(z):
        raise RobustactError(f"paired outcomes need the same images: a has {len(x)} examples, b has {len(z)}")
    if len(x) == 0:
        raise RobustactError("paired outcomes need at least one example")
    if not 0 < level < 1:
        raise RobustactError(f"level must be in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise RobustactError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    n = len(x)
    only_a, only_b = int(((x == 1) & (z == 0)).sum()), int(((x == 0) & (z == 1)).sum())
    counts = np.random.default_rng(seed).multinomial(n, [only_a / n, only_b / n, (n - only_a - only_b) / n],
                                                     size=n_boot)
    boot = (counts[:, 0] - counts[:, 1]) / n
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(diff=(only_a - only_b) / n, low=float(low), high=float(high),
                            p_value=mcnemar_p(only_a, only_b), n=n, only_a=only_a, only_b=only_b, level=level)


def paired_difference_over_seeds(a: Sequence[Sequence], b: Sequence[Sequence], *, level: float = 0.95,
                                 n_boot: int = 10000, seed: int = 0) -> PairedDifference:
    """`paired_difference` for models trained with several seeds, evaluated on the same images: the mean over
    seeds of A − B, with a bootstrap interval that resamples test images and keeps each image's outcomes of every
    seed together (so it carries both the test-set and the seed-to-seed variation); McNemar on the first seed's
    pairs. `a[k]`, `b[k]`: the outcomes of seed k."""
    if len(a) != len(b) or not len(a):
        raise RobustactError(f"paired outcomes over seeds need the same seeds on both sides, got {len(a)} and {len(b)}")
    first = paired_difference(a[0], b[0], level=level, n_boot=n_boot, seed=seed)
    if len(a) == 1:
        return first
    x = np.stack([_outcomes(v, f"a[{k}]") for k, v in enumerate(a)])
    z = np.stack([_outcomes(v, f"b[{k}]") for k, v in enumerate(b)])
    if x.shape != z.shape:
        raise RobustactError(f"paired outcomes need the same images on every seed: {x.shape} vs {z.shape}")
    d = (x - z).mean(axis=0)   # per image, averaged over seeds
    boots = d[np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(diff=float(d.mean()), low=float(low), high=float(high), p_value=first.p_value,
                            n=first.n, only_a=first.only_a, only_b=first.only_b, level=level, seeds=len(a))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1); the deviation is None for a single value."""
    vals = [float(v) for v in values]
    if not vals:
        raise RobustactError("mean_std needs at least one value")
    if not all(math.isfinite(v) for v in vals):
        raise RobustactError("mean_std needs finite values")
    mean = math.fsum(vals) / len(vals)
    if len(vals) == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
