"""Model registry (timm style) and `build_model`, the one way the rest of robustact makes a network.

`build_model` records its arguments (all but `arch`, kept in `model.arch`) in `model.build_kwargs`
(JSON), so a checkpoint can rebuild its model with `build_model(model.arch, **model.build_kwargs)`.
Defenses are attached by `apply_defense`, kept apart so that the defense placement module can take it
over without touching the architectures.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from robustact.errors import ConfigError
from robustact.models.layers import ImageClassifier, check_activation

ModelFactory = Callable[..., ImageClassifier]

_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register `factory(num_classes=..., activation=..., **arch_kwargs)` under `name`."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_MODELS)


def _factory(arch: str) -> ModelFactory:
    if not isinstance(arch, str) or arch not in _MODELS:
        raise ConfigError(f"unknown arch {arch!r}; known: {', '.join(list_models())}")
    return _MODELS[arch]


def _split_kwargs(
    arch: str, factory: ModelFactory, kwargs: Mapping[str, Any], has_defense: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(arch kwargs, defense kwargs): what the arch does not take goes to the defense, if there is one.

    Without a defense, unknown keyword arguments become one ConfigError line, not a TypeError from a
    constructor.
    """
    params = [p for p in inspect.signature(factory).parameters if p not in ("num_classes", "activation")]
    arch_kw = {k: v for k, v in kwargs.items() if k in params}
    rest = {k: v for k, v in kwargs.items() if k not in params}
    if rest and not has_defense:
        takes = ", ".join(params) if params else "no extra arguments"
        raise ConfigError(f"arch {arch!r} does not take {', '.join(sorted(rest))}; it takes: {takes}")
    return arch_kw, rest


def _check_normalize(normalize: Any) -> list[Any] | None:
    if normalize is None:
        return None
    if not isinstance(normalize, Sequence) or isinstance(normalize, str) or len(normalize) != 2:
        raise ConfigError(f"normalize must be (mean, std) or None, got {normalize!r}")

    def plain(v: Any) -> Any:  # tuples, tensors and arrays become JSON lists
        return v.tolist() if hasattr(v, "tolist") else list(v) if isinstance(v, Sequence) else v

    return [plain(v) for v in normalize]


def _is_no_defense(defense: Any) -> bool:
    return defense is None or (isinstance(defense, str) and defense.lower() == "none")


def apply_defense(model: nn.Module, arch: str, defense: str, **defense_kwargs: Any) -> nn.Module:
    """Put `defense`'s sites into `model` (in place) where the papers put them for `arch`.

    Routed to `robustact.defenses.registry`; sites replace the `nn.Identity` slots of the architectures.
    """
    from robustact.defenses.registry import place_defense

    return place_defense(model, arch, defense, **defense_kwargs)


def build_model(
    arch: str,
    num_classes: int = 10,
    defense: str | None = None,
    activation: str = "relu",
    normalize: tuple[Any, Any] | None = None,
    *,
    defense_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build `arch` for `num_classes` classes: `forward(x in [0, 1]) -> logits (N, num_classes)`.

    `activation` names the nonlinearity used at every activation site; `normalize=(mean, std)` puts
    input normalisation inside the model; `kwargs` are architecture arguments (e.g. `width`, `depth`);
    with a defense, the ones the architecture does not take join `defense_kwargs`.
    """
    factory = _factory(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    activation = check_activation(activation)
    norm = _check_normalize(normalize)
    has_defense = not _is_no_defense(defense)
    arch_kwargs, extra_defense_kwargs = _split_kwargs(arch, factory, kwargs, has_defense)
    build_kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "defense": defense if has_defense else None,
        "activation": activation,
        "normalize": norm,
        **kwargs,
    }
    if defense_kwargs:
        build_kwargs["defense_kwargs"] = dict(defense_kwargs)
    try:
        build_kwargs = json.loads(json.dumps(build_kwargs))
    except (TypeError, ValueError):
        raise ConfigError(
            f"build_model arguments must be JSON values (numbers, strings, lists): {build_kwargs}"
        ) from None

    model = factory(num_classes=num_classes, activation=activation, **arch_kwargs)
    if norm is not None:
        model.set_input_normalization(norm[0], norm[1])
    if has_defense:
        model = apply_defense(model, arch, defense, **{**extra_defense_kwargs, **(defense_kwargs or {})})
    model.arch = arch
    model.num_classes = num_classes
    model.build_kwargs = build_kwargs
    return model
