"""Attack suites by name. `quick` and `standard` are generic; `paper` and `adaptive` belong to a defense.

A suite builder is `build(model, eps, seed, options) -> dict[name, attack]`, where an attack is anything called
as `attack(model, x, y) -> x_adv` (a `robustact.attacks.Attack`, or a wrapper that, e.g., fixes the defense's
masks) and `options` the suite's string options (`robustact eval --suite-opt key=value`; read them with
`read_options`). A defense's protocol module (`protocols/<defense>.py`) registers its suites as
`register_suite("paper", defense="cas")`; they are imported when first asked for.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robustact.attacks.registry import make_attack
from robustact.defenses import defense_spec, list_defenses
from robustact.errors import RobustactError
from robustact.registry import Registry

SuiteBuilder = Callable[..., dict]  # (model, eps, seed, options[, norm=]) -> {name: attack}
PROTOCOLS = {"cas": ("paper", "adaptive"), "ewas": ("paper", "adaptive"), "cifs": ("paper", "adaptive")}
SUITES: Registry[SuiteBuilder] = Registry("suite", builtin={
    f"{name}/{defense}": f"robustact.evaluation.protocols.{defense}"
    for defense, names in PROTOCOLS.items() for name in names})


def register_suite(name: str, defense: str | None = None) -> Callable[[SuiteBuilder], SuiteBuilder]:
    return SUITES.register(name if defense is None else f"{name}/{defense}")


def read_options(options: dict | None, defaults: dict, suite: str) -> dict:
    """`defaults` updated with `options`; a key the suite does not know is an error, not silently ignored."""
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise RobustactError(f"suite {suite!r} has no option {unknown[0]!r}; its options: {known}")
    return {**defaults, **(options or {})}


def positive_int(options: dict, key: str) -> int:
    """options[key] as a positive int, or a one-line error naming the option."""
    value = str(options[key])
    if not value.isdigit() or int(value) < 1:
        raise RobustactError(f"suite option {key}={value!r}: expected a positive integer")
    return int(value)


def choice_option(options: dict, key: str, choices: tuple[str, ...]) -> str:
    """options[key] as one of `choices`, or a one-line error naming the option."""
    value = str(options[key]).strip().lower()
    if value not in choices:
        raise RobustactError(f"suite option {key}={options[key]!r}: expected one of {', '.join(choices)}")
    return value


def bool_option(options: dict, key: str) -> bool:
    """options[key] as true/false (also yes/no, 1/0), or a one-line error naming the option."""
    value = str(options[key]).strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise RobustactError(f"suite option {key}={options[key]!r}: expected true or false")


def parse_options(items: list[str], flag: str = "--suite-opt") -> dict:
    """["steps=20", "aa=standard"] -> {"steps": "20", "aa": "standard"}: the KEY=VALUE options of a flag."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RobustactError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _named(suite: str, names: list[str]) -> SuiteBuilder:
    def build(model: nn.Module, eps: float, seed: int, options: dict, norm: str = "Linf") -> dict:
        read_options(options, {}, suite)
        return {n: make_attack(n, eps, norm, seed=seed) for n in names}

    build.any_norm = True  # the generic suites run under L2 as well
    return build


register_suite("quick")(_named("quick", ["fgsm", "pgd20"]))
register_suite("standard")(_named("standard", ["fgsm", "pgd20", "pgd100", "cw30", "aa"]))


def list_suites() -> list[str]:
    return sorted({key.split("/")[0] for key in SUITES.names()})


def build_suite(name: str, model: nn.Module, eps: float, seed: int = 0, options: dict | None = None,
                protocol: str | None = None, norm: str = "Linf") -> dict:
    """The attacks of suite `name` for this model (its defense's version of `paper`/`adaptive`).

    `protocol` names the defense whose `paper` suite to run on an undefended model, so that a baseline meets
    exactly the attacks of that paper (their aux-head terms are zero without sites)."""
    defense = defense_spec(model).name
    if protocol:
        if defense not in ("none", protocol):
            raise RobustactError(f"--protocol {protocol} on a {defense} model; drop it to use the model's own")
        if name != "paper":
            raise RobustactError("--protocol applies to --suite paper only (adaptive suites need the defense)")
        if protocol not in list_defenses():
            raise RobustactError(f"unknown protocol {protocol!r}; known: {', '.join(list_defenses())}")
        defense = protocol
    for key in (f"{name}/{defense}", name):
        if key in SUITES:
            builder = SUITES.get(key)
            if getattr(builder, "any_norm", False):
                return builder(model, eps, seed, dict(options or {}), norm=norm)
            if norm != "Linf":
                raise RobustactError(f"suite {name!r} is the {defense} paper's L∞ protocol; under --norm {norm} use "
                                     "--suite quick or standard, or --attacks")
            return builder(model, eps, seed, dict(options or {}))
    if name in list_suites():
        hint = " (for an undefended baseline: --protocol DEFENSE)" if defense == "none" else ""
        raise RobustactError(f"suite {name!r} is not defined for defense {defense!r}; try quick or standard{hint}")
    raise RobustactError(f"unknown suite {name!r}; known: {', '.join(list_suites())}")
