"""Input normalisation by name or by numbers, as the CLI (`--normalize`), configs and checkpoints write it.

Normalisation is part of the model (`ImageClassifier.set_input_normalization`): attacks and ε always see images in
[0, 1]. Getting it wrong is silent — a model trained on normalised inputs still returns logits for raw ones, just
worse ones — so every robustact checkpoint stores it in its build arguments, and a load that contradicts it is an
error (`robustact.checkpoints`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robustact.errors import ConfigError

# (mean, std) per channel. "cifar10" is the per-channel std of the training set (what RobustBench's mu/sigma
# buffers, DeepMind's models and fast-AT use); "cifar10-kuangliu" the std of kuangliu/pytorch-cifar's transforms
# (0.2023, ...), which the `robustness` library's models were trained with — the classic mix-up.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar10-kuangliu": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NONE = ("none", "raw", "off")
FORMS = f"{' | '.join(NORMALIZATIONS)} | none | MEAN,STD | M1,M2,M3,S1,S2,S3"

Normalize = list[list[float]] | None  # [[mean per channel], [std per channel]], or None for raw [0, 1] input


def parse_normalize(spec: Any, channels: int = 3, where: str = "--normalize") -> Normalize:
    """A normalisation in canonical form — `[[means], [stds]]`, one value per channel — or None for none.

    Accepts a name (`cifar10`), `none`, a string of 2 numbers (`0.5,0.25`: every channel) or 2·channels numbers
    (means then stds), or a (mean, std) pair of numbers or sequences."""
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in NONE:
            return None
        if text in NORMALIZATIONS:
            mean, std = NORMALIZATIONS[text]
            return _canonical(mean, std, channels, where)
        try:
            values = [float(v) for v in text.replace("/", ",").split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{where}: {spec!r} is not a normalisation; use {FORMS}") from None
        if len(values) == 2:
            return _canonical(values[0], values[1], channels, where)
        if len(values) == 2 * channels:
            return _canonical(values[:channels], values[channels:], channels, where)
        raise ConfigError(f"{where}: expected 2 or {2 * channels} numbers (means, then stds), got {len(values)}; "
                          f"use {FORMS}")
    if (isinstance(spec, Sequence) or hasattr(spec, "tolist")) and len(spec) == 2:  # (mean, std), also tensors
        return _canonical(spec[0], spec[1], channels, where)
    raise ConfigError(f"{where}: expected (mean, std), a name or numbers, got {spec!r}; use {FORMS}")


def _canonical(mean: Any, std: Any, channels: int, where: str) -> list[list[float]]:
    out = [_per_channel(mean, channels, f"{where} mean"), _per_channel(std, channels, f"{where} std")]
    if min(out[1]) <= 0:
        raise ConfigError(f"{where}: std must be positive, got {out[1]}")
    return out


def _per_channel(value: Any, channels: int, what: str) -> list[float]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a number or {channels} numbers, got {value!r}")
    if isinstance(value, (int, float)):
        return [float(f"{value:.7g}")] * channels
    flat = _flatten(value)
    if flat is None or len(flat) not in (1, channels):
        raise ConfigError(f"{what}: expected a number or {channels} numbers, got {value!r}")
    return [float(f"{v:.7g}") for v in flat] * (channels if len(flat) == 1 else 1)  # float32 buffers: 0.4914


def _flatten(value: Any) -> list[float] | None:
    """Numbers from nested sequences (a (1, 3, 1, 1) buffer's tolist()), or None when something is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, Sequence) and not isinstance(value, str):
        out: list[float] = []
        for v in value:
            inner = _flatten(v)
            if inner is None:
                return None
            out += inner
        return out
    return None


def same_normalize(a: Normalize, b: Normalize, tol: float = 1e-4) -> bool:
    """Equal up to the rounding of published constants (4 decimals)."""
    if a is None or b is None:
        return a is None and b is None
    return all(abs(x - y) <= tol for u, v in zip(a, b) for x, y in zip(u, v))


def describe_normalize(norm: Normalize) -> str:
    """A name when the values are a known one, else the numbers; `none` for raw input."""
    if norm is None:
        return "none"
    for name in NORMALIZATIONS:
        if same_normalize(norm, parse_normalize(name, len(norm[0]))):
            return name
    return "mean " + ",".join(f"{v:g}" for v in norm[0]) + " std " + ",".join(f"{v:g}" for v in norm[1])
