"""Architectures by name (timm style) and `create_model`, which builds a plain network from a name plus options.

`create_model` records its arguments (all but `arch`, kept in `model.arch`) in `model.build_kwargs` (JSON), so a
checkpoint can rebuild its network. Each architecture also names its `family` ("resnet", "wideresnet", "vgg",
"preact_resnet"): the defense placement table (`robustact.defenses.placement`) is indexed by it. Defenses are
added one level up, by `robustact.build_model`.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from robustact.errors import ConfigError
from robustact.fields import parse_value
from robustact.models.activations import ActivationSpec, canonical_activation
from robustact.models.layers import ImageClassifier
from robustact.models.normalization import Normalize, parse_normalize
from robustact.registry import Registry

ModelFactory = Callable[..., ImageClassifier]


@dataclass(frozen=True)
class ModelEntry:
    factory: ModelFactory
    family: str
    normalize: Normalize = None  # the input normalisation the architecture has unless told otherwise


MODELS: Registry[ModelEntry] = Registry("arch")


def register_model(name: str, family: str, normalize: Any = None) -> Callable[[ModelFactory], ModelFactory]:
    """Register `factory(num_classes=..., activation=..., **arch_kwargs)` under `name`; `normalize` is its
    default input normalisation (a name or (mean, std); DeepMind's WRNs carry CIFAR-10's)."""
    default = parse_normalize(normalize, where=f"arch {name} normalize")

    def decorator(factory: ModelFactory) -> ModelFactory:
        MODELS.register(name)(ModelEntry(factory, family, default))
        return factory

    return decorator


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return MODELS.names()


def arch_family(arch: str) -> str:
    return MODELS.get(arch).family


def arch_options(arch: str) -> dict[str, Any]:
    """{option: annotated type} the architecture takes besides `num_classes` and `activation`."""
    factory = MODELS.get(arch).factory
    hints = typing.get_type_hints(factory)
    return {p: hints.get(p, Any) for p in inspect.signature(factory).parameters
            if p not in ("num_classes", "activation")}


def check_arch_kwargs(arch: str, kwargs: Mapping[str, Any], where: str = "model.arch_kwargs") -> dict[str, Any]:
    """The architecture options, type-checked; an option the architecture does not have is one ConfigError."""
    known = arch_options(arch)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no options"
        raise ConfigError(f"arch {arch!r} does not take {', '.join(unknown)}; it takes: {takes}")
    return {k: parse_value(v, known[k], f"{where}.{k}") for k, v in kwargs.items()}


def check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return num_classes


def json_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` as they read back from JSON (what a checkpoint stores), or a ConfigError."""
    try:
        return json.loads(json.dumps(kwargs))
    except (TypeError, ValueError):
        raise ConfigError(f"model arguments must be JSON values (numbers, strings, lists): {kwargs}") from None


def create_model(arch: str, num_classes: int = 10, activation: ActivationSpec = "relu",
                 normalize: Any = "default", **arch_kwargs: Any) -> ImageClassifier:
    """The plain network `arch` for `num_classes` classes: `forward(x in [0, 1]) -> logits (N, num_classes)`.

    `activation` is the nonlinearity at every activation site (a name or `{name: ..., **options}`);
    `normalize` puts input normalisation inside the model: a name (`cifar10`), (mean, std), or None / "none" for
    raw [0, 1] input; "default" is the architecture's own (none, except DeepMind's WRNs). `arch_kwargs` are the
    architecture's own options (e.g. `width`, `depth`)."""
    entry = MODELS.get(arch)
    num_classes = check_num_classes(num_classes)
    activation = canonical_activation(activation)
    norm = entry.normalize if isinstance(normalize, str) and normalize == "default" else parse_normalize(normalize)
    arch_kwargs = check_arch_kwargs(arch, arch_kwargs, "arch option")
    build_kwargs = json_kwargs({"num_classes": num_classes, "activation": activation, "normalize": norm,
                                **arch_kwargs})
    model = entry.factory(num_classes=num_classes, activation=activation, **arch_kwargs)
    if norm is not None:
        model.set_input_normalization(norm[0], norm[1])
    model.arch = arch
    model.num_classes = num_classes
    model.build_kwargs = build_kwargs
    return model
