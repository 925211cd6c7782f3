"""Attack suites by name. `quick` and `standard` are generic; `paper` and `adaptive` belong to a defense.

A suite builder is `build(model, eps, seed) -> dict[name, attack]`, where an attack is anything called as
`attack(model, x, y) -> x_adv` (a `robustact.attacks.Attack`, or a wrapper that, e.g., fixes the defense's
masks). Defense modules register theirs with `register_suite("paper", defense="cas")`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from robustact.attacks.registry import make_attack
from robustact.defenses.spec import defense_spec
from robustact.errors import RobustactError

SuiteBuilder = Callable[[nn.Module, float, int], dict]
_SUITES: dict[tuple[str, str | None], SuiteBuilder] = {}


def register_suite(name: str, defense: str | None = None) -> Callable[[SuiteBuilder], SuiteBuilder]:
    def decorator(build: SuiteBuilder) -> SuiteBuilder:
        _SUITES[(name, defense)] = build
        return build

    return decorator


def _named(names: list[str]) -> SuiteBuilder:
    return lambda model, eps, seed: {n: make_attack(n, eps, seed=seed) for n in names}


register_suite("quick")(_named(["fgsm", "pgd20"]))
register_suite("standard")(_named(["fgsm", "pgd20", "pgd100", "cw30", "aa"]))


def _load_protocols(defense: str) -> None:
    """Defense protocols live beside the defenses; import on demand so they register."""
    for module in (f"robustact.defenses.{defense}", f"robustact.evaluation.protocols.{defense}"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def list_suites() -> list[str]:
    return sorted({name for name, _ in _SUITES})


def build_suite(name: str, model: nn.Module, eps: float, seed: int = 0) -> dict:
    """The attacks of suite `name` for this model (its defense's version of `paper`/`adaptive`)."""
    defense = defense_spec(model).name
    if defense != "none":
        _load_protocols(defense)
    build = _SUITES.get((name, defense)) or _SUITES.get((name, None))
    if build is None:
        if any(n == name for n, _ in _SUITES):
            raise RobustactError(f"suite {name!r} is not defined for defense {defense!r}; try quick or standard")
        raise RobustactError(f"unknown suite {name!r}; known: {', '.join(list_suites())}")
    return build(model, eps, seed)
